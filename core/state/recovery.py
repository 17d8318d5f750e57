"""Lineage recovery: re-making temp files whose last copy was lost with a worker.

Each temp file remembers the task that made it. When a consumer needs a temp with no replica left
and its producer is not already running, a hidden copy of the producer runs again at top priority
(recursively: its own lost temp inputs trigger the same). Recovery always ends: a file re-made
``max-task-attempts`` times without success, or whose producer ended without making it, fails its
waiting consumers with "input missing" and a reason. Mixed into :class:`core.state.scheduler.SchedulerState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import constants as C
from .events import Instruction, Warn
from .records import TaskRecord

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .records import FileRecord
    from .spec import TaskSpec


class RecoveryPlanner:
    """Deciding when a lost temp is re-made, by whom, and when to give up."""

    if TYPE_CHECKING:  # state owned by SchedulerState, declared for the type checker
        tasks: dict[int, TaskRecord]
        files: dict[str, FileRecord]
        tuning: dict[str, float]
        stats: dict[str, float]
        lineage: dict[str, TaskSpec]
        recovering: dict[str, int]
        recoveries: dict[str, int]
        waiting_on: dict[str, set[int]]
        _recovery_ids: Iterator[int]
        _seq: Iterator[int]

        def _make_ready(self, rec: TaskRecord, out: list[Instruction]) -> None: ...
        def _finish(self, rec: TaskRecord, result: int, exit_code: int, out: list[Instruction]) -> None: ...

    def _producer_active(self, name: str) -> bool:
        frec = self.files.get(name)
        if frec is not None and any(s == "creating" for s in frec.replicas.values()):
            return True
        for tid in (frec.producer if frec else None, self.recovering.get(name)):
            rec = self.tasks.get(tid) if tid is not None else None
            if rec is not None and rec.state != "done":
                return True
        return False

    def _recover(self, name: str, out: list[Instruction]) -> None:
        """Re-run the producer of lost temp ``name`` as a hidden, top-priority recovery task."""
        producer = self.lineage.get(name)
        if producer is None:
            return  # nobody has promised to make it yet; consumers wait for a producer
        limit = int(self.tuning["max-task-attempts"])
        if self.recoveries[name] >= limit:
            self._fail_waiters(name, f"temp file {name} was lost and its producer (task {producer.id}) was re-run {limit} times without success", out)
            return
        self.recoveries[name] += 1
        # The producer's own spec runs again under an id of its own: the record is new, the spec is shared.
        rid = next(self._recovery_ids)
        rec = self.tasks[rid] = TaskRecord(rid, producer, next(self._seq), recovery=True)
        for m in producer.outputs:
            if m.file.kind == "temp":
                self.recovering[m.file.cache_name] = rid
        self.stats["tasks_recovery"] += 1
        self._make_ready(rec, out)

    def _fail_waiters(self, name: str, reason: str, out: list[Instruction]) -> None:
        """Consumers of a temp that can no longer be made end with "input missing" instead of waiting forever."""
        sink = out
        waiters = self.waiting_on.pop(name, set())
        if waiters:
            sink.append(Warn(f"{reason}; failing {len(waiters)} task(s) that need it"))
        for tid in sorted(waiters):
            rec = self.tasks.get(tid)
            if rec is not None and rec.state == "waiting":
                self._finish(rec, C.VINE_RESULT_INPUT_MISSING, -1, sink)
