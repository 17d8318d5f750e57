"""File objects: what a task reads and writes, and how each kind gets onto a worker.

Every file has a *cache name* (its identity in worker caches) and a *cache level* deciding how long
workers keep it. Names are content- or provenance-addressed for the ``worker``/``forever`` levels, so
a restarted worker's cache is reused only when the content is really the same.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Protocol

from .. import constants as C
from ..errors import FileError

CACHE_LEVELS: dict[Any, int] = {
    False: C.VINE_CACHE_LEVEL_TASK,
    None: C.VINE_CACHE_LEVEL_TASK,
    "task": C.VINE_CACHE_LEVEL_TASK,
    True: C.VINE_CACHE_LEVEL_WORKFLOW,
    "workflow": C.VINE_CACHE_LEVEL_WORKFLOW,
    "worker": C.VINE_CACHE_LEVEL_WORKER,
    "forever": C.VINE_CACHE_LEVEL_FOREVER,
}

KIND_TYPES = {"file": C.VINE_FILE, "url": C.VINE_URL, "temp": C.VINE_TEMP, "buffer": C.VINE_BUFFER, "minitask": C.VINE_MINI_TASK}


def cache_level(cache: Any) -> int:
    """Map a user's ``cache=`` argument to a level; anything unknown is a clear error."""
    if isinstance(cache, int) and not isinstance(cache, bool) and cache in (0, 1, 2, 3):
        return cache
    try:
        return CACHE_LEVELS[cache]
    except (KeyError, TypeError):
        raise ValueError(f"cache={cache!r} is not a cache level; use False, True, 'task', 'workflow', 'worker' or 'forever'") from None


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def content_hash(path: str) -> str:
    """md5 of a file's bytes; a symlink hashes its target text; a directory is a Merkle hash."""
    if os.path.islink(path):
        return _md5(os.readlink(path).encode())
    if os.path.isdir(path):
        lines = []
        for entry in sorted(os.listdir(path)):
            sub = os.path.join(path, entry)
            st = os.lstat(sub)
            lines.append(f"{entry}:{st.st_mode & 0o7777:o}:{content_hash(sub)}")
        return _md5("\n".join(lines).encode())
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _random_name(prefix: str) -> str:
    return f"{prefix}-rnd-{secrets.token_hex(8)}"


class _Mounted(Protocol):
    @property
    def file(self) -> File: ...

    @property
    def remote_name(self) -> str: ...


class MiniTaskDefinition(Protocol):
    """What a mini-task file reads of the ``Task`` that makes it, to name its output by provenance."""

    @property
    def command(self) -> str: ...

    @property
    def env(self) -> dict[str, str | None]: ...

    @property
    def inputs(self) -> Sequence[_Mounted]: ...

    @property
    def outputs(self) -> Sequence[_Mounted]: ...


# ``core/api/`` sits below ``core/manager/`` (README, "Code map"): tasks and files name the manager
# through this protocol instead of importing it; ``core.manager.Manager`` is the one implementation.
class TaskHost(Protocol):
    """What ``Task``, ``PythonTask``, ``FunctionCall`` and ``File`` call on the manager they belong to."""

    def declare_file(self, path: str, cache: Any = ..., peer_transfer: bool = ..., unlink_when_done: bool = ...) -> File: ...

    def declare_buffer(self, buffer: bytes | str | None = ..., cache: Any = ..., peer_transfer: bool = ...) -> File: ...

    def declare_temp(self) -> File: ...

    def undeclare_file(self, f: File) -> None: ...

    def _remember(self, f: File) -> File:
        """Keep ``f`` declared (content-addressed buffers are shared between tasks)."""
        ...

    def _fetch_bytes(self, f: File) -> bytes:
        """The contents of ``f``, from the manager's copy or fetched from a worker."""
        ...

    def _library_known(self, name: str) -> bool: ...

    def _library_failure_reason(self, name: str) -> str | None: ...


