"""A worker's sandboxes: made (or reused), inputs placed in, cleaned up after the task.

A task runs in ``sandbox/t.<id>/`` with its inputs under their remote names. A sandbox the task left
clean is kept for the next task, which saves two mkdir and two rmdir per task. A member of
:class:`core.worker.Worker` (``worker.sandboxes``), given the cache and the worker's task lists.

The cache must hold exactly what the manager sent, whatever a task does to its sandbox:

- an input of at most ``SANDBOX_COPY_MAX`` bytes is a private copy (written straight from memory when
  the worker holds it there), so a task may change it freely;
- a larger file is hard-linked (copying it would cost more than the task, often), and a directory
  is rebuilt as real directories holding hard links to its files, so ``..`` inside it is the
  sandbox, never the cache. A linked entry is checked after the task against the stamp taken when it
  entered the cache (sizes, modification times set to a mark in the past, inodes, link targets);
  one that changed is removed from the cache and the manager told (``cache_invalid``), so no later
  task, peer or run reads it. The same check runs before the entry is served to a peer or the
  manager, and on ``forever`` entries when a worker starts on an old workspace.
- ``mount_symlink`` inputs are symlinks into the cache, as asked; they are checked after the task
  like linked entries. Environments (``add_environment``) are symlinks too, and not checked: their
  programs may write caches into them.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from typing import TYPE_CHECKING

from .. import constants as C

log = logging.getLogger("vine_worker")

SANDBOX_COPY_MAX = 1 << 20  # inputs up to this size are copied into the sandbox (see the module docstring)

from .cache import WorkerCache, entry_stamp, seal  # noqa: F401 - seal, entry_stamp: also used from here by tools

if TYPE_CHECKING:
    from .running import RunningTask


class WorkerSandboxes:
    """Making, filling and recycling sandboxes."""

    def __init__(self, sandbox_dir: str, cache: WorkerCache, tasks: dict[int, RunningTask], prefetched: list[RunningTask]) -> None:
        self.sandbox_dir = sandbox_dir  # sandbox/: t.<id> per task, m.<name> per mini-task
        self.cache = cache
        self.tasks = tasks  # the worker's running tasks (shared): their inputs stay while they need them
        self.prefetched = prefetched  # the worker's tasks sent ahead (shared), likewise
        self._free_sandboxes: list[str] = []  # clean sandboxes kept for the next tasks
        self._stamps: dict[str, tuple[int, int, int, int]] = {}  # sandbox -> directory times when known clean
        self._tmp_dirs: dict[str, str] = {}  # sandbox -> its .taskvine.tmp (the path, built once)
        self._kept_stdout: dict[str, int] = {}  # sandbox -> open descriptor of its empty .vine-stdout

    def make(self, label: str) -> str:
        # Reusing a clean sandbox saves two mkdir and two rmdir per task: a third of a tiny task's cost.
        if self._free_sandboxes and label.startswith("t."):
            return self._free_sandboxes.pop()
        path = os.path.join(self.sandbox_dir, label)
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.join(path, ".taskvine.tmp"))
        return path

    def link_inputs(self, rt: RunningTask) -> None:
        """Place the task's inputs in its sandbox: small ones copied, large ones and trees linked."""
        spec = rt.spec
        for inp in spec.inputs:
            if inp.in_place and spec.python is not None and not spec.environments:
                continue  # a PythonTask's function: the fork server reads it from the cache (core/worker/python.py)
            name = inp.name
            dst = os.path.join(rt.sandbox, inp.remote)
            if "/" in inp.remote:  # a top-level name's directory is the sandbox itself
                os.makedirs(os.path.dirname(dst), exist_ok=True)
            data = self.cache.memory.get(name)
            if data is not None and not inp.symlink:
                _write_file(dst, data)  # a private copy, straight from memory: no cache file at all
                continue
            if data is not None:
                self.cache.spill(name)  # a symlink needs a real file to point to
                self.cache.seal(name)
            src = self.cache.path(name)
            if inp.symlink:
                os.symlink(src, dst)
                rt.linked.append(name)
                continue
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode):
                link_tree(src, dst)
                rt.linked.append(name)
            elif st.st_size <= SANDBOX_COPY_MAX:
                shutil.copyfile(src, dst)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
            else:
                try:
                    os.link(src, dst)
                    rt.linked.append(name)
                except OSError:
                    shutil.copy2(src, dst)  # another file system: a private copy needs no check
        for name in spec.environments:
            # Not checked after the task: an environment is a run-time tree its programs may write
            # caches into (Python's __pycache__), and it would be sent again after every task.
            os.symlink(self.cache.path(name), os.path.join(rt.sandbox, f"__vine_env_{name}"))

    def kept_stdout(self, sandbox: str) -> int:
        """The open descriptor of the empty stdout file the last task in ``sandbox`` left, now the
        caller's (positioned at 0 and empty), or -1. A command task reuses it instead of opening
        and truncating the file again (an open, a truncate, a close per task on ext4)."""
        fd = self._kept_stdout.pop(sandbox, -1)
        if fd >= 0:
            if os.lseek(fd, 0, os.SEEK_END):  # written since (by something a task left behind)
                os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def verify_linked(self, rt: RunningTask) -> None:
        for name in dict.fromkeys(rt.linked):
            self.cache.verify(name, f"task {rt.id}" if not rt.is_minitask else "a mini-task")
        rt.linked.clear()

    def cleanup(self, rt: RunningTask) -> list[str]:
        """Check what the task could reach in the cache, then remove the sandbox and the task-level
        inputs no other task here still needs."""
        if rt.linked:
            self.verify_linked(rt)
        spec = rt.spec
        if rt.sandbox:
            if spec.inputs or spec.environments:
                self._remove_placed_inputs(rt)
            self._recycle_sandbox(rt.sandbox, rt)
        elif rt.stdout_fd >= 0:
            os.close(rt.stdout_fd)
            rt.stdout_fd = -1
        unlinked: list[str] = []
        if not spec.inputs:
            return unlinked
        dropped = [inp.name for inp in spec.inputs if inp.level <= C.VINE_CACHE_LEVEL_TASK]
        if not dropped:
            return unlinked  # the usual case: nothing of this task's goes with it
        still = {i.name for other in self.tasks.values() if other is not rt for i in other.spec.inputs}
        still.update(i.name for other in self.prefetched for i in other.spec.inputs)
        for name in dropped:
            if name not in still:
                if name in self.cache.entries:
                    self.cache.unlink(name)
                    unlinked.append(name)
                elif name in self.cache.pending:
                    self.cache.drop_on_arrival.add(name)  # still on its way (the task was killed): removed when it lands
        return unlinked

    def _remove_placed_inputs(self, rt: RunningTask) -> None:
        """Remove what the worker itself put in the sandbox at the top level (input copies, links,
        rebuilt trees, environment links), so a sandbox that held only those can be reused.

        Removing a file, a hard link or a symlink never touches the cache (the links were checked
        just before, in ``verify_linked``); a rebuilt tree is real directories of hard links. A
        nested remote name (``a/b``) leaves its directories, and the sandbox is deleted as before.
        Without this, every task with an input (a chain's link) paid an ``rmtree`` and two
        ``mkdir`` for its sandbox: a quarter of the worker's time per link.
        """
        names = [inp.remote for inp in rt.spec.inputs if "/" not in inp.remote]
        names.extend(f"__vine_env_{name}" for name in rt.spec.environments)
        for remote in names:
            path = os.path.join(rt.sandbox, remote)
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                pass  # gone already (moved out as an output, or removed by the task), or left for _recycle_sandbox to judge

    def _recycle_sandbox(self, path: str, rt: RunningTask) -> None:
        """Keep a sandbox the task left clean for the next task; delete anything else.

        A sandbox whose directory times are unchanged since it was last known clean holds nothing
        new (creating, removing or renaming an entry changes them): two stats instead of listing
        both directories. An empty stdout file stays, and so does the worker's open descriptor of it
        (``kept_stdout``); a non-empty one is removed (truncating written files makes ext4 flush them
        at close).
        """
        stdout_empty = rt.stdout_size == 0
        fd, rt.stdout_fd = rt.stdout_fd, -1  # the worker's descriptor of the task's stdout, if still open
        stale = self._kept_stdout.pop(path, -1)  # kept by an earlier task and not taken (a PythonTask ran here)
        if stale >= 0 and stale != fd:
            os.close(stale)
        tmp = self._tmp_dirs.get(path)
        if tmp is None:
            tmp = self._tmp_dirs[path] = os.path.join(path, ".taskvine.tmp")
        try:
            if len(self._free_sandboxes) < 64:
                if stdout_empty and self._stamps.get(path) == _dir_stamp(path, tmp):
                    self._free_sandboxes.append(path)
                    if fd >= 0:  # unchanged directory: the file it opened is still the sandbox's .vine-stdout
                        self._kept_stdout[path] = fd
                    return
                entries = os.listdir(path)
                if set(entries) <= {".taskvine.tmp", ".vine-stdout"} and not os.listdir(tmp):
                    stdout = os.path.join(path, ".vine-stdout")
                    if ".vine-stdout" in entries and not stdout_empty:
                        os.unlink(stdout)
                    elif fd >= 0 and stdout_empty and ".vine-stdout" in entries and os.stat(stdout).st_ino == os.fstat(fd).st_ino:
                        self._kept_stdout[path], fd = fd, -1
                    self._stamps[path] = _dir_stamp(path, tmp)
                    self._free_sandboxes.append(path)
                    return
        except OSError:
            pass
        finally:
            if fd >= 0 and self._kept_stdout.get(path) != fd:
                os.close(fd)
        self._stamps.pop(path, None)
        self._tmp_dirs.pop(path, None)
        shutil.rmtree(path, ignore_errors=True)


def _write_file(path: str, data: bytes) -> None:
    """Create ``path`` holding ``data`` (open's 0666 under the umask), with three system calls."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _dir_stamp(path: str, tmp: str) -> tuple[int, int, int, int]:
    top, inner = os.stat(path), os.stat(tmp)
    return top.st_mtime_ns, top.st_mode, inner.st_mtime_ns, inner.st_mode


def link_tree(src: str, dst: str) -> None:
    """Rebuild directory ``src`` at ``dst``: real directories, hard links to its files, its symlinks."""
    os.mkdir(dst)
    with os.scandir(src) as entries:
        listed = list(entries)
    for entry in listed:
        target = os.path.join(dst, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            link_tree(entry.path, target)
        else:
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)


