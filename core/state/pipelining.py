"""Call pipelining: a function call sent ahead to the worker still making its temp inputs.

A chain of calls costs a manager round trip per link when each consumer is placed only after its
producer's completion reaches the manager. Instead, when a call is placed, calls waiting for the temps
it makes are *pinned* to its worker and placed there at once (in its library instance's queue); the
worker starts each one the moment its inputs are in its cache. Only calls take part (they hold no
cores while they wait), only when every missing input is made on that one worker, and only with
``call-pipelining`` > 0. A pinned call whose producer ends without the file fails on the worker with
``input missing`` and is handled like any lost temp. Mixed into :class:`core.state.scheduler.SchedulerState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .resources import Resources

if TYPE_CHECKING:
    from .libraries import LibraryBook
    from .placement import Placement
    from .records import FileRecord, TaskRecord, WorkerRecord


class CallPipelining:
    """Where a call may go before its inputs exist, and pinning waiting calls to their producer's worker."""

    if TYPE_CHECKING:  # state owned by SchedulerState, declared for the type checker
        tasks: dict[int, TaskRecord]
        files: dict[str, FileRecord]
        workers: dict[str, WorkerRecord]
        recovering: dict[str, int]
        waiting_on: dict[str, set[int]]
        blocked_hosts: set[str]
        libs: LibraryBook
        placement: Placement

        def _has_ready_replica(self, name: str) -> bool: ...
        def _push_ready(self, rec: TaskRecord) -> None: ...

    def _maker_of(self, name: str) -> str | None:
        """The worker where a dispatched function call is making temp ``name`` (else None)."""
        frec = self.files.get(name)
        for tid in (self.recovering.get(name), frec.producer if frec else None):
            prod = self.tasks.get(tid) if tid is not None else None
            if prod is not None and prod.state == "dispatched" and prod.spec.library_required is not None and prod.worker is not None:
                return prod.worker
        return None

    def _pin_target(self, rec: TaskRecord) -> str | None:
        """Where call ``rec`` can be sent before its temp inputs exist: the one worker whose library
        is making every missing one. The worker starts it the moment they are made, without waiting
        for the manager to hear of them (a chain link then costs no manager round trip)."""
        target = None
        for m in rec.spec.inputs:
            if m.file.kind == "temp" and not self._has_ready_replica(m.file.cache_name):
                maker = self._maker_of(m.file.cache_name)
                if maker is None or (target is not None and maker != target):
                    return None
                target = maker
        return target

    def _pinned_choice(self, rec: TaskRecord, now: float) -> tuple[WorkerRecord, Resources] | None:
        """A free slot, or queue room, in the pinned worker's instance of the call's library."""
        w = self.workers.get(rec.pinned or "")
        if w is None:
            return None
        alloc = self.placement.eligible(rec, w, now)
        if alloc is not None:
            return w, alloc
        name = rec.spec.library_required
        if name is None or not self.placement.open_to(rec.spec, w, now):
            return None
        depth = self.libs.depth_for(name)
        if any(i.worker == w.id and i.name == name and i.queue_room(depth) > 0 for i in self.libs.instances.values()):
            return w, Resources.zero()
        return None

    def _pin_consumers(self, rec: TaskRecord) -> None:
        """Calls waiting for temps that the call just placed will make may now follow it to its worker."""
        for m in rec.spec.outputs:
            name = m.file.cache_name
            waiters = self.waiting_on.get(name)
            if m.file.kind != "temp" or not waiters:
                continue
            for tid in sorted(waiters):
                crec = self.tasks.get(tid)
                if crec is None or crec.state != "waiting" or crec.spec.library_required is None:
                    continue
                target = self._pin_target(crec)
                if target is not None:
                    waiters.discard(tid)
                    crec.pinned = target
                    self._push_ready(crec)
