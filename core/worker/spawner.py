"""Starting task shells from threads: the worker's spawner (command tasks on a worker of 2+ cores).

Kept out of :mod:`core.worker.children` because the fork server imports that module and must stay
small: this one brings in asyncio, queue and threading.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import Any

from .children import kill_group

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
        self._threads = [threading.Thread(target=self._serve, name=f"vine-spawn-{n}", daemon=True) for n in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def threads(self) -> int:
        """How many spawner threads there are (0: the worker spawns from its own thread)."""
        return len(self._threads)

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
