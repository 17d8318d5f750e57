"""Starting task shells from threads: the worker's spawner (command tasks on a worker of 2+ cores).

Kept out of :mod:`core.worker.children` because the fork server imports that module and must stay
small: this one brings in asyncio, ctypes, queue and threading.

CPython 3.11's ``os.posix_spawn`` keeps the GIL for the whole call, and the call blocks until the
child has exec'd: on a busy 2-core machine that is 0.3-0.6 ms per ``Task("true")`` in which no other
thread of the worker runs (a ticker thread counted nothing during a spawn). ``GlibcSpawn`` calls
the C library's ``posix_spawn`` through ``ctypes`` instead, which lets the GIL go for the call, and
gives the child its directory with ``posix_spawn_file_actions_addchdir_np`` (glibc 2.29), so no
thread has to ``chdir`` for it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
from typing import Any

from .children import kill_group

CLONE_FS = 0x00000200  # linux/sched.h: share the file-system information (root, cwd, umask)
POSIX_SPAWN_SETSID = 0x80  # glibc's spawn.h (Linux): the child leads a new session


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


class _FileActions:
    """A ``posix_spawn_file_actions_t`` and its glibc-side allocations, freed with the object."""

    __slots__ = ("buffer", "init_error", "_libc")

    def __init__(self, ctypes: Any, libc: Any) -> None:
        self.buffer = ctypes.create_string_buffer(256)  # posix_spawn_file_actions_t: 80 bytes on x86_64 glibc
        self._libc = libc
        self.init_error = libc.posix_spawn_file_actions_init(self.buffer)

    def __del__(self) -> None:
        if self.init_error == 0:
            self._libc.posix_spawn_file_actions_destroy(self.buffer)


class GlibcSpawn:
    """glibc's ``posix_spawn`` through ``ctypes``: the GIL is let go while the child starts.

    ``spawn(cwd, argv, env, actions)`` takes what ``os.posix_spawn`` takes (file actions as its
    ``POSIX_SPAWN_OPEN``/``DUP2``/``CLOSE`` tuples) plus the child's directory, and starts the child
    as the leader of a new session. Built file actions and environments are kept for the next call
    (a worker's sandboxes, stdout descriptors and plain environments come back); each is only read
    by the C call, so several threads may spawn with the same ones at once. ``GlibcSpawn.load()``
    is None where this is not glibc on Linux or a function is missing.
    """

    _CACHE = 256

    def __init__(self, ctypes: Any, libc: Any) -> None:
        self._c = ctypes
        self._libc = libc
        self._attr = ctypes.create_string_buffer(1024)  # posix_spawnattr_t: 336 bytes on x86_64 glibc
        if libc.posix_spawnattr_init(self._attr) or libc.posix_spawnattr_setflags(self._attr, ctypes.c_short(POSIX_SPAWN_SETSID)):
            raise OSError("posix_spawnattr_init failed")
        self._actions: dict[tuple[Any, ...], _FileActions] = {}
        self._envs: dict[tuple[tuple[str, str], ...], Any] = {}  # environment's items -> its array
        self._lock = threading.Lock()

    @classmethod
    def load(cls) -> GlibcSpawn | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            if not os.confstr("CS_GNU_LIBC_VERSION"):
                return None
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            char_pp = ctypes.POINTER(ctypes.c_char_p)
            libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, char_pp, char_pp]
            libc.posix_spawn.restype = ctypes.c_int
            libc.posix_spawn_file_actions_addchdir_np.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            libc.posix_spawn_file_actions_addopen.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
            libc.posix_spawn_file_actions_adddup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            libc.posix_spawn_file_actions_addclose.argtypes = [ctypes.c_void_p, ctypes.c_int]
            return cls(ctypes, libc)
        except (OSError, ValueError, AttributeError):
            return None

    def _file_actions(self, cwd: str, actions: list[tuple[Any, ...]]) -> _FileActions:
        key = (cwd, *actions)
        built = self._actions.get(key)
        if built is not None:
            return built
        libc = self._libc
        built = _FileActions(self._c, libc)  # destroyed when the last holder lets go of it
        errors = [built.init_error, libc.posix_spawn_file_actions_addchdir_np(built.buffer, os.fsencode(cwd))]
        for action in actions:
            if action[0] == os.POSIX_SPAWN_OPEN:
                _, fd, path, flags, mode = action
                errors.append(libc.posix_spawn_file_actions_addopen(built.buffer, fd, os.fsencode(path), flags, mode))
            elif action[0] == os.POSIX_SPAWN_DUP2:
                errors.append(libc.posix_spawn_file_actions_adddup2(built.buffer, action[1], action[2]))
            elif action[0] == os.POSIX_SPAWN_CLOSE:
                errors.append(libc.posix_spawn_file_actions_addclose(built.buffer, action[1]))
            else:
                raise ValueError(f"unknown file action {action!r}")
        failed = next((e for e in errors if e), 0)
        if failed:
            raise OSError(failed, os.strerror(failed))
        with self._lock:
            # The oldest goes (dicts keep insertion order). A thread spawning with it right now
            # still holds it, so its C side is destroyed only after that spawn.
            if len(self._actions) >= self._CACHE:
                self._actions.pop(next(iter(self._actions)))
            self._actions[key] = built
        return built

    def _environment(self, env: dict[str, str]) -> Any:
        key = tuple(env.items())  # by content: a dict changed after a spawn is not confused with its old self
        array = self._envs.get(key)
        if array is not None:
            return array
        c = self._c
        array = (c.c_char_p * (len(env) + 1))(*[os.fsencode(k) + b"=" + os.fsencode(v) for k, v in key], None)
        with self._lock:
            if len(self._envs) >= self._CACHE:
                self._envs.pop(next(iter(self._envs)))
            self._envs[key] = array
        return array

    def spawn(self, cwd: str, argv: list[str], env: dict[str, str], actions: list[tuple[Any, ...]]) -> int:
        c = self._c
        file_actions = self._file_actions(cwd, actions)
        envp = self._environment(env)
        args = [os.fsencode(a) for a in argv]
        argvp = (c.c_char_p * (len(args) + 1))(*args, None)
        pid = c.c_int()
        error = self._libc.posix_spawn(c.byref(pid), args[0], file_actions.buffer, self._attr, argvp, envp)
        if error:
            raise OSError(error, os.strerror(error), argv[0])
        return pid.value


class Spawner:
    """Threads that start task shells, so two cores' spawns overlap instead of queueing in one loop.

    A spawn blocks its caller until the child has exec'd (a third to a half of the worker's time per
    ``Task("true")``): from the event loop's thread, one task's spawn held up every other task's
    frames, reaps and completes. A spawner thread starts a task with :class:`GlibcSpawn`, which
    lets the GIL go for the call, so the loop runs meanwhile. Where that is not available, each
    thread takes a working directory of its own (``unshare_working_directory``) and calls
    ``os.posix_spawn`` there, which keeps the GIL (the loop waits as it would for its own spawn;
    the threads then only spare it the ``chdir``); where neither is, ``spawn`` returns -1 and the
    worker spawns from its own thread. Plain threads on a ``SimpleQueue``, answering with one
    ``call_soon_threadsafe``: a ``ThreadPoolExecutor`` and its wrapped futures cost more per task.
    """

    def __init__(self, threads: int) -> None:
        self.native = GlibcSpawn.load() if threads else None  # spawns without the GIL, in the task's directory
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
        native = self.native
        own_directory = native is not None or unshare_working_directory()
        while True:
            request = self._requests.get()
            if request is None:
                return
            loop, started, cwd, argv, env, actions = request
            pid, error = -1, None
            try:
                if native is not None:
                    pid = native.spawn(cwd, argv, env, actions)
                elif own_directory:
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
