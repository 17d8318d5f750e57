"""Events the scheduler takes and instructions it gives: small frozen dataclasses.

Events carry the time they happened (``now``, seconds) and an ``id`` (unique in the process, in the
order they were made), so a task's story (:meth:`core.state.scheduler.SchedulerState.story`) names
the event behind each of its transitions. Instructions name a worker and say what to do there. The
manager's I/O thread makes the events and carries out the instructions; nothing else changes the
state (settings too arrive as events: :class:`TuneChanged`, :class:`HostBlocked`, ...).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from .resources import Resources
from .spec import TaskSpec

# --- events ------------------------------------------------------------------------------------------

_event_ids = itertools.count(1)


def _next_event_id() -> int:
    return next(_event_ids)


@dataclass(frozen=True)
class Event:
    now: float
    id: int = field(default_factory=_next_event_id, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True)
class TaskSubmitted(Event):
    """``Manager.submit``: the task's frozen spec (``core.api.specs.task_spec`` builds it)."""

    spec: TaskSpec


@dataclass(frozen=True)
class TasksSubmitted(Event):
    """A burst of ``Manager.submit`` calls applied in one step: the tasks' frozen specs, in the order
    they were submitted (the manager groups the submits its I/O thread takes together; each spec is
    handled as a TaskSubmitted of its own would be)."""

    specs: tuple[TaskSpec, ...]


@dataclass(frozen=True)
class TaskCancelled(Event):
    task_id: int


@dataclass(frozen=True)
class WorkerJoined(Event):
    worker: str
    hostname: str
    addrport: str
    resources: Resources
    features: frozenset[str] = frozenset()
    cache: dict[str, int] = field(default_factory=dict)
    transfer_addr: str | None = None
    end_time: float = 0.0


@dataclass(frozen=True)
class WorkerLost(Event):
    worker: str
    reason: str = "UNKNOWN"


@dataclass(frozen=True)
class WorkerHeard(Event):
    worker: str


@dataclass(frozen=True)
class CacheUpdated(Event):
    worker: str
    name: str
    size: int


@dataclass(frozen=True)
class CacheInvalid(Event):
    worker: str
    name: str
    reason: str


@dataclass(frozen=True)
class TaskFinished(Event):
    """A worker reported a task's end (or the manager failed it before it reached the worker)."""

    worker: str
    task_id: int
    result: int
    exit_code: int = -1
    retry: bool = False  # the failure was the cluster's fault (e.g. a peer transfer broke): run it again
    unlinked: tuple[str, ...] = ()
    runtime: float = 0.0
    exceeded: tuple[str, ...] = ()  # resources the watchdog found over the allocation
    missing_input: bool = False  # forsaken because an input (a URL) could not be obtained there
    measured: Resources | None = None  # peaks the worker's monitor saw (None: not monitored)


@dataclass(frozen=True)
class FileUndeclared(Event):
    name: str
    forget: bool = True


@dataclass(frozen=True)
class Tick(Event):
    """Time passed: deadlines, keepalives and start times are looked at."""


@dataclass(frozen=True)
class TasksRetrieved(Event):
    """The user has these finished tasks back: the scheduler lets their records go."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True)
class TuneChanged(Event):
    """``Manager.tune``: a scheduler setting (``DEFAULT_TUNING``'s names, and any other the manager keeps)."""

    key: str
    value: float


@dataclass(frozen=True)
class PolicyChanged(Event):
    """``Manager.set_scheduler``: how a worker is chosen (a name from ``POLICY_NAMES``)."""

    policy: str


@dataclass(frozen=True)
class HostBlocked(Event):
    """No new task goes to a worker on ``host`` (``block_host``, or a slow worker's host)."""

    host: str


@dataclass(frozen=True)
class HostUnblocked(Event):
    host: str


@dataclass(frozen=True)
class HostDraining(Event):
    """``set_draining_by_hostname``: the workers on ``host`` take no new task (``drain``) or take them again."""

    host: str
    drain: bool = True


@dataclass(frozen=True)
class CategoryModeSet(Event):
    """``set_category_mode``: ``category`` None sets the default mode."""

    category: str | None
    mode: int


@dataclass(frozen=True)
class CategoryBoxSet(Event):
    """``set_category_resources_max/min``, ``set_category_first_allocation_guess`` (``box`` None: no guess)."""

    category: str
    which: Literal["maximum", "minimum", "guess"]
    box: Resources | None


# --- instructions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    pass


@dataclass(frozen=True)
class SendFile(Instruction):
    worker: str
    name: str


@dataclass(frozen=True)
class FetchUrl(Instruction):
    worker: str
    name: str


@dataclass(frozen=True)
class FetchPeer(Instruction):
    worker: str
    name: str
    source: str  # worker id holding a ready replica


@dataclass(frozen=True)
class RunMinitask(Instruction):
    worker: str
    name: str


@dataclass(frozen=True)
class Dispatch(Instruction):
    worker: str
    task_id: int
    allocation: Resources
    queued: bool = False  # prefetched: the worker starts it when its allocation fits (FIFO)


@dataclass(frozen=True)
class Kill(Instruction):
    worker: str
    task_id: int


@dataclass(frozen=True)
class Unlink(Instruction):
    worker: str
    name: str


@dataclass(frozen=True)
class Keepalive(Instruction):
    worker: str


@dataclass(frozen=True)
class RemoveWorker(Instruction):
    worker: str
    reason: str


@dataclass(frozen=True)
class ReturnTask(Instruction):
    """The task is finished: hand it to the user with this result."""

    task_id: int
    result: int
    exit_code: int


@dataclass(frozen=True)
class Warn(Instruction):
    message: str


@dataclass(frozen=True)
class EventFailed(Instruction):
    """Handling ``event`` raised (a bug, or a value no check caught); ``event`` None: a scheduling
    pass. The decisions made before it stand; the manager logs it and drops the worker that sent it."""

    event: Event | None
    error: BaseException
