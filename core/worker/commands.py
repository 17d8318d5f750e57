"""A command task's process: its environment, its start (``posix_spawn`` of ``sh -c``), its
supervision (time limits, watched outputs, monitoring) and its end.

::

    Worker._start_command ──► CommandProcesses.start(rt, ended)   a plain command task: no coroutine
    Worker.execute ─────────► CommandProcesses.run(rt)            any other: awaits the same end
        ├─ stdout: the recycled sandbox's open, empty .vine-stdout, or the file opened (the shell inherits it)
        ├─ posix_spawn /bin/sh -c <command>   (setsid: a process group of its own; here or by a spawner thread)
        ├─ its pidfd in the ExitWatcher's epoll set ──► reaped, its group killed, ``ended(rt, None)``
        └─ time limits (timers); run() also: watched outputs, monitoring ──► the exit status

A member of :class:`core.worker.Worker` (``worker.commands``), given the worker's directory, its
resources, its spawner threads, its ``send`` and the sandboxes' kept stdout files. A PythonTask's
forked child is supervised here too (``supervise``); its start is the fork server's
(core/worker/python.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import select
import shlex
import time
from typing import Any, Callable

from .. import constants as C
from ..wire import messages as M
from .children import kill_group, reap_child
from .monitor import Usage, exceeded, sample
from .running import RunningTask, close_stdout
from .spawner import Spawner

log = logging.getLogger("vine_worker")

WATCH_INTERVAL = 1.0


class ExitWatcher:
    """The ends of the worker's task shells, seen through their pidfds in an epoll set of its own.

    The event loop watches that one set (``add_reader`` once); a shell's pidfd joins it when the
    shell starts and leaves it when it ends, each one C call. Registering each pidfd with the loop
    itself (asyncio's ``add_reader`` and ``remove_reader``: a handle, a selector key, the transport
    checks, two ``epoll_ctl``) was 13% of the worker's Python time per ``Task("true")`` under
    cProfile. A pidfd turns readable once its process has ended, so it can then be reaped at once.
    """

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}  # pidfd -> what its process's end calls

    def watch(self, pid: int, ended: Callable[[], None]) -> bool:
        """Call ``ended()`` from the loop once child ``pid`` has ended; False where pidfds are not available."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return False
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
            loop = self._loop = asyncio.get_running_loop()
            loop.add_reader(epoll.fileno(), self._ready)
        epoll.register(pidfd, select.EPOLLIN)
        self._callbacks[pidfd] = ended
        return True

    def _ready(self) -> None:
        assert self._epoll is not None
        for pidfd, _events in self._epoll.poll(0):
            ended = self._callbacks.pop(pidfd)
            self._epoll.unregister(pidfd)
            os.close(pidfd)
            ended()

    def close(self) -> None:
        """Stop watching (the worker is ending: its tasks have been killed)."""
        if self._epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            for pidfd in self._callbacks:
                os.close(pidfd)
            self._callbacks.clear()
            self._epoll.close()
            self._epoll = None