class File:
    """A file, directory, URL, buffer, temp or mini-task output known to a manager.

    Made by ``Manager.declare_*``; pass it to ``Task.add_input`` / ``Task.add_output``.
    """

    def __init__(
        self,
        manager: TaskHost | None,
        kind: str,
        source: str,
        *,
        cache: Any = False,
        peer_transfer: bool = True,
        unlink_when_done: bool = False,
        data: bytes | None = None,
        minitask: MiniTaskDefinition | None = None,
        minitask_output: str | None = None,
        cache_name: str | None = None,
    ) -> None:
        if kind not in KIND_TYPES:
            raise FileError(f"unknown file kind {kind!r}")
        self._manager = manager
        self.kind = kind
        self._source = source
        self.level = C.VINE_CACHE_LEVEL_WORKFLOW if kind == "temp" else cache_level(cache)
        self.peer_transfer = bool(peer_transfer) and kind != "minitask"
        self.unlink_when_done = bool(unlink_when_done)
        self._data = data
        self.minitask = minitask
        self.minitask_output = minitask_output
        self.mode: int | None = None if kind != "buffer" else 0o755
        self.size: int = len(data) if data is not None else -1
        self.producer: int | None = None  # id of the task whose output this is (temps: lineage)
        self.cache_name = cache_name or self._compute_cache_name()

    # -- identity ------------------------------------------------------------------------------------
    def _compute_cache_name(self) -> str:
        if self.kind == "temp":
            return _random_name("temp")
        if self.kind == "file":
            path = self._source
            if self.level >= C.VINE_CACHE_LEVEL_WORKER and os.path.exists(path):
                return f"file-md5-{content_hash(path)}"
            try:
                st = os.stat(path)
            except OSError:
                return _random_name("file")
            return f"file-meta-{_md5(f'{os.path.abspath(path)}-{st.st_size}-{st.st_mtime_ns}'.encode())}"
        if self.kind == "buffer":
            if self.level >= C.VINE_CACHE_LEVEL_WORKER and self._data is not None:
                return f"buffer-md5-{_md5(self._data)}"
            return _random_name("buffer")
        if self.kind == "url":
            if self.level >= C.VINE_CACHE_LEVEL_WORKER:
                return f"url-md5-url-{_md5(self._source.encode())}"
            return _random_name("url")
        # minitask: provenance of command, inputs and outputs, so any changed input renames it.
        assert self.minitask is not None
        t = self.minitask
        parts = [t.command, repr(sorted(t.env.items())), str(self.minitask_output)]
        parts += [f"in:{m.remote_name}:{m.file.cache_name}" for m in t.inputs]
        parts += [f"out:{m.remote_name}" for m in t.outputs]
        return f"task-md5-{_md5(chr(0).join(parts).encode())}"

    # -- TaskVine's File API ---------------------------------------------------------------------------
    def source(self) -> str:
        """The path, URL, ``"temp"`` or ``"buffer"`` this file came from."""
        return self._source

    def type(self) -> int:
        return KIND_TYPES[self.kind]

    def __len__(self) -> int:
        if self.kind == "file" and os.path.exists(self._source):
            from ..wire.connection import path_size

            return path_size(self._source)
        if self.kind == "buffer" and self._data is not None:
            return len(self._data)
        return max(self.size, 0)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<File {self.kind} {self._source!r} {self.cache_name}>"

    def set_mode(self, mode: int) -> None:
        self.mode = (mode | 0o600) & 0o777

    def contents(self, unserializer: Callable[[Any], Any] | None = None) -> Any:
        """The file's bytes (or ``unserializer(fileobj)``), fetched from a worker if needed."""
        import io

        if self.kind == "buffer" and self._data is not None:
            data = self._data
        elif self.kind == "file":
            if os.path.isdir(self._source):
                raise ValueError(f"{self._source} is a directory; contents() reads files only")
            with open(self._source, "rb") as fh:
                data = fh.read()
        elif self.kind in ("temp", "buffer"):
            if self._manager is None:
                raise ValueError(f"{self!r} has no contents yet")
            data = self._manager._fetch_bytes(self)
        else:
            raise ValueError(f"a {self.kind} file cannot be read with contents(); fetch it through a task")
        if unserializer is not None:
            return unserializer(io.BytesIO(data))
        return data

    # -- internals used by the manager -------------------------------------------------------------------
    def local_path(self) -> str | None:
        return os.path.abspath(self._source) if self.kind == "file" else None

    def exists_locally(self) -> bool:
        return self.kind == "file" and os.path.exists(self._source)

    def buffer_data(self) -> bytes | None:
        return self._data

    def set_buffer_data(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)


class MissingInputWarning(UserWarning):
    """A local file used as a task input does not exist; the task will end with 'input missing'."""


def check_local_path(path: Any) -> str:
    """Validate a path given to ``declare_file``; an empty or non-string path is a ValueError."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"declare_file needs a non-empty path, got {path!r}")
    return os.fspath(path)


def warn_if_missing(file: File, remote_name: str) -> None:
    if file.kind == "file" and not file.exists_locally():
        warnings.warn(
            f"input {file.source()} (as {remote_name!r}) does not exist; the task will end with 'input missing' "
            "unless the file appears before the task is dispatched",
            MissingInputWarning,
            stacklevel=3,
        )
