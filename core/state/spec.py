"""What the scheduler knows of a task and its files: frozen specs made once, at ``submit``.

The manager turns a user's :class:`~core.api.task.Task` into a :class:`TaskSpec` when it is
submitted (``core.api.specs.task_spec``); from then on the scheduler reads only the spec, never the
user's object, so nothing the user does to a task later can reach a decision half-way, and lineage
recovery re-runs the producer's spec instead of copying the user's task.

Units inside the state are one system: times in seconds (``time_start``/``time_end`` are epoch
seconds, though the user API takes microseconds), memory and disk in MB.

Memory matters (a million queued tasks is a workload): every spec has ``__slots__``, holds tuples,
not lists or dicts, and the parts many tasks share (a file's spec, the unset resource box, an empty
tuple) are shared, not copied.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import Any, Literal, NamedTuple

from .resources import Resources

FileKind = Literal["file", "url", "temp", "buffer", "minitask"]
TaskKind = Literal["command", "python", "function_call", "library"]

FILE_KINDS: frozenset[str] = frozenset(("file", "url", "temp", "buffer", "minitask"))
TASK_KINDS: frozenset[str] = frozenset(("command", "python", "function_call", "library"))

UNSET = Resources()  # a task that asked for nothing (shared by every such spec; Resources is frozen)

_tuple_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class MinitaskSpec:
    """The task a worker runs to make a mini-task file: its command, environment and inputs."""

    command: str
    env: tuple[tuple[str, str | None], ...]
    output: str  # the path, in the mini-task's sandbox, of the file it makes
    inputs: tuple[MountSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class FileSpec:
    """A file as the scheduler sees it: its cache name (identity), kind, where it comes from and how
    long workers keep it. ``source`` is the local path, the URL, ``"temp"`` or ``"buffer"``."""

    cache_name: str
    kind: FileKind
    source: str
    level: int
    peer_transfer: bool = True
    mode: int | None = None
    minitask: MinitaskSpec | None = None

    def __post_init__(self) -> None:
        if self.kind not in FILE_KINDS:
            raise ValueError(f"file {self.cache_name!r} has kind {self.kind!r}; use one of {', '.join(sorted(FILE_KINDS))}")
        if self.kind == "minitask" and self.minitask is None:
            raise ValueError(f"mini-task file {self.cache_name!r} needs the spec of the task that makes it")


@dataclass(frozen=True, slots=True)
class MountSpec:
    """A file attached to a task under ``remote_name`` in its sandbox, with TaskVine's mount flags."""

    file: FileSpec
    remote_name: str
    flags: int = 0


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The parts of a task's spec most tasks leave at their defaults (shared: :data:`NO_OPTIONS`).

    ``time_start``/``time_end`` are epoch seconds (0: none), ``time_min``/``time_max`` seconds.
    ``max_retries`` bounds the retries after resource exhaustion (<= 0: the manager's own bound),
    ``max_forsaken`` the times workers may give it back (-1: no limit). ``scheduler`` is the task's
    own placement policy (None: the manager's). ``exec_mode`` and ``function_slots`` are a library's.
    """

    max_retries: int = 0
    max_forsaken: int = -1
    time_start: float = 0.0
    time_end: float = 0.0
    time_min: float = 0.0
    time_max: float = 0.0
    scheduler: str | None = None
    exec_mode: str = "fork"
    function_slots: int = 0


NO_OPTIONS = TaskOptions()


class _TaskSpecFields(NamedTuple):
    id: int
    kind: TaskKind = "command"
    command: str = ""
    inputs: tuple[MountSpec, ...] = ()
    outputs: tuple[MountSpec, ...] = ()
    environments: tuple[FileSpec, ...] = ()
    requested: Resources = UNSET
    features: tuple[str, ...] = ()
    category: str = "default"
    priority: float = 0.0
    library_required: str | None = None
    library_provided: str | None = None
    options: TaskOptions = NO_OPTIONS


class TaskSpec(_TaskSpecFields):
    """All the scheduler ever reads of a task. Made once at submit; never changed afterwards.

    ``requested`` holds the task's own values (-1: unset). The rarely set parts are in ``options``
    (:class:`TaskOptions`), also readable as attributes of the spec (``spec.time_end``, ...).

    An immutable tuple with named fields rather than a frozen dataclass: a burst of submits makes
    one per task, and a tuple is built in one step (a frozen dataclass sets each of its 13 fields
    through ``object.__setattr__``, most of what freezing a plain task cost). ``spec._replace(...)``
    makes a changed copy (its ``kind`` is the checked one it had, or give a valid one); assigning a
    field raises ``dataclasses.FrozenInstanceError``.
    """

    __slots__ = ()

    def __new__(cls, id: int, kind: TaskKind = "command", command: str = "", inputs: tuple[MountSpec, ...] = (),
                outputs: tuple[MountSpec, ...] = (), environments: tuple[FileSpec, ...] = (), requested: Resources = UNSET,
                features: tuple[str, ...] = (), category: str = "default", priority: float = 0.0,
                library_required: str | None = None, library_provided: str | None = None,
                options: TaskOptions = NO_OPTIONS) -> TaskSpec:
        if kind not in TASK_KINDS:
            raise ValueError(f"task {id} has kind {kind!r}; use one of {', '.join(sorted(TASK_KINDS))}")
        return _tuple_new(cls, (id, kind, command, inputs, outputs, environments, requested, features, category,
                                priority, library_required, library_provided, options))

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a task's spec never changes")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: a task's spec never changes")

    @property
    def is_call(self) -> bool:
        """A function call: it runs in a library instance's slot and holds no resources of its own."""
        return self.library_required is not None

    # -- the options, read through the spec -----------------------------------------------------------
    @property
    def max_retries(self) -> int:
        return self.options.max_retries

    @property
    def max_forsaken(self) -> int:
        return self.options.max_forsaken

    @property
    def time_start(self) -> float:
        return self.options.time_start

    @property
    def time_end(self) -> float:
        return self.options.time_end

    @property
    def time_min(self) -> float:
        return self.options.time_min

    @property
    def time_max(self) -> float:
        return self.options.time_max

    @property
    def scheduler(self) -> str | None:
        return self.options.scheduler

    @property
    def exec_mode(self) -> str:
        return self.options.exec_mode

    @property
    def function_slots(self) -> int:
        return self.options.function_slots

    # -- the task's timers, in one place (seconds; the worker alone enforces time_max) --------------
    def past_end(self, now: float) -> bool:
        """Its end time (``set_time_end``) has passed: it may no longer start."""
        end = self.options.time_end
        return bool(end) and now > end

    def before_start(self, now: float) -> bool:
        """Its start time (``set_time_start``) has not come yet."""
        start = self.options.time_start
        return bool(start) and now < start

    def outlasts(self, worker_end: float, now: float) -> bool:
        """A worker leaving at ``worker_end`` (0: no end) has less than its ``time_min`` left."""
        need = self.options.time_min
        return bool(need and worker_end) and worker_end - now < need


def task_spec_unchecked(values: tuple[Any, ...]) -> TaskSpec:
    """A :class:`TaskSpec` from its 13 field values in order, without the check of ``kind``: for
    ``core.api.specs.task_spec``, whose kind comes from ``task_kind`` and is always one of
    :data:`TASK_KINDS` (a submit burst makes one spec per task; this is one C call)."""
    return _tuple_new(TaskSpec, values)
