"""The scheduler's invariants, checked by ``validate()`` at the end of every unit test step.

Allocated resources never exceed a worker's capacity and equal what its tasks and library
instances hold; every replica sits on a connected worker; every dispatched task is on a connected
worker; the task counts and waiting requests the scheduler keeps match its tasks; no handler raised;
no task took a transition the table does not allow (core/state/story.py).
Mixed into :class:`core.state.scheduler.SchedulerState`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .events import Event
    from .libraries import LibraryBook
    from .records import FileRecord, TaskRecord, WorkerRecord
    from .story import TaskStory


class Invariants:
    """``validate()``: raises AssertionError naming the first broken invariant."""

    if TYPE_CHECKING:  # state owned by SchedulerState, declared for the type checker
        tasks: dict[int, TaskRecord]
        state_counts: dict[str, int]
        waiting_shapes: dict[Any, int]
        recovery_shapes: dict[Any, int]
        workers: dict[str, WorkerRecord]
        files: dict[str, FileRecord]
        tuning: dict[str, float]
        libs: LibraryBook
        failed_events: deque[tuple[Event | None, Exception]]
        _story: TaskStory

    def validate(self) -> None:
        """Check invariants; raises AssertionError naming the broken one."""
        assert not self.failed_events, f"handlers raised: {self.failed_events!r}"
        invalid = list(self._story.invalid)
        assert not invalid, f"transitions the table does not allow: {invalid}"
        mult = self.tuning["resource-submit-multiplier"]
        for w in self.workers.values():
            committed = self.libs.committed_on(w.id)
            for tid in w.tasks:
                rec = self.tasks[tid]
                assert rec.state == "dispatched" and rec.worker == w.id, f"task {tid} on {w.id} is {rec.state}"
                assert rec.queued == (tid in w.queue), f"task {tid} queued={rec.queued} but queue is {w.queue}"
                if not rec.queued:
                    committed = committed + rec.allocation
            for f in ("cores", "memory", "disk", "gpus"):
                got, want = getattr(w.committed, f), getattr(committed, f)
                assert math.isclose(max(got, 0), max(want, 0), abs_tol=1e-6), f"{w.id} committed {f} {got} != {want}"
                cap = getattr(w.total, f)
                if cap > 0:
                    limit = cap if f == "disk" else math.ceil(cap * mult)
                    assert want <= limit + 1e-6, f"{w.id} over-committed {f}: {want} > {limit}"
        for name, frec in self.files.items():
            for wid in frec.replicas:
                assert wid in self.workers, f"replica of {name} on disconnected worker {wid}"
        counts = {"waiting": 0, "ready": 0, "dispatched": 0, "done": 0}
        shapes: dict[Any, int] = {}
        recovery: dict[Any, int] = {}
        for rec in self.tasks.values():
            if rec.state != "new":
                counts[rec.state] += 1
            if rec.state == "ready" or rec.state == "waiting":
                shapes[rec.spec.requested] = shapes.get(rec.spec.requested, 0) + 1
                if rec.recovery:
                    recovery[rec.spec.requested] = recovery.get(rec.spec.requested, 0) + 1
        assert counts == self.state_counts, f"task counts kept {self.state_counts}, but the tasks are {counts}"
        assert shapes == self.waiting_shapes, f"waiting requests kept {self.waiting_shapes}, but the tasks ask {shapes}"
        assert recovery == self.recovery_shapes, f"recovery requests kept {self.recovery_shapes}, but the copies ask {recovery}"
        for rec in self.tasks.values():
            if rec.state == "dispatched":
                assert rec.worker in self.workers, f"task {rec.id} dispatched to missing worker {rec.worker}"
