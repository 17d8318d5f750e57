"""Events the scheduler takes and instructions it gives: small frozen dataclasses.

Events carry the time they happened (``now``, seconds); instructions name a worker and say what to
do there. The manager's I/O thread makes the events and carries out the instructions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .resources import Resources
from .spec import TaskSpec

# --- events ------------------------------------------------------------------------------------------

_event_ids = itertools.count(1)


@dataclass(frozen=True)
class Event:
    now: float


@dataclass(frozen=True)
class TaskSubmitted(Event):
    """``Manager.submit``: the task's frozen spec (``core.api.specs.task_spec`` builds it)."""

    spec: TaskSpec


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
    pass


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
