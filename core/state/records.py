"""What the scheduler knows about each worker, task and file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .resources import Resources

if TYPE_CHECKING:
    from ..api.files import File
    from ..api.task import Task

TaskState = Literal["waiting", "ready", "dispatched", "done"]
ReplicaState = Literal["creating", "ready"]

# --- records -----------------------------------------------------------------------------------------


@dataclass
class WorkerRecord:
    id: str
    hostname: str
    addrport: str
    total: Resources
    features: frozenset[str]
    transfer_addr: str | None
    end_time: float
    last_heard: float
    committed: Resources = field(default_factory=lambda: Resources(0, 0, 0, 0))
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


@dataclass
class TaskRecord:
    task: Task
    seq: int
    state: TaskState = "ready"
    worker: str | None = None
    allocation: Resources = field(default_factory=Resources)
    attempts: int = 0  # dispatches so far
    forsaken: int = 0
    heap_key: tuple[float, float, int] | None = None
    warned_unfit: bool = False
    recovery: bool = False
    exhaustions: int = 0  # times killed for exceeding its allocation; the retry gets a whole worker
    queued: bool = False  # prefetched to its worker, waiting there for room (not yet committed)
    pinned: str | None = None  # a call sent ahead to the worker making its missing temp inputs


@dataclass
class FileRecord:
    file: File
    replicas: dict[str, ReplicaState] = field(default_factory=dict)  # worker id -> state
    producer: int | None = None  # task id that writes it (lineage for temps)
    size: int = -1
