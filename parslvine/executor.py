"""``TaskVineExecutor``: a Parsl executor that runs app calls on ``core`` workers.

::

    DFK thread(s)                     user's process              manager process               workers
    ─────────────                     ──────────────              ───────────────               ───────
    submit(func, spec, *a, **kw) ──►  encode_code(func),          regular:    PythonTask  ───►  fork server child
                                      (args, kwargs), staging  ─► serverless: FunctionCall ──►  warm library (direct)
                                      plan, resources (batched)   core.Manager + Factory
    future ◄── set_result/exception ◄─ reader thread ◄─ batches ◄─ collector: Manager.wait ◄──  Parsl-serialized result

The core ``Manager`` (and the ``Factory``) run in a *manager process* of their own
(:mod:`parslvine.manager_process`), in both modes: a call costs the DFK about a millisecond of the
user's process's CPU, and the manager's own work per call (its I/O thread, the collector) would
add as much again under the same GIL. ``submit`` queues the call's serialized bytes, staging plan
and settings, which go over a socket in batches, and the results come back the same way;
``executor.manager`` is a :class:`~parslvine.manager_process.ManagerProcessInfo` (port, name,
logging directory, pid). A value comes back Parsl-serialized; an exception comes back in Parsl's
``RemoteExceptionWrapper`` and is set on the future with its original type and traceback. A call
that ends without a result (its worker task failed for a reason outside the app) fails with
:class:`~parslvine.errors.TaskVineTaskFailure`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal

from parsl.app.errors import RemoteExceptionWrapper
from parsl.data_provider.staging import Staging
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.monitoring.radios.base import RadioConfig
from parsl.monitoring.radios.filesystem import FilesystemRadio
from parsl.providers import LocalProvider
from parsl.providers.base import ExecutionProvider
from parsl.utils import RepresentationMixin

from .configs import TaskVineFactoryConfig, TaskVineManagerConfig, check_manager_config
from .errors import ParslVineConfigError, ParslVineError, TaskVineManagerFailure, TaskVineTaskFailure
from .launch import worker_command
from .manager_process import ManagerProcessClient
from .resources import TaskSettings, settings_from_spec
from .runner import decode_data, encode_code, encode_data
from .staging import plan_staging

logger = logging.getLogger(__name__)

LAUNCH_METHODS = ("factory", "provider", "manual")
EXEC_MODES = ("regular", "serverless")
SERIALIZE_BUFFER_THRESHOLD = 1024 * 1024


class TaskVineExecutor(BlockProviderExecutor, RepresentationMixin):
    """Run Parsl apps on core's workers (the constructor of Parsl's own ``TaskVineExecutor``).

    ``worker_launch_method``: ``"factory"`` (a core Factory from ``factory_config``), ``"provider"``
    (Parsl's ``provider``, default ``LocalProvider(init_blocks=1)``) or ``"manual"``.
    ``function_exec_mode``: ``"regular"`` (one task per call, forked from the worker's warm fork
    server) or ``"serverless"`` (calls run in one warm library per worker core); an app may choose
    per call with ``parsl_resource_specification={"exec_mode": ...}``.
    ``storage_access``: Parsl staging providers, as for any executor (None = Parsl's defaults).
    ``remote_monitoring_radio``: how the apps' monitoring messages reach Parsl (default: files).
    """

    def __init__(self,
                 label: str = "TaskVineExecutor",
                 worker_launch_method: Literal["provider", "factory", "manual"] = "factory",
                 function_exec_mode: Literal["regular", "serverless"] = "regular",
                 manager_config: TaskVineManagerConfig | None = None,
                 factory_config: TaskVineFactoryConfig | None = None,
                 provider: ExecutionProvider | None = None,
                 storage_access: list[Staging] | None = None,
                 remote_monitoring_radio: RadioConfig | None = None) -> None:
        if worker_launch_method not in LAUNCH_METHODS:
            raise ParslVineConfigError(f"worker_launch_method must be one of {LAUNCH_METHODS}, not {worker_launch_method!r}")
        if function_exec_mode not in EXEC_MODES:
            raise ParslVineConfigError(f"function_exec_mode must be one of {EXEC_MODES}, not {function_exec_mode!r}")
        if worker_launch_method in ("factory", "manual"):
            if provider is not None:
                raise ParslVineConfigError(f"a provider is only used with worker_launch_method='provider', not {worker_launch_method!r}")
        elif provider is None:
            provider = LocalProvider(init_blocks=1)
        manager_config = manager_config if manager_config is not None else TaskVineManagerConfig()
        factory_config = factory_config if factory_config is not None else TaskVineFactoryConfig()
        check_manager_config(manager_config)
        if not isinstance(factory_config, TaskVineFactoryConfig):
            raise ParslVineConfigError(f"factory_config must be a parslvine.TaskVineFactoryConfig, not {type(factory_config).__name__}")
        BlockProviderExecutor.__init__(self, provider=provider, block_error_handler=True)
        self.label = label
        self.worker_launch_method = worker_launch_method
        self.function_exec_mode = function_exec_mode
        self.manager_config = manager_config
        self.factory_config = factory_config
        self.storage_access = storage_access
        self.remote_monitoring_radio = remote_monitoring_radio if remote_monitoring_radio is not None else FilesystemRadio()

        self.manager: Any = None  # the manager process's ManagerProcessInfo, from start() on
        self._worker_command = ""
        self._lock = threading.Lock()  # guards _tasks (with the base class) and the counters
        self._next_id = 0
        self._outstanding = 0
        self._stopping = False
        self._started = False
        self._client: ManagerProcessClient | None = None  # the manager process, from start() on
        self._config: TaskVineManagerConfig = manager_config
        self._warned_keys: set[str] = set()

    # -- Parsl's executor interface ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the manager process (its manager and, with ``"factory"``, its workers)."""
        if self._started:
            raise ParslVineError(f"executor {self.label!r} is already started")
        super().start()
        # Our own copy: the user's config object is left as given (Parsl's executor mutates it).
        config = dataclasses.replace(self.manager_config)
        if config.vine_log_dir is None:
            config.vine_log_dir = os.path.join(os.path.dirname(os.path.abspath(self.run_dir)), self.label)
        self._config = config
        self._start_manager_process(config)
        self._started = True
        logger.info("%s: manager listening on port %s (%s mode, %s workers), in manager process %s", self.label,
                    self.manager.port, self.function_exec_mode, self.worker_launch_method, self.manager.pid)

    def _start_manager_process(self, config: TaskVineManagerConfig) -> None:
        # The manager's own work per call would otherwise share the user's GIL with the DFK (see
        # parslvine.manager_process). Workers it starts are its to stop: it tells them to exit at close.
        client = ManagerProcessClient(self.label, self._complete_remote, self._manager_process_failed)
        info = client.start({"config": config, "factory_config": self.factory_config, "launch": self.worker_launch_method})
        self._client = client
        self.manager = info
        if self.worker_launch_method == "provider":
            local = isinstance(self.provider, LocalProvider)
            self._worker_command = worker_command(info.port, config, self.factory_config, local)
            logger.info("%s: provider blocks run: %s", self.label, self._worker_command)

    def _get_launch_command(self, block_id: str) -> str:
        return f"PARSL_WORKER_BLOCK_ID={block_id} {self._worker_command}"

    @property
    def workers_per_node(self) -> int | float:
        return 1

    def outstanding(self) -> int:
        """App calls submitted and not yet completed (waiting or running)."""
        return self._outstanding

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any], *args: Any, **kwargs: Any) -> Future:
        """Send one app call to the workers; the future completes with its value or exception."""
        if self.bad_state_is_set:
            raise self.executor_exception
        if not self._started or self._stopping:
            raise ParslVineError(f"executor {self.label!r} is {'shut down' if self._stopping else 'not started'}; "
                                 "it accepts apps between start() and shutdown()")
        settings = settings_from_spec(resource_specification, self.function_exec_mode, self._warn_unknown)
        config = self._config
        plan = plan_staging(args, kwargs, config.shared_fs)
        function = encode_code(func, buffer_threshold=SERIALIZE_BUFFER_THRESHOLD)
        arguments = encode_data({"args": args, "kwargs": kwargs})
        if settings.category is None:
            settings.category = getattr(func, "__name__", None) if config.autocategory else None
            settings.category = settings.category or "parsl-default"
        # The manager process builds the task; it opens the files, so it gets absolute paths (its
        # working directory is where this process's was at start()).
        plan.inputs = [(os.path.abspath(local), remote) for local, remote in plan.inputs]
        plan.outputs = [(os.path.abspath(local), remote) for local, remote in plan.outputs]
        future: Future = Future()
        with self._lock:
            executor_id = self._next_id
            self._next_id += 1
            future.parsl_executor_task_id = executor_id  # type: ignore[attr-defined]
            self._tasks[executor_id] = future
            self._outstanding += 1
        try:
            self._client.send(("call", executor_id, settings.to_wire(), function, arguments, plan.to_wire()))  # type: ignore[union-attr]  # set by start()
        except BaseException:
            with self._lock:
                self._tasks.pop(executor_id, None)
                self._outstanding -= 1
            raise
        return future

    def shutdown(self) -> None:
        """Fail what is still pending; the manager process stops its factory and closes its manager."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            pending = list(self._tasks.values())
            self._tasks.clear()
            self._outstanding = 0
        for fut in pending:
            if not fut.done():
                fut.set_exception(TaskVineManagerFailure(f"executor {self.label!r} shut down before the app finished"))
        if self._client is not None:
            self._client.stop()
        super().shutdown()
        logger.info("%s: shut down", self.label)

    # -- internals ------------------------------------------------------------------------------------------
    def _warn_unknown(self, key: str) -> None:
        if key not in self._warned_keys:
            self._warned_keys.add(key)
            logger.warning("%s: resource specification key %r is not used by TaskVineExecutor and is ignored "
                           "(known: cores, memory, disk, gpus, priority, running_time_min, category, exec_mode)", self.label, key)

    def _take_future(self, executor_id: Any) -> Future | None:
        """The pending future of a finished call, no longer counted as outstanding (None if none is pending)."""
        with self._lock:
            future = self._tasks.pop(executor_id, None)
            if future is not None:
                self._outstanding -= 1
        return None if future is None or future.done() else future

    def _complete_remote(self, executor_id: int, ok: bool, payload: Any, exit_code: int | None) -> None:
        """A result from the manager process: the runner's bytes (``ok``), else the call's failure."""
        future = self._take_future(executor_id)
        if future is None:
            return
        if ok:
            _set_outcome(future, payload, executor_id)
        else:
            future.set_exception(payload)

    def _manager_process_failed(self, exc: Exception) -> None:
        """The manager process failed or died: every pending call fails, later submits raise."""
        with self._lock:
            if self._stopping:
                return
            self.set_bad_state_and_fail_all(exc)
            self._tasks.clear()
            self._outstanding = 0


def _set_outcome(future: Future, result: bytes, task_id: int) -> None:
    """Complete ``future`` from a call's Parsl-serialized result: its value, or the app's exception."""
    try:
        value = decode_data(result)
    except Exception as exc:  # noqa: BLE001 - an undecodable result is this call's failure
        failure = TaskVineTaskFailure(f"the result of task {task_id} cannot be deserialized: {type(exc).__name__}: {exc}")
        failure.__cause__ = exc
        future.set_exception(failure)
        return
    if isinstance(value, RemoteExceptionWrapper):
        try:
            exc_value = value.get_exception()
        except Exception as exc:  # noqa: BLE001 - e.g. a traceback that cannot be rebuilt
            exc_value = exc
        future.set_exception(exc_value)
    else:
        future.set_result(value)


__all__ = ["TaskSettings", "TaskVineExecutor"]
