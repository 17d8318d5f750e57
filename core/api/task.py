"""``Task``: a command line with declared inputs and outputs, and its outcome once it ran."""

from __future__ import annotations

import math
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .. import constants as C
from ..errors import TaskError
from ..state.resources import Resources
from ..wire.messages import InputRef, TaskDefinition
from .files import File, warn_if_missing

if TYPE_CHECKING:
    from .files import TaskHost



def _finite_number(setter: str, value: Any) -> float:
    """``value`` as a float, refusing NaN and infinity: one such number in a task's request would
    poison every comparison and rounding the scheduler makes with it."""
    if type(value) is int:
        return float(value)  # finite; a huge one raises OverflowError, as float() does
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{setter} takes a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{setter} takes a finite number, got {value!r}")
    return number

@dataclass
class Mount:
    """A file attached to a task under ``remote_name`` in its sandbox."""

    file: File
    remote_name: str
    flags: int = 0

    @property
    def watch(self) -> bool:
        return bool(self.flags & C.VINE_WATCH)

    @property
    def failure_only(self) -> bool:
        return bool(self.flags & C.VINE_FAILURE_ONLY)

    @property
    def success_only(self) -> bool:
        return bool(self.flags & C.VINE_SUCCESS_ONLY)


class _Limits:
    """``limits_exceeded``: which resources a task went over (None when nothing was exceeded)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return self._data.get(name, -1)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __repr__(self) -> str:
        return f"Limits({self._data})"


_SETTER_KEYWORDS = (
    "library_required library_provided scheduler tag category snapshot_file retries cores memory disk gpus "
    "priority time_end time_start time_max time_min monitor_output max_forsaken"
).split()


# The worker's own entries in every sandbox (core/worker/main.py, core/worker/sandbox.py): a task's file
# under one of these names would be overwritten by the worker, or would overwrite what it keeps there.
_WORKER_SANDBOX_NAMES = frozenset({".taskvine.tmp"})
_WORKER_SANDBOX_PREFIXES = (".vine-", "__vine_env_")


def _check_remote_name(remote_name: Any) -> str:
    """``remote_name`` if it names a place strictly inside the sandbox, else a ValueError saying why.

    Each ``/``-separated part must be a real name: not empty (a leading, doubled or trailing ``/``),
    not ``.`` or ``..`` (which would name the sandbox itself or climb out of it), without NUL; the
    first part must not be one of the worker's own sandbox entries.
    """
    if not isinstance(remote_name, str) or not remote_name:
        raise ValueError(f"remote_name must be a non-empty string, got {remote_name!r}")
    if remote_name.startswith("/"):
        raise ValueError(f"remote_name {remote_name!r} must be relative to the sandbox (no leading '/')")
    if "\0" in remote_name:
        raise ValueError(f"remote_name {remote_name!r} contains a NUL character")
    parts = remote_name.split("/")
    if ".." in parts:
        raise ValueError(f"remote_name {remote_name!r} must stay inside the sandbox (no '..')")
    if "." in parts:
        raise ValueError(f"remote_name {remote_name!r} has a '.' part: name the file itself, not the directory it is in")
    if "" in parts:
        raise ValueError(f"remote_name {remote_name!r} has an empty part (a doubled or trailing '/')")
    first = parts[0]
    if first in _WORKER_SANDBOX_NAMES or first.startswith(_WORKER_SANDBOX_PREFIXES):
        raise ValueError(
            f"remote_name {remote_name!r} collides with the worker's own sandbox files "
            f"({', '.join(sorted(_WORKER_SANDBOX_NAMES))} and names starting with {' or '.join(_WORKER_SANDBOX_PREFIXES)})"
        )
    return remote_name


def _check_mount_conflict(mounts: list[Mount] | tuple[()], file: File, remote_name: str, what: str) -> bool:
    """Whether ``(file, remote_name)`` is already among ``mounts``; a clash with another mount raises.

    Two different files under one name, or one under the other (``d`` and ``d/x``), cannot both be
    placed in a sandbox.
    """
    for m in mounts:
        if m.remote_name == remote_name:
            if m.file is file:
                return True
            raise ValueError(f"{what} {remote_name!r} is already taken by {m.file!r} in this task")
        shorter, longer = sorted((m.remote_name, remote_name), key=len)
        if longer.startswith(shorter + "/"):
            raise ValueError(f"{what} {remote_name!r} and {m.remote_name!r} overlap: one would be placed inside the other")
    return False


# Shared by every task until it has its own: Resources is frozen, and the empty limits are read-only
# (the manager replaces ``_limits`` when a worker reports, it never fills it in place).
_UNSET_RESOURCES = Resources()
_NO_LIMITS: Any = types.MappingProxyType({})
_NO_ENV: Any = types.MappingProxyType({})  # a task's environment until set_env_var gives it its own

# A task's requested resources: one read-only mapping per combination of values, shared by every
# task that asks for the same (a run's tasks come in a few shapes), so a queued task holds no dict
# of its own; a setter replaces the task's with the one for its new values. The table stops growing
# at _SHARED_REQUESTS_MAX shapes (then a task gets a mapping of its own, which is only bigger).
_REQUEST_FIELDS = ("cores", "memory", "disk", "gpus")
_REQUEST_INDEX = {name: i for i, name in enumerate(_REQUEST_FIELDS)}
_SHARED_REQUESTS_MAX = 4096
_shared_requests: dict[tuple[float, ...], Any] = {}
_request_values: dict[int, tuple[float, ...]] = {}  # id of a shared mapping (kept forever) -> its values
_request_after: dict[tuple[int, str, float], Any] = {}  # (id of a shared mapping, field, value) -> the mapping it becomes


def _shared_request(values: tuple[float, ...]) -> Any:
    """The read-only ``requested`` mapping for ``values`` (cores, memory, disk, gpus; -1: unset)."""
    request = _shared_requests.get(values)
    if request is None:
        request = types.MappingProxyType(dict(zip(_REQUEST_FIELDS, values)))
        if len(_shared_requests) < _SHARED_REQUESTS_MAX:
            _shared_requests[values] = request
            _request_values[id(request)] = values
    return request


_UNSET_REQUEST = _shared_request((-1.0, -1.0, -1.0, -1.0))


class Task:
    """A unit of work: a shell command run in its own sandbox on a worker.

    ``Task("grep needle data.txt", cores=1, inputs={f: "data.txt"})`` accepts TaskVine's keyword
    arguments, each calling the same-named setter.
    """

    # A million queued tasks must fit in memory, and a burst of submits must not be slowed by the
    # cyclic collector walking them: a queued task holds only what every task sets, in slots. Each
    # field left at its class default below costs a queued task nothing (no slot to store, none to
    # walk); a setter or the task's outcome stores its own value in the instance's ``__dict__``
    # (made when the first one is set, so a finished task carries its outcome there).
    __slots__ = ("_command", "inputs", "outputs", "requested", "_manager", "_id", "_state", "_submit_time", "__dict__",
                 "__weakref__")

    # Options few plain tasks set: read from these class defaults until a setter stores the task's own.
    env: dict[str, str | None] = _NO_ENV  # read-only until set_env_var makes the task its own dict
    features: list[str] | tuple[()] = ()
    environments: list[File] | tuple[()] = ()
    _tag: str | None = None
    _category = "default"
    _priority = 0.0
    max_retries = 0  # <=0: TaskVine's "unlimited" for exhaustion retries; bounded by the manager
    max_forsaken = -1
    time_start = 0  # epoch microseconds
    time_end = 0
    time_max = 0  # seconds
    time_min = 0
    scheduler: str | None = None
    library_required: str | None = None
    library_provided: str | None = None
    monitor_output: str | None = None
    snapshot_file: str | None = None
    _output_refused: str | None = None  # why an output was not written at its path (core/manager/output_targets.py)
    # A subclass's own preparation at submit, after submit_finalize (PythonTask serialises its
    # function there); None: nothing (a class attribute, so the manager's lookup needs no getattr miss).
    _prepare_submit: Callable[[TaskHost], None] | None = None
    # The outcome, until a worker reports one (the manager sets each on the finished task).
    _result = C.VINE_RESULT_UNKNOWN
    _exit_code = -1
    _stdout = b""
    _hostname: str | None = None
    _addrport: str | None = None
    _allocated = _UNSET_RESOURCES
    _measured = _UNSET_RESOURCES
    _limits: dict[str, Any] = _NO_LIMITS
    _done_time = 0.0
    _metrics: dict[str, float] | None = None  # made on first use (see ``metrics``)

    def __init__(self, command: str, **task_info: Any) -> None:
        if not isinstance(command, str):
            if isinstance(command, dict):
                raise TypeError("Task(command) takes a command string; pass options as keyword arguments")
            raise TypeError(f"Task command must be a str, got {type(command).__name__}")
        self._command = command
        # Empty tuples (shared, not tracked by the collector) until the first one is added. Read
        # them as sequences; add with add_input/add_output.
        self.inputs: list[Mount] | tuple[()] = ()
        self.outputs: list[Mount] | tuple[()] = ()
        # Read-only and shared (see _shared_request): change it with set_cores/memory/disk/gpus.
        self.requested: Mapping[str, float] = _UNSET_REQUEST
        self._manager: TaskHost | None = None
        self._id = 0
        self._state = C.VINE_TASK_INITIAL
        self._submit_time = 0.0
        if task_info:
            self._apply_keywords(task_info)

    def _apply_keywords(self, task_info: dict[str, Any]) -> None:
        """``Task(cmd, cores=1, inputs={...})``: each keyword through its setter."""
        for key, value in task_info.items():
            if key in _SETTER_KEYWORDS:
                getattr(self, f"set_{key}")(value)
            elif key == "features":
                for feat in [value] if isinstance(value, str) else value:
                    self.add_feature(feat)
            elif key in ("inputs", "outputs"):
                adder = self.add_input if key == "inputs" else self.add_output
                for f, spec in value.items():
                    if isinstance(spec, dict):
                        adder(f, **spec)
                    else:
                        adder(f, spec)
            elif key == "env":
                for k, v in value.items():
                    self.set_env_var(k, v)
            else:
                raise TypeError(f"Task() got an unknown keyword {key!r}")

    # -- setters -------------------------------------------------------------------------------------
    def _mutable(self) -> None:
        if self._state != C.VINE_TASK_INITIAL:
            raise TaskError(f"task {self._id} was already submitted; its definition can no longer change")

    def set_tag(self, tag: str | None) -> None:
        self._mutable()
        self._tag = None if tag is None else str(tag)

    def set_category(self, category: str) -> None:
        self._mutable()
        self._category = str(category)

    def _set_resource(self, name: str, value: float) -> None:
        if type(value) is int and value >= 0:  # most calls (set_cores(1)): no checks or message to make
            number = float(value)  # a huge one raises OverflowError, as float() does
        elif value is None:
            number = -1.0
        else:
            number = _finite_number(f"set_{name}", value)
            if number < 0:
                number = -1.0
        requested = self.requested
        step = (id(requested), name, number)
        after = _request_after.get(step)
        if after is None:
            shared = _request_values.get(id(requested))
            values = list(shared) if shared is not None else [float(requested.get(n, -1.0)) for n in _REQUEST_FIELDS]
            values[_REQUEST_INDEX[name]] = number
            after = _shared_request(tuple(values))
            if shared is not None and id(after) in _request_values and len(_request_after) < _SHARED_REQUESTS_MAX:
                _request_after[step] = after  # both shared, kept forever: the ids stay theirs
        self.requested = after

    def set_cores(self, cores: float) -> None:
        self._mutable()
        self._set_resource("cores", cores)

    def set_memory(self, memory: float) -> None:
        self._mutable()
        self._set_resource("memory", memory)

    def set_disk(self, disk: float) -> None:
        self._mutable()
        self._set_resource("disk", disk)

    def set_gpus(self, gpus: float) -> None:
        self._mutable()
        self._set_resource("gpus", gpus)

    def set_priority(self, priority: float) -> None:
        self._mutable()
        self._priority = _finite_number("set_priority", priority)

    def set_retries(self, retries: int) -> None:
        self._mutable()
        self.max_retries = int(_finite_number("set_retries", retries))

    def set_max_forsaken(self, n: int) -> None:
        self._mutable()
        self.max_forsaken = int(_finite_number("set_max_forsaken", n))

    def set_time_start(self, useconds: int) -> None:
        self._mutable()
        self.time_start = int(_finite_number("set_time_start", useconds))

    def set_time_end(self, useconds: int) -> None:
        self._mutable()
        self.time_end = int(_finite_number("set_time_end", useconds))

    def set_time_max(self, seconds: float) -> None:
        self._mutable()
        self.time_max = max(0, _finite_number("set_time_max", seconds))

    def set_time_min(self, seconds: float) -> None:
        self._mutable()
        self.time_min = max(0, _finite_number("set_time_min", seconds))

    def set_env_var(self, name: str, value: str | None = None) -> None:
        self._mutable()
        env = self.env
        if type(env) is not dict:  # the shared empty one: this task's own from now on
            env = self.env = dict(env)
        env[str(name)] = None if value is None else str(value)

    def add_feature(self, name: str) -> None:
        self._mutable()
        if isinstance(self.features, tuple):
            self.features = list(self.features)
        self.features.append(str(name))

    def set_scheduler(self, scheduler: str | int) -> None:
        self._mutable()
        from ..state.scheduler import policy_name

        self.scheduler = policy_name(scheduler)

    def set_library_required(self, name: str) -> None:
        self._mutable()
        self.library_required = name

    def set_library_provided(self, name: str) -> None:
        self._mutable()
        self.library_provided = name

    def set_snapshot_file(self, name: str) -> None:
        self._mutable()
        self.snapshot_file = name

    def set_monitor_output(self, name: str) -> None:
        self._mutable()
        self.monitor_output = name

    def add_environment(self, f: File) -> None:
        self._mutable()
        if isinstance(self.environments, tuple):
            self.environments = list(self.environments)
        self.environments.append(f)

    add_execution_context = add_environment
    add_poncho_package = add_environment
    add_starch_package = add_environment

    def add_input(self, file: File, remote_name: str, strict_input: bool = False, mount_symlink: bool = False) -> None:
        """Make ``file`` available in the sandbox as ``remote_name`` before the command runs."""
        self._mutable()
        if not isinstance(file, File):
            raise TypeError(f"add_input needs a File from Manager.declare_*, got {type(file).__name__}")
        _check_remote_name(remote_name)
        flags = (C.VINE_FIXED_LOCATION if strict_input else 0) | (C.VINE_MOUNT_SYMLINK if mount_symlink else 0)
        if _check_mount_conflict(self.inputs, file, remote_name, "input remote_name"):
            return  # the same file under the same name: already there
        warn_if_missing(file, remote_name)
        if isinstance(self.inputs, tuple):
            self.inputs = list(self.inputs)
        self.inputs.append(Mount(file, remote_name, flags))

    def add_output(self, file: File, remote_name: str, watch: bool = False, failure_only: bool | None = None, success_only: bool | None = None) -> None:
        """Collect ``remote_name`` from the sandbox into ``file`` after the command ends."""
        self._mutable()
        if not isinstance(file, File):
            raise TypeError(f"add_output needs a File from Manager.declare_*, got {type(file).__name__}")
        _check_remote_name(remote_name)
        if file.kind in ("url", "minitask"):
            raise ValueError(f"a {file.kind} file cannot be a task output")
        if failure_only and success_only:
            raise ValueError("an output cannot be both failure_only and success_only")
        flags = (C.VINE_WATCH if watch else 0) | (C.VINE_FAILURE_ONLY if failure_only else 0) | (C.VINE_SUCCESS_ONLY if success_only else 0)
        if _check_mount_conflict(self.outputs, file, remote_name, "output remote_name"):
            raise ValueError(f"output {file!r} is already collected from {remote_name!r} in this task")
        if isinstance(self.outputs, tuple):
            self.outputs = list(self.outputs)
        self.outputs.append(Mount(file, remote_name, flags))

    # -- properties --------------------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self._id

    @property
    def tag(self) -> str | None:
        return self._tag

    @property
    def category(self) -> str:
        return self._category

    @property
    def priority(self) -> float:
        return self._priority

    @property
    def command(self) -> str:
        return self._command

    @property
    def state(self) -> str:
        return C.TASK_STATE_NAMES[self._state]

    @property
    def std_output(self) -> str:
        return self._stdout.decode("utf-8", errors="replace")

    @property
    def output(self) -> Any:
        return self.std_output

    @property
    def exit_code(self) -> int:
        return self._exit_code

    @property
    def result(self) -> str:
        return C.result_string(self._result)

    @property
    def result_code(self) -> int:
        return self._result

    @property
    def hostname(self) -> str | None:
        return self._hostname

    @property
    def addrport(self) -> str | None:
        return self._addrport

    @property
    def resources_requested(self) -> Resources:
        return Resources.from_dict(self.requested)

    @property
    def resources_allocated(self) -> Resources:
        return self._allocated

    @property
    def resources_measured(self) -> Resources:
        return self._measured

    @property
    def limits_exceeded(self) -> _Limits | None:
        return _Limits(self._limits) if self._limits else None

    def completed(self) -> bool:
        return self._result == C.VINE_RESULT_SUCCESS

    def successful(self) -> bool:
        return self.completed() and self._exit_code == 0

    @property
    def metrics(self) -> dict[str, float]:
        """TaskVine's per-task times (µs): ``time_when_submitted``, ``time_when_done``,
        ``time_workers_execute_last`` / ``_all``, ... A queued task holds no dict until it is read or
        filled: its submit time is kept as a number and appears here once the dict is made."""
        metrics = self._metrics
        if metrics is None:
            metrics = self._metrics = {}
            if self._submit_time:
                metrics["time_when_submitted"] = self._submit_time * 1e6
        return metrics

    @metrics.setter
    def metrics(self, value: dict[str, float]) -> None:
        self._metrics = value

    def get_metric(self, name: str) -> float:
        return self.metrics.get(name, 0)

    def __repr__(self) -> str:
        return f"<Task {self._id} {self.state} {self._command[:40]!r}>"

    # -- hooks (TaskVine's) -------------------------------------------------------------------------------
    @property
    def manager(self) -> TaskHost | None:
        """The Manager this task was submitted to (set at ``submit``, before ``submit_finalize``)."""
        return self._manager

    @manager.setter
    def manager(self, manager: TaskHost) -> None:
        if self._state != C.VINE_TASK_INITIAL and manager is not self._manager:
            raise TaskError(f"task {self._id} was already submitted to another manager")
        self._manager = manager

    def submit_finalize(self) -> None:
        """Called by ``Manager.submit`` just before the task is queued, with ``self.manager`` set.

        Override it to finish the definition with the manager at hand, such as declaring and
        adding inputs (``add_input`` still works here). Raising refuses the submission: the task
        stays unsubmitted. Subclasses should call ``super().submit_finalize()``.
        """

    # Nothing to release: a Task holds no handle outside Python. ``__del__`` exists so that subclasses
    # written for TaskVine, whose ``__del__`` ends with ``super().__del__()``, work unchanged. It is a
    # C no-op (``object.__init__`` called with no arguments), not a Python method: CPython runs
    # pending signal handlers at the start of every Python frame, and a KeyboardInterrupt raised in
    # a finalizer is printed and dropped, so an empty Python ``__del__`` swallowed Ctrl-C whenever
    # it arrived while finished tasks were being freed (in DaskVine's get, all the time).
    __del__ = object.__init__

    # -- what the worker receives ---------------------------------------------------------------------
    def _wire_command(self) -> str:
        return self._command

    def _task_spec(self, *, in_place: str | None = None, **decided: Any) -> TaskDefinition:
        """This task as a worker runs it; ``decided``: the TaskDefinition fields the manager fills in
        when it sends the task (id, resources, outputs, ...: core/manager/links.py). Subclasses
        add theirs (``python``, ``function_call``; ``in_place``: the remote name of the input the
        worker reads straight from its cache, not linked into the sandbox) and call this."""
        return TaskDefinition(
            command=self._wire_command(),
            env=self.env if type(self.env) is dict else dict(self.env),
            inputs=tuple([InputRef(m.file.cache_name, m.remote_name, m.file.level, m.file.kind, m.file.mode,
                                   bool(m.flags & C.VINE_MOUNT_SYMLINK), m.remote_name == in_place) for m in self.inputs]),
            environments=tuple([f.cache_name for f in self.environments]),
            time_max=self.time_max,
            time_end=self.time_end,
            **decided,
        )

    def _now_us(self) -> int:
        return int(time.time() * 1e6)
