"""Placement: whether a worker takes a task, what the task is allocated there, and which worker is best.

::

    ready task ──► for each worker: open_to? (draining, blocked host, features, time_min)
                                    │ yes
                                    ▼
                   eligible: a library slot (a call), or its allocation fits and every input has a source
                                    │
                                    ▼
                   score by the policy (files, disk, worst, time, rand); a worker that forsook it last
                   comes after every other ──► the best (worker, allocation), or None

These are the rules, asked and never changed by them: the scheduler (core/state/scheduler.py) places
the task it was given (``_place``), prefetching, call pipelining and the library book ask
:meth:`Placement.open_to` and :meth:`Placement.eligible` too, so a worker is judged one way everywhere.
A member of :class:`core.state.scheduler.SchedulerState`, lent its tables at construction.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .resources import AllocationPolicy, Resources, allocate_resources, fits

if TYPE_CHECKING:
    from .categories import CategoryBook
    from .records import FileRecord, TaskRecord, WorkerRecord
    from .spec import FileSpec, TaskSpec

NO_RESOURCES = Resources(0, 0, 0, 0)
MAX_KEPT_ALLOCATIONS = 4096  # distinct (request, worker total) pairs kept; more and they start over


class LibrarySlots(Protocol):
    """What placement asks of :class:`core.state.libraries.LibraryBook` (named here, not imported:
    the book asks placement in turn)."""

    depth: int

    def slot_for(self, name: str, w: WorkerRecord) -> Resources | None: ...
    def has_room(self, depth: int = 1) -> bool: ...


class Placement:
    """The placement rules over the state's workers and files; ``policy`` is the default scoring
    policy (``files``, ``disk``, ``worst``, ``time`` or ``rand``), a task's own ``scheduler`` wins."""

    def __init__(self, workers: dict[str, WorkerRecord], files: dict[str, FileRecord], tuning: dict[str, float],
                 blocked_hosts: set[str], forsaken_on: dict[int, str], libs: LibrarySlots, categories: CategoryBook,
                 source: Callable[[FileSpec, WorkerRecord], str | None], rng: random.Random, policy: str) -> None:
        self.workers = workers
        self.files = files
        self.tuning = tuning
        self.blocked_hosts = blocked_hosts
        self.forsaken_on = forsaken_on  # task id -> the worker that last gave it back
        self.libs = libs
        self.categories = categories
        self._source = source  # where an input would come from for a worker (core/state/transfers.py), None: nowhere yet
        self.rng = rng
        self.policy = policy
        # The allocation rule is a pure function of (request, worker total, policy): its boxes are
        # kept per (request, total) while the policy's tuning stays as it was (placement and
        # prefetching ask it for every task, on every worker they look at).
        self._policy_key: tuple[float, ...] = ()
        self._policy = AllocationPolicy()
        self._allocations: dict[tuple[Resources, Resources], Resources] = {}

    @property
    def allocation_policy(self) -> AllocationPolicy:
        t = self.tuning
        key = (t["proportional-resources"], t["proportional-whole-tasks"], t["disk-proportion-available-to-task"],
               t["exact-task-resources"])
        if key != self._policy_key:
            self._policy_key = key
            self._policy = AllocationPolicy(proportional=bool(key[0]), whole_tasks=bool(key[1]),
                                            disk_proportion=float(key[2]), exact_task_values=bool(key[3]))
            self._allocations.clear()
        return self._policy

    def allocation(self, rec: TaskRecord, w: WorkerRecord) -> Resources:
        """What ``rec`` would be given on ``w``: its category's box, or its request under the
        allocation rules (core/state/resources.py); after an exhaustion, the whole worker."""
        cat = self.categories.active(rec.spec.category) if rec.spec.library_required is None else None
        if cat is not None:
            return self.categories.allocation(cat, rec.spec.requested, rec.exhaustions > 0, w.total, self.allocation_policy,
                                              int(self.tuning["category-steady-n-tasks"]))
        req = rec.spec.requested
        if rec.spec.library_required is not None:
            return NO_RESOURCES  # a call runs inside its library's box
        if rec.exhaustions:
            # It outgrew its proportional share: give it the whole worker, keeping the user's own values.
            req = Resources(req.cores, w.total.memory, -1, req.gpus)  # memory = total -> the whole-worker rule
        policy = self.allocation_policy  # (first: a changed policy empties the kept boxes)
        key = (req, w.total)
        box = self._allocations.get(key)
        if box is None:
            if len(self._allocations) >= MAX_KEPT_ALLOCATIONS:
                self._allocations.clear()
            box = self._allocations[key] = allocate_resources(req, w.total, policy=policy)
        return box

    def open_to(self, spec: TaskSpec, w: WorkerRecord, now: float) -> bool:
        """Whether ``w`` takes ``spec`` at all, whatever its room: not draining, not on a blocked
        host, with the task's features, staying long enough (``time_min``). The one eligibility
        rule: placement, prefetching, pinned calls and calls queued in libraries all ask it."""
        if not self.takes_work(w):
            return False
        if spec.features and not w.features.issuperset(spec.features):
            return False
        return not spec.outlasts(w.end_time, now)

    def takes_work(self, w: WorkerRecord) -> bool:
        """Whether ``w`` takes any new task: not draining, not on a blocked host (the half of
        :meth:`open_to` that does not depend on the task; the performance log counts it too)."""
        return not w.draining and w.hostname not in self.blocked_hosts

    def eligible(self, rec: TaskRecord, w: WorkerRecord, now: float) -> Resources | None:
        """The allocation ``rec`` would start with on ``w`` now, or None if ``w`` cannot take it now."""
        t = rec.spec
        if not self.open_to(t, w, now):
            return None
        if t.library_required is not None:
            return self.libs.slot_for(t.library_required, w)  # a call needs a free slot, no resources
        alloc = self.allocation(rec, w)
        if not fits(alloc, w.total, w.committed, multiplier=self.tuning["resource-submit-multiplier"]):
            return None
        for f in t.environments:
            if self._source(f, w) is None:
                return None
        for m in t.inputs:
            if self._source(m.file, w) is None:
                return None
        return alloc

    def score(self, rec: TaskRecord, w: WorkerRecord, alloc: Resources) -> float:
        """How good ``w`` is for ``rec`` under its policy (higher is better)."""
        policy = rec.spec.scheduler or self.policy
        free_cores = max(w.total.cores, 0) - max(w.committed.cores, 0)
        if policy == "files":
            cached = 0
            for m in rec.spec.inputs:
                if m.file.cache_name in w.replicas:
                    frec = self.files.get(m.file.cache_name)
                    cached += max(frec.size if frec else 0, 0) + 1
            return cached * 1e6 + free_cores
        if policy == "disk":
            return max(w.total.disk, 0) - max(w.committed.disk, 0) - w.cache_bytes / 1e6
        if policy == "worst":
            return free_cores
        if policy == "time":
            return -(w.busy_time / w.completed) if w.completed else 0.0
        return self.rng.random()

    def choose_worker(self, rec: TaskRecord, now: float) -> tuple[WorkerRecord, Resources] | None:
        """The best worker that can start ``rec`` now, with its allocation there; None if none can."""
        best: tuple[float, WorkerRecord, Resources] | None = None
        for w in self.workers.values():
            alloc = self.eligible(rec, w, now)
            if alloc is None:
                continue
            score = self.score(rec, w, alloc)
            if self.forsaken_on and self.forsaken_on.get(rec.id) == w.id:
                score -= 1e18  # it gave this task back (out of descriptors, disk, ...): any other worker first
            if best is None or score > best[0]:
                best = (score, w, alloc)
        return None if best is None else (best[1], best[2])

    def could_ever_fit(self, rec: TaskRecord) -> bool:
        """Whether some connected worker, empty, could hold ``rec`` (else it waits for a larger one)."""
        for w in self.workers.values():
            alloc = self.allocation(rec, w)
            if fits(alloc, w.total, NO_RESOURCES) and w.features.issuperset(rec.spec.features):
                return True
        return False

    def has_room(self) -> bool:
        """Some worker has cores or gpus left (up to ``resource-submit-multiplier`` times its own),
        or some library instance a free slot: a scheduling pass may start something."""
        mult = self.tuning["resource-submit-multiplier"]  # cores and gpus may be overcommitted up to this
        for w in self.workers.values():
            if not w.draining and (
                w.committed.cores < math.ceil(w.total.cores * mult) or w.total.cores <= 0 or w.committed.gpus < math.ceil(w.total.gpus * mult)
            ):
                return True
        return self.libs.has_room(self.libs.depth)

    def unfit_message(self, rec: TaskRecord) -> str:
        """The warning for a task no connected worker can ever hold."""
        biggest = max(self.workers.values(), key=lambda w: (w.total.cores, w.total.memory))
        req = {k: v for k, v in rec.spec.requested.to_dict().items() if v >= 0}
        return (
            f"task {rec.id} requests {req or 'a whole worker'}{' with features ' + str(list(rec.spec.features)) if rec.spec.features else ''}, "
            f"but no connected worker can ever hold it (largest: {biggest.total.to_dict()}); it waits for a larger worker. "
            "Lower the request or start workers with more resources (vine_worker --cores/--memory/--disk)."
        )
