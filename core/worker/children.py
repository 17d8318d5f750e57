"""Starting, ending and reaping a task's processes: the one place the worker and its fork server do it.

A task runs as the leader of a process group of its own (``setsid``/``setpgid``), so killing the
group kills everything it started. The worker reaps the shell it spawned for a command task (its
pidfd turns readable), the fork server reaps the children it forked for PythonTasks (on SIGCHLD);
both read the ending with :func:`reap_child` and clean up with :func:`kill_group`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import threading
from typing import Any


def reap_child(pid: int = -1) -> tuple[int, int] | None:
    """Reap child ``pid`` (any child with -1) if it has ended, without waiting.

    Returns ``(pid, exit code)`` with the code as ``os.waitstatus_to_exitcode`` gives it (negative:
    killed by that signal), or None while it runs. Raises ChildProcessError when there is no such
    child (already reaped, or none left).
    """
    ended, status = os.waitpid(pid, os.WNOHANG)
    if ended == 0:
        return None
    return ended, os.waitstatus_to_exitcode(status)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``: a task and whatever it left running.

    A group already gone (or no longer ours to signal) is fine: there is nothing left to stop.
    """
    if pid <= 0:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


CLONE_FS = 0x00000200  # linux/sched.h: share the file-system information (root, cwd, umask)


def unshare_working_directory() -> bool:
    """Give the calling thread a working directory of its own (Linux ``unshare(CLONE_FS)``).

    After this, ``os.chdir`` in this thread moves only this thread, and a process it spawns starts
    in this thread's directory: several threads can then each spawn a task in its own sandbox at
    once (``posix_spawn`` has no directory argument in Python 3.11). False where the call is not
    available or refused; the caller then spawns from one thread only.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(CLONE_FS) == 0
    except (OSError, AttributeError):
        return False


class Spawner:
    """Threads that start task shells, so two cores' spawns overlap instead of queueing in one loop.

    ``posix_spawn`` releases the GIL but blocks its caller until the child has exec'd (a third to
    a half of the worker's time per ``Task("true")``): from the event loop's thread, one task's
    spawn held up every other task's frames, reaps and completes. Each spawner thread has a working
    directory of its own (``unshare_working_directory``), so it can start a task in its sandbox
    without moving anyone else's. Where that is not available, ``spawn`` returns -1 and the worker
    spawns from its own thread as before. Plain threads on a ``SimpleQueue``, answering with one
    ``call_soon_threadsafe``: a ``ThreadPoolExecutor`` and its wrapped futures cost more per task.
    """

    def __init__(self, threads: int) -> None:
        self._requests: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"vine-spawn-{n}", daemon=True) for n in range(threads if threads > 1 else 0)]
        for t in self._threads:
            t.start()

    def spawn(self, cwd: str, argv: list[str], env: dict[str, str], actions: list[tuple[Any, ...]]) -> asyncio.Future[int]:
        """Start ``argv`` in ``cwd`` as the leader of a new session: a future of its pid, or of -1
        (no spawner thread: spawn it yourself). Cancelling the future kills the shell once started."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[int] = loop.create_future()
        if not self._threads:
            started.set_result(-1)
        else:
            self._requests.put((loop, started, cwd, argv, env, actions))
        return started

    def _serve(self) -> None:
        own_directory = unshare_working_directory()
        while True:
            request = self._requests.get()
            if request is None:
                return
            loop, started, cwd, argv, env, actions = request
            pid, error = -1, None
            try:
                if own_directory:
                    os.chdir(cwd)
                    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
            except OSError as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, started, pid, error)
            except RuntimeError:  # the loop is closed: the worker is exiting
                if pid > 0:
                    _kill_and_reap(pid)

    def close(self) -> None:
        for _ in self._threads:
            self._requests.put(None)
        for t in self._threads:
            t.join(5)
        self._threads = []


def _settle(started: asyncio.Future[int], pid: int, error: OSError | None) -> None:
    if started.cancelled():
        # The task was killed while its shell was being started: the shell goes too.
        if pid > 0:
            _kill_and_reap(pid)
    elif error is not None:
        started.set_exception(error)
    else:
        started.set_result(pid)


def _kill_and_reap(pid: int) -> None:
    kill_group(pid)
    try:
        os.waitpid(pid, 0)  # at once: it was SIGKILLed
    except ChildProcessError:
        pass