class CommandProcesses:
    """Starting, supervising and ending the processes of command tasks."""

    def __init__(self, workdir: str, total: dict[str, float], spawner: Spawner, send: Callable[..., None],
                 kept_stdout: Callable[[str], int]) -> None:
        self.workdir = workdir  # the worker's own working directory (it spawns from its sandboxes)
        self.total = total  # the worker's resources (a task's environment defaults to them)
        self.spawner = spawner
        self._send = send
        self._kept_stdout = kept_stdout  # a recycled sandbox's open, empty stdout file, or -1 (WorkerSandboxes)
        self._actions: dict[int, list[tuple[Any, ...]]] = {}  # stdout descriptor -> the shell's file actions
        self._base_env = dict(os.environ)
        self._plain_envs: dict[tuple[Any, ...], dict[str, str]] = {}  # see env
        self.exits = ExitWatcher()

    def env(self, rt: RunningTask) -> dict[str, str]:
        """The task's whole environment (the caller only reads it: a plain task's may be shared)."""
        alloc = rt.alloc
        plain = not rt.spec.env and not rt.extra_env
        if plain:
            # Sandboxes are reused and most tasks of a run have one allocation: the same few
            # environments come back, so they are built once (a copy of ~40 variables per task).
            key = (rt.sandbox, alloc.get("cores"), alloc.get("memory"), alloc.get("disk"), alloc.get("gpus"))
            env = self._plain_envs.get(key)
            if env is not None:
                return env
        env = self._base_env.copy()
        tmp = os.path.join(rt.sandbox, ".taskvine.tmp")
        cores = rt.alloc.get("cores", self.total["cores"])
        env.update({
            "VINE_SANDBOX": rt.sandbox,
            "CORES": str(int(cores)) if float(cores).is_integer() else str(cores),
            "MEMORY": str(int(rt.alloc.get("memory", self.total["memory"]))),
            "DISK": str(int(rt.alloc.get("disk", self.total["disk"]))),
            "GPUS": str(int(rt.alloc.get("gpus", 0))),
            "OMP_NUM_THREADS": str(max(1, int(cores))),
            "TMPDIR": tmp, "TMP": tmp, "TEMP": tmp,
        })
        for extra in (rt.spec.env, rt.extra_env or {}):
            for k, v in extra.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
        if plain:
            if len(self._plain_envs) >= 256:
                self._plain_envs.clear()
            self._plain_envs[key] = env
        return env

    @staticmethod
    def command_line(rt: RunningTask) -> str:
        """What ``sh -c`` runs: the command, inside each of the task's environments."""
        cmd = rt.fallback_command or rt.spec.command
        for name in reversed(rt.spec.environments):
            cmd = f"./__vine_env_{name}/bin/run_in_env {shlex.quote(cmd)}"
        return cmd

    def _prepare(self, rt: RunningTask) -> tuple[list[str], dict[str, str], list[tuple[Any, ...]]]:
        """The shell's argv, environment and file actions; opens the task's stdout file (``rt.stdout_fd``)."""
        fd = self._kept_stdout(rt.sandbox)
        if fd < 0:
            fd = os.open(os.path.join(rt.sandbox, ".vine-stdout"), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        rt.stdout_fd = fd
        actions = self._actions.get(fd)
        if actions is None:  # descriptors come back (kept stdout files, the lowest free number): built once per number
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)]
            if len(self._actions) < 1024:
                self._actions[fd] = actions
        return ["/bin/sh", "-c", self.command_line(rt)], self.env(rt), actions

    def _spawn_here(self, rt: RunningTask, argv: list[str], env: dict[str, str], actions: list[tuple[Any, ...]]) -> int:
        # posix_spawn has no cwd argument: this thread is the only one that spawns from the
        # process's directory or uses relative paths (every worker path is absolute), so
        # changing directory around the call is safe.
        os.chdir(rt.sandbox)
        try:
            return os.posix_spawn("/bin/sh", argv, env, file_actions=actions, setsid=True)
        finally:
            os.chdir(self.workdir)

    async def run(self, rt: RunningTask) -> int:
        """Run the task's command in its sandbox; its exit status (negative = killed by that signal).

        posix_spawn (environment converted in C, no Popen machinery) and a pidfd in the event loop
        keep the worker's own cost per task well under the cost of starting the shell.
        """
        argv, env, actions = self._prepare(rt)
        try:
            pid = await self.spawner.spawn(rt.sandbox, argv, env, actions)  # from a spawner thread (spawner.py)
            if pid < 0:
                pid = self._spawn_here(rt, argv, env, actions)
        except BaseException:  # killed while starting (the spawner ends the shell), or no shell at all
            close_stdout(rt)
            raise
        done = rt.done = asyncio.get_running_loop().create_future()

        def ended(rt: RunningTask, error: BaseException | None) -> None:
            if not done.done():
                done.set_result(rt.returncode)

        self._watch_exit(rt, pid, ended)
        return await self.supervise(rt)

    def start(self, rt: RunningTask, ended: Callable[[RunningTask, BaseException | None], None]) -> None:
        """Start the task's command with no coroutine; ``ended(rt, None)`` is called from the loop once
        its process has ended and been reaped (``rt.returncode`` set, ``rt.killed_for`` if killed),
        ``ended(rt, error)`` if a spawner thread could not start it. Raises OSError when it cannot
        start here. A plain command task's path (Worker.start_general): its time limits are timers.
        """
        argv, env, actions = self._prepare(rt)
        try:
            if self.spawner.threads:
                started = rt.starter = self.spawner.spawn(rt.sandbox, argv, env, actions)
                started.add_done_callback(lambda fut: self._spawned(rt, fut, ended, argv, env, actions))
                return
            pid = self._spawn_here(rt, argv, env, actions)
        except BaseException:
            close_stdout(rt)
            raise
        self._started(rt, pid, ended)

    def _spawned(self, rt: RunningTask, started: asyncio.Future[int], ended: Callable[[RunningTask, BaseException | None], None],
                 argv: list[str], env: dict[str, str], actions: list[tuple[Any, ...]]) -> None:
        rt.starter = None
        if started.cancelled():  # killed while its shell started: the spawner killed the shell
            close_stdout(rt)
            return
        try:
            pid = started.result()
            if pid < 0:  # the thread has no working directory of its own: spawned from here
                pid = self._spawn_here(rt, argv, env, actions)
        except OSError as exc:
            close_stdout(rt)
            ended(rt, exc)
            return
        self._started(rt, pid, ended)

    def _started(self, rt: RunningTask, pid: int, ended: Callable[[RunningTask, BaseException | None], None]) -> None:
        spec = rt.spec
        if spec.time_max or spec.time_end:
            loop = asyncio.get_running_loop()
            rt.timers = []
            if spec.time_max:
                rt.timers.append(loop.call_later(float(spec.time_max), self.kill, rt, C.VINE_RESULT_MAX_WALL_TIME))
            if spec.time_end:
                rt.timers.append(loop.call_later(max(0.0, spec.time_end / 1e6 - time.time()), self.kill, rt, C.VINE_RESULT_MAX_END_TIME))
        self._watch_exit(rt, pid, ended)

    def _watch_exit(self, rt: RunningTask, pid: int, ended: Callable[[RunningTask, BaseException | None], None]) -> None:
        """From now on ``rt`` runs as ``pid``: its end calls ``_exited`` from the loop."""
        rt.pid = pid
        rt.start = time.time()
        if not self.exits.watch(pid, functools.partial(self._exited, rt, ended)):
            loop = asyncio.get_running_loop()  # no pidfds here: a thread waits for the end (without reaping it)
            loop.run_in_executor(None, lambda: (os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT),
                                                loop.call_soon_threadsafe(self._exited, rt, ended)))

    def _exited(self, rt: RunningTask, ended: Callable[[RunningTask, BaseException | None], None]) -> None:
        try:
            # It has ended (its pidfd or waitid said so), so this does not wait.
            got = reap_child(rt.pid) or (rt.pid, os.waitstatus_to_exitcode(os.waitpid(rt.pid, 0)[1]))
        except ChildProcessError:
            got = (rt.pid, 255)
        rt.returncode = got[1]
        # Whatever the task left running in the background goes with it: a finished task
        # must not keep using the cores, memory or files it was allocated.
        kill_group(rt.pid)
        if rt.timers is not None:
            for timer in rt.timers:
                timer.cancel()
            rt.timers = None
        ended(rt, None)

    async def supervise(self, rt: RunningTask) -> int:
        """Wait for ``rt.done`` under the task's time limits, output watches and monitoring; the one
        supervision of a running task, whether the worker spawned it or the fork server forked it."""
        assert rt.done is not None
        loop = asyncio.get_running_loop()
        timers = []
        spec = rt.spec
        if spec.time_max:
            timers.append(loop.call_later(float(spec.time_max), self.kill, rt, C.VINE_RESULT_MAX_WALL_TIME))
        if spec.time_end:
            timers.append(loop.call_later(max(0.0, spec.time_end / 1e6 - time.time()), self.kill, rt, C.VINE_RESULT_MAX_END_TIME))
        watch = [o for o in spec.outputs if o.watch]
        watcher = asyncio.create_task(self.watch(rt, watch)) if watch else None
        monitor = asyncio.create_task(self.monitor(rt, spec.monitor)) if spec.monitor is not None else None
        try:
            return await rt.done
        finally:
            if monitor:
                monitor.cancel()
            for tm in timers:
                tm.cancel()
            if watcher:
                watcher.cancel()

    async def monitor(self, rt: RunningTask, options: M.MonitorOptions) -> None:
        """Sample the task's process tree; with the watchdog, kill it when it exceeds its allocation."""
        rt.usage = Usage(start=rt.start or time.time())
        interval = float(options.interval or 1.0)
        delay = min(0.1, interval)  # catch fast-growing tasks early, then settle to the interval
        n = 0
        while rt.returncode is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, interval)
            n += 1
            sample(rt.usage, rt.pid, rt.sandbox, with_disk=(n % 3 == 1))
            if options.watchdog:
                over = exceeded(rt.usage, rt.alloc)
                if over:
                    rt.limits = over
                    log.info("task %s exceeded %s (allocated %s): killing it", rt.id, over, rt.alloc)
                    self.kill(rt, C.VINE_RESULT_RESOURCE_EXHAUSTION)
                    return

    def kill(self, rt: RunningTask, reason: int | None = None) -> None:
        """Stop ``rt``: its process group killed (``reason``: the result it ends with), or its start cancelled."""
        if rt.pid and rt.returncode is None:
            if reason is not None and rt.killed_for is None:
                rt.killed_for = reason
            kill_group(rt.pid)
        if rt.starter is not None and not rt.pid:
            rt.starter.cancel()

    async def watch(self, rt: RunningTask, outputs: list[M.OutputRef]) -> None:
        """Send the new bytes of the watched ``outputs`` every WATCH_INTERVAL while the task runs."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            self.watch_once(rt, outputs)

    def watch_once(self, rt: RunningTask, outputs: list[M.OutputRef]) -> None:
        for o in outputs:
            path = os.path.join(rt.sandbox, o.remote)
            offset = rt.watchers.get(o.name, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(1 << 20)
            except OSError:
                continue
            if data:
                self._send(M.Watch(rt.id, o.name, offset), data)
                rt.watchers[o.name] = offset + len(data)
