"""Prefetching: short tasks sent ahead to a worker with no room yet, and the rule for starting them.

A worker may be sent a short task before it has room for it (``Dispatch(queued=True)``); it keeps
such tasks in a first-in, first-out queue. The worker (core/worker/main.py) and the manager's
scheduler (which mirrors every worker's queue to know what is committed where) must apply the very
same rule, or they disagree about what runs: so both call :func:`waits_in_queue`,
:func:`start_in_order` and :func:`inputs_being_made`. A queued task starts when its allocation fits
and no task started on that worker is still making one of its inputs (a pipelined task sent ahead to
the worker making its temp inputs: core/state/pipelining.py, core/worker/pipelined.py).
:class:`PrefetchPlanner` (mixed into :class:`core.state.scheduler.SchedulerState`) decides which
tasks are sent ahead, and where.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING, TypeVar

from .placement import NO_RESOURCES
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


def inputs_being_made(inputs: Iterable[str], making: Container[str]) -> bool:
    """Whether a queued task with these input cache names must wait: one of them is a temp that a
    task started on its worker (not a function call) is still making. The second half of the start
    rule; the maker stops counting when the worker releases it, after its outputs were collected."""
    return any(name in making for name in inputs)


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
        if not w.queue:
            return
        making: set[str] | None = None  # temps being made on w, worked out only for a head with inputs

        def may_start(tid: int) -> bool:
            nonlocal making
            head = self.tasks[tid]
            if not fits(head.allocation, w.total, w.committed):
                return False
            if not head.spec.inputs:
                return True
            if making is None:
                making = self._temps_made_on(w)
            return not inputs_being_made((m.file.cache_name for m in head.spec.inputs), making)

        def start(tid: int) -> None:
            nonlocal making
            head = self.tasks[tid]
            head.queued = False
            w.committed = w.committed + head.allocation
            making = None  # the head just started may be making the next one's input

        start_in_order(w.queue, may_start, start)

    def _temps_made_on(self, w: WorkerRecord) -> set[str]:
        """The temps being made by the tasks started on ``w`` that are not function calls: the
        makers the worker counts (core/worker/pipelined.py), as this state last heard of them."""
        making: set[str] = set()
        for tid in w.tasks:
            rec = self.tasks[tid]
            if not rec.queued and rec.spec.library_required is None:
                making.update(m.file.cache_name for m in rec.spec.outputs if m.file.kind == "temp")
        return making

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
            if not fits(alloc, w.total, NO_RESOURCES):
                continue
            if best is None or len(w.queue) < best[0]:
                best = (len(w.queue), w, alloc)
        return None if best is None else (best[1], best[2])


    def _prefetch_room(self) -> bool:
        """Some worker can queue more, and some category's tasks are short enough to be worth it."""
        if not any(n >= PREFETCH_SAMPLES and m <= SHORT_TASK for n, m in self.category_time.values()):
            return False
        return any(len(w.queue) < self._prefetch_limit(w) for w in self.workers.values())
