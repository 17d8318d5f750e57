"""The task result cache: a task whose key matches one that succeeded before is answered at once.

::

    Manager.enable_tasks_cache(cache_dir, log_file)
    submit(task) ─► key = sha256(what the task is) ─► hit?  yes ─► outputs restored from cache_dir,
                                                     │             hostname "CACHED", returned by wait
                                                     no ─► runs on a worker as usual
    the task succeeds (result success, exit 0) ─► its outputs copied to cache_dir/<key>.*
                                                 ─► one JSON line appended to log_file (fsync'd)

The log (TaskVine's name: ``vine-cache.txlog``) is replayed by ``enable_tasks_cache``, so a new
Manager in a new process finds what earlier runs left. A PythonTask's result is kept as
``<key>.output``, holding exactly the pickled return value (TaskVine's layout, which its
``vine_python_cache.py`` counts); a plain Task's output files as ``<key>.<n>.out``.

**The key** is a SHA-256 over, for every task: its command, its environment variables, and the
*content* of every input (a local file's bytes, a directory's names and bytes, a buffer's bytes),
with the sandbox name each has; its environments (``add_environment``) likewise; and the names of
its outputs. For a PythonTask the function and its arguments are inputs (their pickles), so the
key covers the function's code and the values of the globals it uses; a function pickled by
reference (importable from a module other than ``__main__``) adds the bytes of that module's source
file, as do functions passed among its arguments. TaskVine's key, by contrast, leaves the function
out (two functions called with the same arguments share an entry).

**What invalidates an entry**: any change to the above (an edited input file, another argument,
an edited function or its module, another environment variable) gives another key, so a miss.
An entry whose files were deleted from ``cache_dir`` is a miss. ``TasksCache.clear()`` (the object
``enable_tasks_cache`` returns) empties it. Not part of the key, so *not* invalidating: code in
other modules the function calls (installed libraries), the Python version of the workers, the
machine, the time, the resources asked for.

**Not cached** (always run): tasks with an input whose content the manager does not hold (a URL,
a temp made by another task, a mini-task's output), tasks with a temp output (``enable_temp_output``
or ``declare_temp``: the value would exist only on a worker), function calls and libraries (their
result depends on the library instance), and anything that did not succeed. A local input file is
read at submit and identified by its content then (files are re-hashed only when their size,
mtime or inode changed); if it changed while the task ran, the result is not recorded. A function
that refers to a class defined in ``__main__`` pickles with a random class id, so its key differs
in every process: such tasks hit only within one run. So does a function defined in a Jupyter cell
(its code names the kernel's temporary file, which has the kernel's pid in it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import constants as C
from ..errors import VineError

if TYPE_CHECKING:
    from ..api.files import File
    from ..api.task import Task

log = logging.getLogger("core.manager")

CACHED_HOSTNAME = "CACHED"
KEY_VERSION = 1  # bump when what goes into a key changes: old entries then simply miss
PYTHON_OUTPUT_SUFFIX = ".output"


class TasksCacheError(VineError):
    """The tasks cache's directory or log cannot be used."""


@dataclass
class CacheEntry:
    """One task that succeeded, as the log records it."""

    key: str
    exit_code: int
    stdout: bytes
    hostname: str
    outputs: dict[str, str]  # remote name -> file name inside cache_dir
    when: float = 0.0
    measured: dict[str, Any] = field(default_factory=dict)


class _NotCacheable(Exception):
    """Raised while building a key: this task is never answered from (or stored in) the cache."""


