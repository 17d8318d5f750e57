"""``Manager``: the user's handle on the cluster, living inside the user's program.

::

    user thread                         I/O thread (asyncio)                       workers
    ───────────                         ────────────────────                       ───────
    submit(t) ──inbox──► events ──► SchedulerState.handle() ──► instructions
                                                                 │  per-worker outbox, in order
                                                                 ├──► file / task / fetch ───► worker
    wait() ◄──done queue── ReturnTask ◄── events ◄── frames ◄────┴─── cache_update / complete ◄─┘

Sockets belong to one I/O thread, so workers are served (keepalives, results, transfers) while the
user's thread is busy; every decision is made by the pure :class:`SchedulerState`.

The Manager is the public API over members, each lent what it uses when it is made: ``_io``
(:class:`IOThread`: the loop, ``call``, ``post``), ``_shell`` (:class:`StateShell`: events into the
state, its instructions carried out, finished tasks to ``wait``, the ticker), ``_worker_links`` (:class:`WorkerLinks`: the
connections), ``_libraries`` (:class:`ManagerLibraries`), ``_categories`` (:class:`CategorySettings`),
``_worker_controls`` (:class:`WorkerControls`), sharing one ``_settings`` (:class:`ManagerSettings`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable

from .. import constants as C
from ..api.files import File
from ..api.library import LibraryTask
from ..api.specs import task_spec
from ..api.task import Task
from ..deploy.catalog import DEFAULT_INTERVAL as CATALOG_UPDATE_INTERVAL
from ..deploy.catalog import Registration as CatalogRegistration
from ..errors import ManagerError, TaskError
from ..state.scheduler import (
    Event,
    FileUndeclared,
    HostBlocked,
    HostUnblocked,
    PolicyChanged,
    SchedulerState,
    TaskCancelled,
    TuneChanged,
    policy_name,
)
from ..state.spec import TaskSpec
from ..wire import messages as M
from ..wire.tls import start_gated_server
from . import declarations, exit_guard, functional
from .categories import CategorySettings
from .io_thread import IOThread
from .libraries import ManagerLibraries, create_library, environment_file
from .links import WorkerLink, WorkerLinks
from .logs import RunLogs
from .metrics import ManagerMetrics, manager_stats
from .settings import ManagerSettings, Stats, bind_port, catalog_fields, checked_tune, tls_context
from .state_shell import StateShell
from .status_display import StatusDisplay, check_status_interval
from .worker_controls import WorkerControls

log = logging.getLogger("core.manager")


def _delegate(member: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """A Manager method that calls ``method`` on the member named ``member``; it keeps the member's
    signature and docstring (one text, next to the code it describes)."""
    name = method.__name__

    @functools.wraps(method)
    def delegated(self: Manager, *args: Any, **kwargs: Any) -> Any:
        return getattr(getattr(self, member), name)(*args, **kwargs)
    return delegated


class Manager:
    """Submit tasks and wait for their results; workers connect to ``port`` (``vine_worker HOST PORT``).

    ``Manager(port=0)`` listens on any free port (``m.port`` tells which). With ``name=`` the
    manager registers in the catalog so workers can find it with ``vine_worker -M NAME``. With
    ``prometheus_port=N`` it serves its stats as ``vine_<stat>`` gauges at ``http://HOST:N/metrics``
    (0: any free port, ``m.prometheus_port`` tells which; needs ``pip install 'core-vine[metrics]'``).
    A manager not closed when the program ends is closed at exit (core.manager.exit_guard), so its logs end
    complete. With ``status_display_interval=S`` (seconds) it shows its status at most every S s
    while the program waits, and once more at close: an HTML table updated in place in Jupyter, a
    one-line status on stderr elsewhere (core.manager.status_display).
    """

    _tasks_cache: Any = None  # a core.manager.tasks_cache.TasksCache once enable_tasks_cache is called
    _status_display: StatusDisplay | None = None

    def __init__(
        self,
        port: int | list[int] | tuple[int, int] = C.VINE_DEFAULT_PORT,
        name: str | None = None,
        shutdown: bool = False,
        run_info_path: str = "vine-run-info",
        run_info_template: str | None = None,
        staging_path: str | None = None,
        ssl: Any = None,
        init_fn: Callable[[Manager], None] | None = None,
        status_display_interval: float | None = None,
        prometheus_port: int | None = None,
    ) -> None:
        self._closed = True
        status_display_interval = check_status_interval(status_display_interval)  # before the port is bound
        self._sock = bind_port(port)
        self._port = self._sock.getsockname()[1]
        self._settings = ManagerSettings(self._port, name)  # shared with the members below
        self._shutdown = shutdown
        try:
            self._ssl_context = tls_context(ssl)
        except BaseException:
            self._sock.close()  # a bad ssl argument must not leave the port bound
            raise
        self._logs = RunLogs(run_info_path, run_info_template)
        self._staging = os.path.join(staging_path, "vine-staging") if staging_path else self._logs.staging_dir
        os.makedirs(self._staging, exist_ok=True)
        self._state = SchedulerState()
        self._tune_values: dict[str, float] = {}
        self._properties: dict[str, str] = {}
        self._tasks: dict[int, Task] = {}
        self._next_id = 1
        self._files: dict[str, File] = {}
        self._lineage: dict[str, Task] = {}  # temp cache name -> the task that makes it, while it is declared
        self._finalized_temps: set[str] = set()  # temps made by tasks with a __del__ of their own (undeclare_file)
        self._outstanding = 0
        self._done: collections.OrderedDict[int, Task] = collections.OrderedDict()
        self._done_lock = threading.RLock()  # the condition's own lock, taken directly where nothing is notified
        self._cond = threading.Condition(self._done_lock)
        self._links: dict[str, WorkerLink] = {}
        self._counters: dict[str, float] = collections.defaultdict(float)
        self._catalog: CatalogRegistration | None = None
        self._metrics = ManagerMetrics()
        self._io = IOThread(f"vine-manager-{self._port}", self._apply, lambda: self._closed)  # started below
        self._loop, self._thread, self._call, self._post = self._io.loop, self._io.thread, self._io.call, self._io.post
        self._shell = StateShell(self._state, self._logs, self._metrics, self._links, self._tasks, self._files, self._done,
                                 self._cond, self._loop, worker_links=lambda: self._worker_links,
                                 worker_controls=lambda: self._worker_controls, tasks_cache=lambda: self._tasks_cache,
                                 collect_stats=self._collect_stats, finalize=self._finalize)
        # Members, each lent what it needs (they share these objects with the manager, never the manager itself).
        self._libraries = ManagerLibraries(self._state, self._logs, os.path.join(self._logs.run_dir, "library-logs"),
                                           self._remember, self._post, self._call, self._apply)
        self._categories = CategorySettings(self._state, self._logs, self._call, lambda: self._settings.monitoring is not None,
                                            self.enable_monitoring, apply=self._apply)
        self._worker_links = WorkerLinks(self._settings, self._state, self._logs, self._metrics, self._links, self._counters,
                                         self._tasks, self._files, self._staging, self._libraries, self._categories,
                                         apply=self._apply, call=self._call, collect_stats=self._collect_stats,
                                         lineage=self._lineage, frames_answered=self._shell.notify_now)
        self._worker_controls = WorkerControls(self._state, self._links, self._counters, self._tune_values, self._logs,
                                               self._metrics, self._loop, self._call, self._apply)
        self._io.start(self._start_io, self._io_ended)
        if status_display_interval is not None:
            self._status_display = StatusDisplay.for_manager(self, status_display_interval)
        self._closed = False
        exit_guard.register(self)
        if prometheus_port is not None:
            try:
                self._metrics.start_exporter(prometheus_port, lambda: self._call(self._collect_stats, timeout=10))
            except BaseException:
                self.close()  # no half-started manager: its port and thread go with the error
                raise
        self._logs.manager_listening(self._port)
        if name:
            self._advertise(name)
        if init_fn is not None:
            init_fn(self)

    # -- properties -------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def name(self) -> str | None:
        return self._settings.name

    @property
    def prometheus_port(self) -> int | None:
        """The port serving ``/metrics`` (the one chosen when 0 was asked), or None without one."""
        exporter = self._metrics.exporter
        return exporter.port if exporter is not None else None

    @property
    def using_ssl(self) -> bool:
        return self._ssl_context is not None

    @property
    def runtime_directory(self) -> str:
        return self._logs.run_dir

    @property
    def logging_directory(self) -> str:
        return self._logs.log_dir

    @property
    def staging_directory(self) -> str:
        return self._staging

    @property
    def cache_directory(self) -> str:
        return os.path.join(os.path.dirname(self._logs.run_dir), "vine-cache")

    @property
    def stats(self) -> Stats:
        return Stats(self._call(self._collect_stats))

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def close(self) -> None:
        """Disconnect workers (telling them to exit if ``shutdown=True``), stop the I/O thread, close logs."""
        if self._closed:
            return
        if self._status_display is not None:
            self._status_display.finish()  # before workers are let go: the final state, as it was
        self._closed = True
        exit_guard.unregister(self)
        self._metrics.stop()
        if self._catalog is not None:
            self._catalog.stop()
            self._catalog = None
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown_io(), self._loop)
            fut.result(timeout=30)
        except Exception as exc:  # noqa: BLE001
            log.debug("shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._logs.close(self._collect_stats(), self._settings.name)
        shutil.rmtree(self._logs.staging_dir, ignore_errors=True)
        with self._cond:
            self._cond.notify_all()

    def _flush_logs(self) -> None:
        """Write every buffered log record now (core.manager.exit_guard, before a program's signal handler)."""
        self._logs.flush()

    def _io_ended(self) -> None:
        self._metrics.busy["io_cpu"] = time.thread_time() * 1e6  # all of it, for the last performance row

    async def _start_io(self) -> None:
        # Not asyncio.start_server: the gated listener refuses plain TCP on a TLS port (and TLS on a
        # plain one) with a log line and a reason the client can read (core.wire.tls).
        self._server = await start_gated_server(
            self._worker_links.on_client, sock=self._sock, ssl=self._ssl_context, what="manager", log=log, limit=1 << 20,
            timeout=lambda: float(self._state.tuning.get("handshake-timeout", 30)))
        self._ticker = asyncio.create_task(self._shell.tick_loop())

    async def _shutdown_io(self) -> None:
        self._io.flush()  # events posted just before close are applied, as they were before the drain was batched
        self._ticker.cancel()
        self._server.close()
        for link in list(self._links.values()):
            if self._shutdown:
                link.conn.send(M.Exit())
                try:
                    await asyncio.wait_for(link.conn.drain(), 2)
                except (OSError, asyncio.TimeoutError):
                    pass
            link.conn.close()

    # -- configuration -----------------------------------------------------------------------------------------
    def tune(self, name: str, value: float) -> int:
        """Set a tuning parameter (REFERENCE §4). An unknown name raises :class:`TuneError`."""
        key, value = checked_tune(name, value)
        if key == "update-interval" and self._catalog is not None:
            self._catalog.set_interval(value)
        if key == "proportional-resources" and name == "proportional-resources":
            self._set_tuning("proportional-whole-tasks", 1.0 if value > 0 else 0.0)
        self._tune_values[key] = value
        self._set_tuning(key, value)
        return 0

    def _set_tuning(self, key: str, value: float) -> None:
        self._call(lambda: self._apply(TuneChanged(time.time(), key, value)))

    def set_scheduler(self, scheduler: str | int) -> None:
        name = policy_name(scheduler)
        self._call(lambda: self._apply(PolicyChanged(time.time(), name)))

    def enable_monitoring(self, watchdog: bool = True, time_series: bool = False) -> None:
        """Measure every task's memory, disk and cores (``t.resources_measured``); with ``watchdog``
        a task over its allocation is killed, reported as "resource exhaustion", and retried once on
        a whole worker unless the exceeded value was set on the task itself."""
        self._settings.monitoring = {"watchdog": bool(watchdog), "interval": float(self._tune_values.get("monitor-interval") or 1.0)}

    def disable_monitoring(self) -> None:
        self._settings.monitoring = None

    @property
    def _monitoring(self) -> dict[str, Any] | None:
        """The monitoring options sent with each task (None: off); DaskVine sets and restores it around a run."""
        return self._settings.monitoring

    @_monitoring.setter
    def _monitoring(self, options: dict[str, Any] | None) -> None:
        self._settings.monitoring = options

    @property
    def _password(self) -> bytes | None:
        """The password set (None: none); a Factory hands it to the workers it starts."""
        return self._settings.password

    def enable_peer_transfers(self) -> None:
        """Let workers fetch cached inputs from each other (the default)."""
        self._set_tuning("peer-transfers", 1.0)

    def disable_peer_transfers(self) -> None:
        """Every input comes from the manager or its URL; temps still move between workers."""
        self._set_tuning("peer-transfers", 0.0)

    def get_file_replica_count(self, f: File) -> int:
        def count() -> int:
            rec = self._state.files.get(f.cache_name)
            return sum(1 for st in rec.replicas.values() if st == "ready") if rec else 0
        return int(self._call(count))

    def set_password(self, password: str | bytes) -> None:
        self._settings.password = password.encode() if isinstance(password, str) else bytes(password)

    def set_password_file(self, path: str) -> None:
        with open(path, "rb") as fh:
            self._settings.password = fh.read().strip()

    def set_property(self, key: str, value: str) -> None:
        self._properties[key] = value

    def set_name(self, name: str) -> None:
        """Advertise this manager in the catalog under ``name`` (replacing any earlier name)."""
        self._settings.name = name
        self._advertise(name)

    def update_catalog(self) -> None:
        """Rewrite the catalog entry now (it is also refreshed every ``update-interval`` s, 60 by default)."""
        if self._catalog is not None:
            self._catalog.refresh()

    def _advertise(self, name: str) -> None:
        if self._catalog is not None:
            self._catalog.stop()
        interval = self._tune_values.get("update-interval", CATALOG_UPDATE_INTERVAL)
        self._catalog = CatalogRegistration(name, self._port, ssl=self.using_ssl, fields=self._catalog_fields,
                                            interval=interval)

    def _catalog_fields(self) -> dict[str, Any]:
        return catalog_fields(self._properties, None if self._closed else self._call(self._collect_stats, timeout=5))

    def set_keepalive_interval(self, seconds: float) -> None:
        self.tune("keepalive-interval", seconds)

    def set_keepalive_timeout(self, seconds: float) -> None:
        self.tune("keepalive-timeout", seconds)

    def block_host(self, host: str) -> None:
        """Send no more tasks to workers on ``host`` (running ones finish)."""
        self._call(lambda: self._apply(HostBlocked(time.time(), host)))

    def block_host_with_timeout(self, host: str, timeout: float) -> None:
        self.block_host(host)
        self._loop.call_soon_threadsafe(lambda: self._loop.call_later(timeout, self.unblock_host, host))

    def unblock_host(self, host: str) -> None:
        self._call(lambda: self._apply(HostUnblocked(time.time(), host)))

    def workers_shutdown(self, n: int = 0) -> int:
        """Tell ``n`` workers (0 = all), idle ones first, to exit. Returns how many were told."""
        def apply() -> int:
            links = sorted(self._links.values(), key=lambda lk: len(self._state.workers[lk.id].tasks) if lk.id in self._state.workers else 0)
            chosen = links if n <= 0 else links[:n]
            for link in chosen:
                link.conn.send(M.Exit())
            return len(chosen)
        return int(self._call(apply))

    # -- files ---------------------------------------------------------------------------------------------------
    def _remember(self, f: File) -> File:
        existing = self._files.get(f.cache_name)
        if existing is not None and existing.kind == f.kind and existing.source() == f.source():
            return existing
        self._files[f.cache_name] = f
        self._logs.graph_file(f.cache_name, f.source(), max(f.size, 0))
        return f

    # Building files is plain functions over the manager (core/manager/declarations.py):
    declare_file = declarations.declare_file
    declare_url = declarations.declare_url
    declare_buffer = declarations.declare_buffer
    declare_temp = declarations.declare_temp
    declare_minitask = declarations.declare_minitask
    declare_untar = declarations.declare_untar
    declare_poncho = declare_starch = declarations.declare_poncho

    def fetch_file(self, f: File, timeout: float = 300, binary: bool = False) -> str | bytes:
        """The contents of ``f`` as text, as TaskVine returns them; pulled from a worker if needed.

        The bytes are decoded as UTF-8 with ``surrogateescape``, so nothing is lost even for binary
        content (``s.encode("utf-8", "surrogateescape")`` gives the bytes back); TaskVine's text
        stops at the first NUL byte, ours does not. For the bytes themselves pass ``binary=True``,
        or call ``f.contents()``. Raises TransferError (TaskVine returns None) when no connected
        worker holds the file, and TimeoutError after ``timeout`` seconds.
        """
        data = self._fetch_bytes(f, timeout)
        return data if binary else data.decode("utf-8", "surrogateescape")

    def _fetch_bytes(self, f: File, timeout: float = 300) -> bytes:
        if f.kind == "buffer" and f.buffer_data() is not None:
            return f.buffer_data()  # type: ignore[return-value]
        if f.kind == "file":
            with open(f.source(), "rb") as fh:
                return fh.read()
        fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self._call(lambda: self._worker_links.start_fetch(f, fut))
        return fut.result(timeout)

    def enable_tasks_cache(self, cache_dir: str = "vine-cache-outputs", log_file: str = "vine-cache.txlog") -> Any:
        """Answer a task that succeeded before (same command, input contents, function...) at submit:
        ``wait`` returns it with ``hostname == "CACHED"``, outputs restored. Persists across runs in
        ``cache_dir`` and ``log_file``; returns the :class:`core.manager.tasks_cache.TasksCache` (``clear()``),
        whose docstring says what the key holds and what invalidates an entry."""
        from .tasks_cache import TasksCache

        self._tasks_cache = TasksCache(cache_dir, log_file)
        return self._tasks_cache

    def undeclare_file(self, f: File) -> None:
        """Forget ``f``: workers delete their replicas; a local file with ``unlink_when_done`` is removed."""
        self._post(FileUndeclared(time.time(), f.cache_name, forget=True))
        self._files.pop(f.cache_name, None)
        self._lineage.pop(f.cache_name, None)
        if f.cache_name in self._finalized_temps:
            self._finalized_temps.discard(f.cache_name)
            # Its producer's class has a finalizer: return only once the scheduler has let go of that task
            # (it keeps the producer of each temp for lineage recovery), so the finalizer has run when
            # nothing else holds the task, as in TaskVine (its unlink_when_done test relies on this order).
            if not self._closed and threading.current_thread() is not self._thread:
                self._call(lambda: None)  # runs after the queued FileUndeclared
        if f.unlink_when_done and f.kind == "file" and os.path.exists(f.source()):
            if os.path.isdir(f.source()):
                shutil.rmtree(f.source(), ignore_errors=True)
            else:
                os.unlink(f.source())

    remove_file = undeclare_file

    def prune_file(self, f: File) -> None:
        """Delete every worker replica of ``f`` but keep it declared."""
        self._post(FileUndeclared(time.time(), f.cache_name, forget=False))

    # -- tasks ------------------------------------------------------------------------------------------------------
    def submit(self, task: Task) -> int:
        """Queue ``task``; returns its id (from 1)."""
        if self._closed:
            raise ManagerError("the manager is closed")
        if not isinstance(task, Task):
            raise TypeError(f"submit takes a Task, got {type(task).__name__}")
        if task._state != C.VINE_TASK_INITIAL:
            raise TaskError(f"task {task.id} was already submitted (state {task.state}); create a new Task")
        # The task gets ready for this manager: first its submit_finalize() (TaskVine's hook, which
        # subclasses override to add inputs), then its own preparation (PythonTask serialises its
        # function here); it may add inputs/outputs or refuse the task. ``task.manager`` is this
        # manager during both, as in TaskVine. (Written here, not in a method: a call per submit.)
        task._manager = self
        try:
            task.submit_finalize()
            hook = task._prepare_submit  # None unless a subclass prepares itself (core/api/task.py)
            if hook is not None:
                hook(self)
        except BaseException:
            task._manager = None  # refused: it stays an unsubmitted task
            raise
        cached = self._tasks_cache.lookup(task) if self._tasks_cache is not None else None
        tid = task._id = self._next_id
        self._next_id += 1
        task._state = C.VINE_TASK_READY
        task._submit_time = time.time()
        if task._metrics is not None:  # else task.metrics makes "time_when_submitted" from it when first read
            task._metrics["time_when_submitted"] = task._submit_time * 1e6
        if cached is not None and self._tasks_cache.answer(task, cached):
            self._answered_from_cache(task, cached.key)
            return task.id
        self._tasks[tid] = task
        with self._done_lock:  # wait() in another thread decrements it (Parsl submits and waits from two threads)
            self._outstanding += 1
        if task.inputs or task.outputs:
            for m in task.inputs:
                self._remember(m.file)
            for m in task.outputs:
                self._remember(m.file)
            if type(task).__del__ is not Task.__del__:
                self._finalized_temps.update(m.file.cache_name for m in task.outputs if m.file.kind == "temp")
        spec = task_spec(task)  # all the scheduler will ever read of it (core/state/spec.py)
        self._logs.task_ready(tid, spec.category, 1, spec.requested, task._submit_time)
        if spec.outputs:
            for m in spec.outputs:
                if m.file.kind == "temp":
                    self._lineage[m.file.cache_name] = task  # a lost temp's re-run is encoded from its producer
        # The spec alone: the I/O thread hands each run of posted specs to the state as one
        # TasksSubmitted (StateShell.apply_posted), so a burst of submits makes no event per task.
        self._post(spec)
        return tid

    def _answered_from_cache(self, task: Task, key: str) -> None:
        """``task`` was finished by the tasks cache at submit: ``wait`` returns it at once."""
        self._tasks[task.id] = task
        self._finalize(task)
        self._logs.debug(f"task {task.id} answered from the tasks cache (entry {key})")
        with self._cond:
            self._outstanding += 1
            self._done[task.id] = task
            self._cond.notify_all()

    def wait(self, timeout: Any = "wait_forever") -> Task | None:
        """The next finished task, or None after ``timeout`` seconds (0 polls; -1 waits forever)."""
        return self._wait_for(lambda t: True, timeout)

    def wait_for_tag(self, tag: str, timeout: Any = "wait_forever") -> Task | None:
        return self._wait_for(lambda t: t.tag == tag, timeout)

    def wait_for_task_id(self, task_id: int, timeout: Any = "wait_forever") -> Task | None:
        return self._wait_for(lambda t: t.id == task_id, timeout)

    def _wait_for(self, match: Callable[[Task], bool], timeout: Any) -> Task | None:
        if timeout in ("wait_forever", None, C.VINE_WAIT_FOREVER):
            deadline = None
        else:
            timeout = float(timeout)
            if timeout < 0:
                raise ValueError(f"wait timeout must be >= 0 seconds, or -1 / 'wait_forever'; got {timeout}")
            deadline = time.monotonic() + timeout
        display = self._status_display
        if display is not None:
            display.tick()
        with self._cond:
            while True:
                for tid, task in self._done.items():
                    if match(task):
                        del self._done[tid]
                        self._outstanding -= 1
                        task._state = C.VINE_TASK_DONE
                        self._logs.debug_task_done(tid)
                        self._tasks.pop(tid, None)
                        self._cond.notify_all()  # other waiters may now have nothing left to wait for
                        return task
                # Nothing in flight and no finished task matches: none ever will (wait_for_tag of a tag
                # no pending task carries must not block forever behind other tasks' results).
                if self._closed or self._outstanding - len(self._done) <= 0:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if display is not None:
                    if display.tick_released(self._cond):  # a refresh was due: look at _done again
                        continue
                    remaining = display.wait_limit(remaining)  # wake for the next refresh
                key = self._metrics.polling_began()
                try:
                    self._cond.wait(remaining)
                finally:
                    self._metrics.polling_ended(key)

    def empty(self) -> bool:
        """True when every submitted task has been returned by ``wait``."""
        if self._status_display is not None:
            self._status_display.tick()
        return self._outstanding == 0

    def hungry(self) -> int:
        """How many more tasks the manager could usefully take right now (REFERENCE §3.5)."""
        return int(self._call(self._state.hungry))

    def tasks_left_count(self) -> int:
        return self._outstanding

    def cancel_by_task_id(self, task_id: int) -> bool:
        if task_id not in self._tasks or self._tasks[task_id]._state >= C.VINE_TASK_RETRIEVED:
            return False
        self._post(TaskCancelled(time.time(), task_id))
        return True

    def cancel_by_task_tag(self, tag: str) -> bool:
        for tid, t in list(self._tasks.items()):
            if t.tag == tag and self.cancel_by_task_id(tid):
                return True
        return False

    def cancel_all_by_tag(self, tag: str) -> int:
        return sum(1 for tid, t in list(self._tasks.items()) if t.tag == tag and self.cancel_by_task_id(tid))

    def cancel_by_category(self, category: str) -> int:
        return sum(1 for tid, t in list(self._tasks.items()) if t.category == category and self.cancel_by_task_id(tid))

    def cancel_all(self) -> int:
        return sum(1 for tid in list(self._tasks) if self.cancel_by_task_id(tid))

    def task_state(self, task_id: int) -> int:
        t = self._tasks.get(task_id)
        return t._state if t is not None else C.VINE_TASK_DONE

    def log_txn_app(self, text: str) -> None:
        self._logs.transaction(f"APPLICATION {text}")

    def log_debug_app(self, text: str) -> None:
        self._logs.debug(text, flag="app")

    # -- I/O thread: events and instructions (core/manager/state_shell.py) -----------------------------------
    def _apply(self, *events: Event | TaskSpec) -> None:
        """Events into the state, its instructions carried out (the I/O thread's :class:`StateShell`);
        a submitted task's spec, as ``submit`` posts it, is taken as its TaskSubmitted."""
        self._shell.apply_posted(*events)

    # -- the members' methods (core/manager/libraries.py, categories.py, worker_controls.py, functional.py) --
    @property
    def library_logging_directory(self) -> str:
        return self._libraries.log_dir

    def create_library_from_functions(self, library_name: str, *function_list: Any, **options: Any) -> LibraryTask:
        """A LibraryTask serving ``function_list``; the options are :func:`core.manager.libraries.create_library`'s."""
        return create_library(self, library_name, *function_list, **options)

    def install_library(self, task: LibraryTask) -> None:
        """Make ``task``'s functions callable; instances start on workers as calls need them."""
        self._libraries.install(task, self)

    remove_library = _delegate("_libraries", ManagerLibraries.remove)
    check_library_exists = _delegate("_libraries", ManagerLibraries.exists)

    def _library_templates(self) -> dict[str, LibraryTask]:
        return self._libraries.templates

    def _library_known(self, name: str) -> bool:  # FunctionCall checks it at submit
        return name in self._libraries.templates

    def _library_failure_reason(self, name: str) -> str | None:  # a failed FunctionCall's output quotes it
        return self._libraries.failure_reason(name)

    def _environment_file(self, env: Any) -> File:
        return environment_file(self, env)

    set_category_resources_max = _delegate("_categories", CategorySettings.set_category_resources_max)
    set_category_resources_min = _delegate("_categories", CategorySettings.set_category_resources_min)
    set_resources_max = _delegate("_categories", CategorySettings.set_resources_max)
    set_resources_min = _delegate("_categories", CategorySettings.set_resources_min)
    set_category_first_allocation_guess = _delegate("_categories", CategorySettings.set_category_first_allocation_guess)
    set_category_mode = _delegate("_categories", CategorySettings.set_category_mode)
    category_resources = _delegate("_categories", CategorySettings.category_resources)
    set_draining_by_hostname = _delegate("_worker_controls", WorkerControls.set_draining_by_hostname)
    enable_disconnect_slow_workers = _delegate("_worker_controls", WorkerControls.enable_disconnect_slow_workers)
    enable_disconnect_slow_workers_category = _delegate("_worker_controls", WorkerControls.enable_disconnect_slow_workers_category)

    def status(self, request: str) -> Any:
        """``manager``, ``workers``, ``tasks`` or ``categories``: what ``vine_status`` shows, as a list of dicts."""
        return self._call(lambda: self._worker_links.status_local(request))

    def map(self, fn: Callable[[Any], Any], seq: Iterable[Any], chunksize: int = 1) -> list[Any]:
        """``[fn(x) for x in seq]``, one PythonTask per ``chunksize`` items (core/manager/functional.py)."""
        return functional.map_tasks(self, fn, seq, chunksize)

    def pair(self, fn: Callable[[tuple[Any, Any]], Any], seq1: Iterable[Any], seq2: Iterable[Any],
             chunksize: int = 1, env: Any = None) -> list[Any]:
        """``[fn((a, b)) for a, b in itertools.product(seq1, seq2)]``: ``fn`` gets one tuple."""
        return functional.pair_tasks(self, fn, seq1, seq2, chunksize, None if env is None else environment_file(self, env))

    def tree_reduce(self, fn: Callable[[list[Any]], Any], seq: Iterable[Any], chunksize: int = 2) -> Any:
        """Reduce ``seq`` by calling ``fn`` on lists of up to ``chunksize`` items, layer by layer."""
        return functional.tree_reduce_tasks(self, fn, seq, chunksize)

    def _finalize(self, task: Task) -> None:
        """Let the task take its outcome in (FunctionCall notes why it failed) before it reaches the user."""
        hook = getattr(task, "_finalize_done", None)
        if hook is not None:
            hook(self)

    def _collect_stats(self) -> dict[str, float]:
        """The stats (``m.stats``, the performance log, Prometheus), computed in the I/O thread."""
        return manager_stats(self._state, self._counters, self._links, len(self._done), self._logs, self._metrics, self._thread)


def __getattr__(name: str) -> Any:
    """``core.manager.Factory``: TaskVine's manager module holds the Factory too (ours is core/deploy/factory.py)."""
    if name == "Factory":
        from ..deploy.factory import Factory

        return Factory
    raise AttributeError(f"module 'core.manager' has no attribute {name!r}")
