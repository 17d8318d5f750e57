"""Prefetching: short tasks sent ahead to a worker with no room yet, and the rule for starting them.

A worker may be sent a short task before it has room for it (``Dispatch(queued=True)``); it keeps
such tasks in a first-in, first-out queue. The worker (core/worker/main.py) and the manager's
scheduler (which mirrors every worker's queue to know what is committed where) must apply the very
same rule, or they disagree about what runs: so both call :func:`waits_in_queue` and
:func:`start_in_order`. :class:`PrefetchPlanner` (mixed into
:class:`core.state.scheduler.SchedulerState`) decides which tasks are sent ahead, and where.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .resources import Resources, fits

if TYPE_CHECKING:
    from .placement import Placement
    from .records import TaskRecord, WorkerRecord

T = TypeVar("T")

SHORT_TASK = 1.0  # s: categories whose tasks take less than this on average may be prefetched
PREFETCH_SAMPLES = 5


def waits_in_queue(queue: list[T], fits_now: bool) -> bool:
    """Whether a task sent ahead joins the queue instead of starting: something is queued before
    it (order is kept), or its allocation does not fit now."""
    return bool(queue) or not fits_now


def start_in_order(queue: list[T], fits: Callable[[T], bool], start: Callable[[T], None]) -> int:
    """Start the queue's head while it fits (``start`` commits its resources before the next look);
    returns how many started."""
    started = 0
    while queue and fits(queue[0]):
        start(queue.pop(0))
        started += 1
    return started


class PrefetchPlanner:
    """Which short tasks are queued on which worker, and the scheduler's mirror of each queue."""

    if TYPE_CHECKING:  # state owned by SchedulerState, declared for the type checker
        tasks: dict[int, TaskRecord]
        workers: dict[str, WorkerRecord]
        tuning: dict[str, float]
        category_time: dict[str, tuple[int, float]]
        placement: Placement

    def _promote(self, w: WorkerRecord) -> None:
        """Mirror the worker: it starts its prefetched tasks by the same rule (core/state/prefetch.py)."""
        def start(tid: int) -> None:
            head = self.tasks[tid]
            head.queued = False
            w.committed = w.committed + head.allocation

        start_in_order(w.queue, lambda tid: fits(self.tasks[tid].allocation, w.total, w.committed), start)

    def _prefetch_limit(self, w: WorkerRecord) -> int:
        per_core = self.tuning["worker-prefetch"]
        return 0 if per_core <= 0 else max(1, math.ceil(max(w.total.cores, 1) * per_core))

    def _prefetch_worker(self, rec: TaskRecord, now: float) -> tuple[WorkerRecord, Resources] | None:
        """A worker to queue ``rec`` on when none can start it now: only for categories measured
        short (queued long tasks could wait behind each other while another worker idles), only
        with every input already cached there, at most ``worker-prefetch`` per core."""
        t = rec.spec
        if self.tuning["worker-prefetch"] <= 0 or t.library_required is not None or t.environments or t.time_start:
            return None
        n, mean = self.category_time.get(t.category, (0, 0.0))
        if n < PREFETCH_SAMPLES or mean > SHORT_TASK:
            return None
        best: tuple[int, WorkerRecord, Resources] | None = None
        for w in self.workers.values():
            if len(w.queue) >= self._prefetch_limit(w):
                continue
            if not self.placement.open_to(rec.spec, w, now):
                continue
            if any(w.replicas.get(m.file.cache_name) != "ready" for m in t.inputs):
                continue
            alloc = self.placement.allocation(rec, w)
            if not fits(alloc, w.total, Resources(0, 0, 0, 0)):
                continue
            if best is None or len(w.queue) < best[0]:
                best = (len(w.queue), w, alloc)
        return None if best is None else (best[1], best[2])


    def _prefetch_room(self) -> bool:
        """Some worker can queue more, and some category's tasks are short enough to be worth it."""
        if not any(n >= PREFETCH_SAMPLES and m <= SHORT_TASK for n, m in self.category_time.values()):
            return False
        return any(len(w.queue) < self._prefetch_limit(w) for w in self.workers.values())