class TasksCache:
    """Memoized task results kept in ``cache_dir``, indexed by an append-only JSON log.

    Made by :meth:`core.Manager.enable_tasks_cache`; see the module docstring for the key.
    """

    def __init__(self, cache_dir: str = "vine-cache-outputs", log_file: str = "vine-cache.txlog") -> None:
        if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
            raise ValueError(f"enable_tasks_cache needs a directory path for cache_dir, got {cache_dir!r}")
        if not isinstance(log_file, (str, os.PathLike)) or not os.fspath(log_file):
            raise ValueError(f"enable_tasks_cache needs a file path for log_file, got {log_file!r}")
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.log_file = os.path.abspath(os.fspath(log_file))
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            with open(self.log_file, "a"):
                pass
        except OSError as exc:
            raise TasksCacheError(f"cannot use {self.cache_dir} / {self.log_file} for the tasks cache: {exc}") from exc
        self._lock = threading.Lock()  # submit (user thread) and record (manager's I/O thread) both use it
        self._entries: dict[str, CacheEntry] = {}
        self._hashes: dict[str, tuple[tuple[int, int, int], str]] = {}  # path -> (size, mtime_ns, inode), digest
        self.hits = 0
        self.stored = 0
        self._replay()

    # -- the log -----------------------------------------------------------------------------------------
    def _replay(self) -> None:
        with open(self.log_file, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash mid-write: the rest of the log still counts
                if not isinstance(rec, dict) or rec.get("version") != KEY_VERSION:
                    continue
                if rec.get("event") == "COMPLETED":
                    try:
                        entry = CacheEntry(str(rec["key"]), int(rec["exit_code"]), base64.b64decode(rec["stdout"]),
                                           str(rec.get("hostname") or ""), {str(k): str(v) for k, v in rec["outputs"].items()},
                                           float(rec.get("time") or 0), dict(rec.get("measured") or {}))
                    except (KeyError, TypeError, ValueError):
                        continue
                    self._entries[entry.key] = entry
                elif rec.get("event") == "CLEARED":
                    self._entries.clear()

    def _append(self, rec: dict[str, Any]) -> None:
        rec = {"version": KEY_VERSION, "time": time.time(), **rec}
        line = json.dumps(rec) + "\n"
        with open(self.log_file, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())  # a result counts as cached only once it survives a crash

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (in this manager and for later runs) and delete the kept outputs."""
        with self._lock:
            for entry in self._entries.values():
                for name in entry.outputs.values():
                    _remove(os.path.join(self.cache_dir, name))
            self._entries.clear()
            self._append({"event": "CLEARED"})

    # -- keys ---------------------------------------------------------------------------------------------
    def key_of(self, task: Task) -> str | None:
        """The task's key, or None when it cannot be cached (module docstring)."""
        try:
            parts = self._describe(task)
        except _NotCacheable:
            return None
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _describe(self, task: Task) -> dict[str, Any]:
        if task.library_required is not None or task.library_provided is not None:
            raise _NotCacheable("function calls and libraries")
        outputs = []
        for m in task.outputs:
            if m.file.kind not in ("file", "buffer"):
                raise _NotCacheable(f"output {m.remote_name} is a {m.file.kind}")
            if not m.failure_only:
                outputs.append(m.remote_name)
        parts: dict[str, Any] = {
            "version": KEY_VERSION,
            "type": f"{type(task).__module__}.{type(task).__qualname__}",
            "command": task.command,
            "env": sorted((k, v) for k, v in task.env.items()),
            "inputs": sorted((m.remote_name, self._identity(m.file)) for m in task.inputs),
            "environments": [self._identity(f) for f in task.environments],
            "outputs": sorted(outputs),
        }
        python = getattr(task, "_cache_identity", None)
        if python is not None:
            parts["python"] = python(self._module_digest)
        return parts

    def _identity(self, f: File) -> str:
        if f.kind == "buffer":
            data = f.buffer_data()
            if data is None:
                raise _NotCacheable("an empty output buffer used as an input")
            return "buffer:" + hashlib.sha256(data).hexdigest()
        if f.kind == "file":
            path = f.source()
            if not os.path.lexists(path):
                raise _NotCacheable(f"input {path} does not exist")
            return "file:" + self._path_digest(path)
        raise _NotCacheable(f"a {f.kind} input's content is not known to the manager")

    def _path_digest(self, path: str) -> str:
        st = os.lstat(path)
        if os.path.islink(path):
            return "link:" + hashlib.sha256(os.readlink(path).encode()).hexdigest()
        if os.path.isdir(path):
            lines = []
            for name in sorted(os.listdir(path)):
                sub = os.path.join(path, name)
                lines.append(f"{name}:{os.lstat(sub).st_mode & 0o777:o}:{self._path_digest(sub)}")
            return "dir:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._hashes.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        self._hashes[path] = (stamp, digest)
        return digest

    def _module_digest(self, module_name: str) -> str | None:
        """The content hash of a loaded module's source file (None: no file, e.g. a builtin)."""
        mod = sys.modules.get(module_name)
        path = getattr(mod, "__file__", None) if mod is not None else None
        if not path or not os.path.isfile(path):
            return None
        return self._path_digest(path)

    # -- answering and recording ------------------------------------------------------------------------------
    def lookup(self, task: Task) -> CacheEntry | None:
        """At submit: remember the task's key on it and return its entry if it has one whose files exist."""
        with self._lock:
            key = self.key_of(task)
            task._vine_cache_key = key  # type: ignore[attr-defined]
            if key is None:
                return None
            entry = self._entries.get(key)
            if entry is None:
                return None
            if not all(os.path.lexists(os.path.join(self.cache_dir, n)) for n in entry.outputs.values()):
                del self._entries[key]  # its files were removed: a miss, and it stays one
                return None
            return entry

    def restore(self, task: Task, entry: CacheEntry) -> bool:
        """Put the entry's outputs where the task's outputs go and give the task the recorded outcome.

        False (a miss) if an output cannot be put back."""
        try:
            for m in task.outputs:
                name = entry.outputs.get(m.remote_name)
                if name is None:
                    continue  # a failure_only output: a successful task never brought it back
                src = os.path.join(self.cache_dir, name)
                if m.file.kind == "buffer":
                    with open(src, "rb") as fh:
                        m.file.set_buffer_data(fh.read())
                else:
                    _copy(src, m.file.source())
        except OSError as exc:
            log.warning("tasks cache: entry %s could not be restored (%s); the task runs", entry.key, exc)
            return False
        task._result = C.VINE_RESULT_SUCCESS
        task._exit_code = entry.exit_code
        task._stdout = entry.stdout
        task._hostname = CACHED_HOSTNAME
        task._addrport = CACHED_HOSTNAME
        with self._lock:
            self.hits += 1
        return True

    def answer(self, task: Task, entry: CacheEntry) -> bool:
        """Finish the just-submitted ``task`` from ``entry`` (its outputs put back, its state retrieved);
        the manager then hands it to ``wait`` at once.

        False (the task then runs) if the entry's outputs could not be put back."""
        if not self.restore(task, entry):
            return False
        task._state = C.VINE_TASK_RETRIEVED
        task._done_time = time.time()
        task.metrics["time_when_done"] = task._done_time * 1e6
        return True

    def record(self, task: Task) -> bool:
        """After a task ends: keep its outputs and log it, if it succeeded and is cacheable.

        The key is computed again: if an input changed while the task ran, nothing is recorded."""
        key = getattr(task, "_vine_cache_key", None)
        if key is None or task._result != C.VINE_RESULT_SUCCESS or task._exit_code != 0 or task._hostname == CACHED_HOSTNAME:
            return False
        with self._lock:
            if self.key_of(task) != key:
                return False
            python_result = getattr(task, "_cache_result_name", None)
            outputs: dict[str, str] = {}
            written: list[str] = []
            try:
                for i, m in enumerate(task.outputs):
                    if m.failure_only:
                        continue
                    name = key + PYTHON_OUTPUT_SUFFIX if m.remote_name == python_result else f"{key}.{i}.out"
                    dest = os.path.join(self.cache_dir, name)
                    if m.file.kind == "buffer":
                        data = m.file.buffer_data()
                        if data is None:
                            raise OSError(f"output {m.remote_name} never arrived")
                        _write_atomically(dest, data)
                    else:
                        _copy(m.file.source(), dest)
                    written.append(dest)
                    outputs[m.remote_name] = name
                measured = task.resources_measured.to_dict() if hasattr(task.resources_measured, "to_dict") else {}
                self._append({"event": "COMPLETED", "key": key, "exit_code": task._exit_code, "hostname": task._hostname,
                              "stdout": base64.b64encode(task._stdout).decode(), "outputs": outputs, "command": task.command,
                              "measured": measured})
            except (OSError, TypeError, ValueError) as exc:
                for path in written:
                    _remove(path)
                log.warning("tasks cache: task %s not recorded: %s", task.id, exc)
                return False
            self._entries[key] = CacheEntry(key, task._exit_code, task._stdout, task._hostname or "", outputs, time.time(), measured)
            self.stored += 1
            return True


def _write_atomically(dest: str, data: bytes) -> None:
    tmp = f"{dest}.{os.getpid()}.part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, dest)


def _copy(src: str, dest: str) -> None:
    """Copy a file or directory to ``dest`` (replacing what is there), through a temporary name."""
    tmp = f"{dest}.{os.getpid()}.part"
    if os.path.isdir(src):
        _remove(tmp)
        shutil.copytree(src, tmp, symlinks=True)
    else:
        shutil.copy2(src, tmp)
    if os.path.isdir(dest) and not os.path.islink(dest):
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
