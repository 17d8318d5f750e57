"""Declaring files: the ``Manager.declare_*`` methods, as plain functions over the manager.

Each checks what it is given, builds the :class:`core.api.files.File` and has the manager remember
it (``_remember`` keeps one File per cache name). ``Manager`` takes them as its methods.
"""

from __future__ import annotations

import os
from typing import Any

from ..api.files import File, TaskHost, check_local_path
from ..api.task import Task


def declare_file(manager: TaskHost, path: str, cache: Any = False, peer_transfer: bool = True, unlink_when_done: bool = False) -> File:
    """A local file or directory, usable as a task input or output."""
    path = check_local_path(path)
    return manager._remember(File(manager, "file", os.path.abspath(path), cache=cache, peer_transfer=peer_transfer, unlink_when_done=unlink_when_done))


def declare_url(manager: TaskHost, url: str, cache: Any = False, peer_transfer: bool = True) -> File:
    """A file workers download themselves (http, https, ftp, file)."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"declare_url needs a URL such as https://host/path, got {url!r}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https", "ftp", "file"):
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}; use http, https, ftp or file")
    return manager._remember(File(manager, "url", url, cache=cache, peer_transfer=peer_transfer))


def declare_buffer(manager: TaskHost, buffer: bytes | str | None = None, cache: Any = False, peer_transfer: bool = True) -> File:
    """Bytes from the manager's memory as an input; ``None`` declares an empty output buffer."""
    data = None if buffer is None else (buffer.encode() if isinstance(buffer, str) else bytes(buffer))
    return manager._remember(File(manager, "buffer", "buffer", cache=cache, peer_transfer=peer_transfer, data=data))


def declare_temp(manager: TaskHost) -> File:
    """A file that lives only in worker caches (e.g. an intermediate result)."""
    return manager._remember(File(manager, "temp", "temp"))


def declare_minitask(manager: TaskHost, task: Task, source: str, cache: Any = False, peer_transfer: bool = True) -> File:
    """The file ``source`` made in the sandbox of ``task``, which the worker runs when the file is needed."""
    if not isinstance(task, Task):
        raise TypeError("declare_minitask needs a Task")
    return manager._remember(File(manager, "minitask", source, cache=cache, peer_transfer=peer_transfer, minitask=task, minitask_output=source))


def declare_untar(manager: TaskHost, tarball: File, cache: Any = False, peer_transfer: bool = True) -> File:
    """A directory unpacked from ``tarball`` on the worker (tar, tar.gz, tar.bz2, tar.xz)."""
    t = Task("mkdir output && tar -xf input -C output")
    t.add_input(tarball, "input")
    return declare_minitask(manager, t, "output", cache=cache, peer_transfer=peer_transfer)


def declare_poncho(manager: TaskHost, tarball: File, cache: Any = False, peer_transfer: bool = True) -> File:
    """A conda-pack/poncho environment tarball unpacked on the worker (``bin/run_in_env`` inside)."""
    return declare_untar(manager, tarball, cache=cache, peer_transfer=peer_transfer)
