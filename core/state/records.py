"""What the scheduler knows about each worker, task and file.

A task's life, as :data:`TaskState` and the transitions :data:`TRANSITIONS` allows (anything else
is a bug, and :meth:`core.state.scheduler.SchedulerState.validate` says so)::

    waiting --(temp inputs exist)--> ready --(worker chosen)--> dispatched --(complete)--> done
       ^                               ^  |                         |
       |                               |  +--(cancel, out of time)-+----------------------> done
       +--------(temp input lost)------+--------(worker lost, forsaken: attempt counted)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .resources import Resources
from .spec import UNSET, FileSpec, TaskSpec

TaskState = Literal["waiting", "ready", "dispatched", "done"]
RecordState = Literal["new", "waiting", "ready", "dispatched", "done"]  # "new": made, not yet decided on
ReplicaState = Literal["creating", "ready"]

TASK_STATES: tuple[TaskState, ...] = ("waiting", "ready", "dispatched", "done")

# (start, finish) pairs a task may take; "new" is a record just made (submitted, or a recovery copy).
TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    ("new", "waiting"), ("new", "ready"), ("new", "done"),
    ("waiting", "waiting"), ("waiting", "ready"), ("waiting", "done"),
    ("ready", "waiting"), ("ready", "ready"), ("ready", "dispatched"), ("ready", "done"),
    ("dispatched", "waiting"), ("dispatched", "ready"), ("dispatched", "done"),
})

# --- records -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class WorkerRecord:
    id: str
    hostname: str
    addrport: str
    total: Resources
    features: frozenset[str]
    transfer_addr: str | None
    end_time: float
    last_heard: float
    committed: Resources = field(default_factory=Resources.zero)
    tasks: set[int] = field(default_factory=set)
    replicas: dict[str, ReplicaState] = field(default_factory=dict)
    cache_bytes: int = 0
    check_sent: float | None = None
    completed: int = 0
    busy_time: float = 0.0
    draining: bool = False
    outgoing: int = 0  # peer transfers this worker is serving now
    queue: list[int] = field(default_factory=list)  # prefetched task ids, started in this order
    xfer_failed_at: float = -1e18  # when a copy from this worker last broke (skipped as a source for a while)
    xfer_good: int = 0
    xfer_bad: int = 0

    def has(self, name: str) -> bool:
        return name in self.replicas


@dataclass(slots=True)
class TaskRecord:
    """One task in the scheduler. ``id`` is the record's own id: the user's task id, or for a hidden
    recovery copy an id above every user task (``spec.id`` then names the task it re-runs)."""

    id: int
    spec: TaskSpec
    seq: int
    state: RecordState = "new"
    worker: str | None = None
    allocation: Resources = UNSET
    attempts: int = 0  # dispatches so far
    forsaken: int = 0
    heap_key: tuple[int, float, int, int] | None = None  # its entry in the ready heap (see SchedulerState.ready)
    warned_unfit: bool = False
    recovery: bool = False
    exhaustions: int = 0  # times killed for exceeding its allocation; the retry gets a whole worker
    queued: bool = False  # prefetched to its worker, waiting there for room (not yet committed)
    pinned: str | None = None  # a call sent ahead to the worker making its missing temp inputs


@dataclass(slots=True)
class FileRecord:
    spec: FileSpec
    replicas: dict[str, ReplicaState] = field(default_factory=dict)  # worker id -> state
    producer: int | None = None  # task id that writes it (lineage for temps)
    size: int = -1
