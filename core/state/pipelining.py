"""Pipelining: a task sent ahead to the worker still making its temp inputs.

A chain costs a manager round trip per link when each consumer is placed only after its producer's
completion reaches the manager. Instead, when a task is placed, the tasks waiting only for the temps
it makes are *pinned* to its worker and sent there at once; the worker starts each one the moment
its inputs are in its cache, without hearing from the manager. Only when every missing input is made
on that one worker, and:

- **function calls** (``call-pipelining`` > 0) follow calls: they go into the library instance's
  queue (they hold no cores while they wait) and wait there for the cache's pending future;
- **tasks** (command tasks and PythonTasks, ``task-pipelining`` > 0) follow tasks that are not calls:
  they go into the worker's first-in, first-out queue (``Dispatch(queued=True)``, as a prefetched
  task), at most ``task-pipelining`` per core counting what is queued there already, and start when
  their allocation fits and no task started there is still making one of their inputs. That rule is
  the worker's (core/worker/pipelined.py) and the scheduler's mirror of its queue alike
  (core/state/prefetch.py ``inputs_being_made``).

A pinned call whose producer ends without the file fails on the worker with ``input missing`` and is
handled like any lost temp. A pinned task whose producer ends without the file is ended here at once,
as the tasks still waiting for that file are (``input missing``), and killed on its worker: it never
runs with an input missing. Mixed into :class:`core.state.scheduler.SchedulerState`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from .. import constants as C
from .events import Instruction, Kill, Warn
from .resources import Resources, fits

if TYPE_CHECKING:
    from .libraries import LibraryBook
    from .placement import Placement
    from .records import FileRecord, TaskRecord, WorkerRecord
    from .spec import FileSpec, TaskSpec


class Pipelining:
    """Where a task may go before its inputs exist, and pinning waiting tasks to their producer's worker."""

    if TYPE_CHECKING:  # state owned by SchedulerState, declared for the type checker
        tasks: dict[int, TaskRecord]
        files: dict[str, FileRecord]
        workers: dict[str, WorkerRecord]
        tuning: dict[str, float]
        recovering: dict[str, int]
        waiting_on: dict[str, set[int]]
        blocked_hosts: set[str]
        libs: LibraryBook
        placement: Placement

        def _has_ready_replica(self, name: str) -> bool: ...
        def _push_ready(self, rec: TaskRecord) -> None: ...
        def _source(self, f: FileSpec, w: WorkerRecord) -> str | None: ...
        def _inputs_exist(self, rec: TaskRecord, out: list[Instruction]) -> bool: ...
        def _place(self, rec: TaskRecord, w: WorkerRecord, alloc: Resources, out: list[Instruction], queued: bool = False) -> None: ...
        def _release(self, rec: TaskRecord) -> None: ...
        def _finish(self, rec: TaskRecord, result: int, exit_code: int, out: list[Instruction]) -> None: ...

    # Tasks placed on a worker before their temp inputs exist, by input: the ones to end (input
    # missing) if that input's producer ends without making it. Entries go when the producer ends.
    pinned_for: defaultdict[str, set[int]]

    def _pipelines(self, spec: TaskSpec) -> bool:
        """Whether a task of this kind may be pinned at all (its tune is on)."""
        return self.tuning["call-pipelining" if spec.library_required is not None else "task-pipelining"] > 0

    def _maker_of(self, name: str, for_call: bool) -> str | None:
        """The worker where a dispatched task is making temp ``name`` (else None): a function call
        for a call (``for_call``), a task that is not a call for a task."""
        frec = self.files.get(name)
        for tid in (self.recovering.get(name), frec.producer if frec else None):
            prod = self.tasks.get(tid) if tid is not None else None
            if (prod is not None and prod.state == "dispatched" and prod.worker is not None
                    and (prod.spec.library_required is not None) == for_call):
                return prod.worker
        return None

    def _pin_target(self, rec: TaskRecord) -> str | None:
        """Where ``rec`` can be sent before its temp inputs exist: the one worker making every missing
        one. The worker starts it the moment they are made, without waiting for the manager to hear
        of them (a chain link then costs no manager round trip)."""
        target = None
        for_call = rec.spec.library_required is not None
        for m in rec.spec.inputs:
            if m.file.kind == "temp" and not self._has_ready_replica(m.file.cache_name):
                maker = self._maker_of(m.file.cache_name, for_call)
                if maker is None or (target is not None and maker != target):
                    return None
                target = maker
        return target

    def _pin(self, rec: TaskRecord) -> bool:
        """Pin ``rec`` to the worker making its missing temp inputs, if there is one, and make it
        ready to go there (a task is noted against those inputs, see :meth:`_fail_pinned`)."""
        target = rec.pinned = self._pin_target(rec)
        if target is None:
            return False
        if rec.spec.library_required is None:
            self._note_pinned(rec)
        self._push_ready(rec)
        return True

    def _note_pinned(self, rec: TaskRecord) -> None:
        for m in rec.spec.inputs:
            if m.file.kind == "temp" and not self._has_ready_replica(m.file.cache_name):
                self.pinned_for[m.file.cache_name].add(rec.id)

    def _pipeline_limit(self, w: WorkerRecord) -> int:
        """How many tasks ``w``'s queue may hold for a pinned task to join it."""
        per_core = self.tuning["task-pipelining"]
        return 0 if per_core <= 0 else max(1, math.ceil(max(w.total.cores, 1) * per_core))

    def _pipelining_room(self) -> bool:
        """Some worker's queue could take a pinned task (a scheduling pass with no free cores left
        still looks at the head of the ready queue)."""
        return self.tuning["task-pipelining"] > 0 and any(len(w.queue) < self._pipeline_limit(w) for w in self.workers.values())

    def _pinned_choice(self, rec: TaskRecord, now: float) -> tuple[WorkerRecord, Resources] | None:
        """A call: a free slot, or queue room, in the pinned worker's instance of its library. A task:
        room in the pinned worker's queue, an allocation that fits there once the tasks making its
        inputs have ended (else it could wait there for room while another worker idles), and a
        source there for every input that is not being made there."""
        w = self.workers.get(rec.pinned or "")
        if w is None:
            return None
        t = rec.spec
        if t.library_required is None:
            if len(w.queue) >= self._pipeline_limit(w) or not self.placement.open_to(t, w, now):
                return None
            alloc = self.placement.allocation(rec, w)
            if not fits(alloc, w.total, w.committed - self._makers_allocation(rec, w),
                        multiplier=self.tuning["resource-submit-multiplier"]):
                return None
            for f in t.environments:
                if self._source(f, w) is None:
                    return None
            for m in t.inputs:
                missing = m.file.kind == "temp" and not self._has_ready_replica(m.file.cache_name)
                if not missing and self._source(m.file, w) is None:
                    return None
            return w, alloc
        slot = self.placement.eligible(rec, w, now)
        if slot is not None:
            return w, slot
        name = t.library_required
        if not self.placement.open_to(t, w, now):
            return None
        depth = self.libs.depth_for(name)
        if any(i.worker == w.id and i.name == name and i.queue_room(depth) > 0 for i in self.libs.instances.values()):
            return w, Resources.zero()
        return None

    def _makers_allocation(self, rec: TaskRecord, w: WorkerRecord) -> Resources:
        """What the started tasks on ``w`` making ``rec``'s missing temps hold (each counted once)."""
        held = Resources.zero()
        seen: set[int] = set()
        for m in rec.spec.inputs:
            name = m.file.cache_name
            if m.file.kind != "temp" or self._has_ready_replica(name):
                continue
            frec = self.files.get(name)
            for tid in (self.recovering.get(name), frec.producer if frec else None):
                prod = self.tasks.get(tid) if tid is not None else None
                if prod is not None and prod.id not in seen and prod.worker == w.id and prod.state == "dispatched" and not prod.queued:
                    seen.add(prod.id)
                    held = held + prod.allocation
        return held

    def _place_pinned(self, rec: TaskRecord, w: WorkerRecord, alloc: Resources, out: list[Instruction]) -> None:
        """Send pinned ``rec`` to ``w``: a call to its instance, a task into the worker's queue (noted
        against each input it waits for, see :meth:`_fail_pinned`)."""
        queued = rec.spec.library_required is None
        if queued:
            self._note_pinned(rec)
        self._place(rec, w, alloc, out, queued=queued)

    def _place_pinned_task(self, rec: TaskRecord, now: float, out: list[Instruction]) -> bool:
        """In a pass with no free cores left: queue pinned task ``rec`` on its worker if it has room.
        True when ``rec`` was dealt with (placed, or parked again as waiting); False when it is still
        ready and unplaced."""
        t = rec.spec
        if t.past_end(now) or t.before_start(now):
            return False  # the ordinary pass ends it, or keeps it for later
        if not self._inputs_exist(rec, out):
            return True
        if rec.pinned is None:
            return False  # every input exists now: an ordinary task again
        choice = self._pinned_choice(rec, now)
        if choice is None:
            return False
        self._place_pinned(rec, choice[0], choice[1], out)
        return True

    def _pins_consumers(self, rec: TaskRecord, queued: bool) -> bool:
        """Whether placing ``rec`` may pin the tasks waiting for its temp outputs to its worker: a
        call once it is in its instance, a task as soon as it is sent (queued too)."""
        if rec.spec.library_required is not None:
            return not queued and self.tuning["call-pipelining"] > 0
        return self.tuning["task-pipelining"] > 0

    def _pin_consumers(self, rec: TaskRecord) -> None:
        """Tasks waiting for temps that the task just placed will make may now follow it to its
        worker: calls after a call, tasks after a task that is not a call."""
        for_call = rec.spec.library_required is not None
        for m in rec.spec.outputs:
            name = m.file.cache_name
            waiters = self.waiting_on.get(name)
            if m.file.kind != "temp" or not waiters:
                continue
            for tid in sorted(waiters):
                crec = self.tasks.get(tid)
                if crec is None or crec.state != "waiting" or (crec.spec.library_required is not None) != for_call:
                    continue
                if self._pin(crec):
                    waiters.discard(tid)

    def _fail_pinned(self, name: str, reason: str, out: list[Instruction]) -> None:
        """Temp ``name``'s producer ended without making it: the tasks pinned to it (ready to go, or
        sent ahead and waiting in their worker's queue) end with "input missing", as those still
        waiting for it do; one sent ahead is killed where it waits, before it can start."""
        doomed = []
        for tid in sorted(self.pinned_for.pop(name, ())):
            rec = self.tasks.get(tid)
            if (rec is not None and rec.pinned is not None and rec.state in ("ready", "dispatched")
                    and any(m.file.cache_name == name for m in rec.spec.inputs)):
                doomed.append(rec)
        if doomed:
            out.append(Warn(f"{reason}; failing {len(doomed)} task(s) pinned to it"))
        for rec in doomed:
            if rec.state == "dispatched" and rec.worker is not None:
                out.append(Kill(rec.worker, rec.id))
                self._release(rec)
            elif rec.state != "ready":
                continue  # ended meanwhile, by an earlier one's failure
            self._finish(rec, C.VINE_RESULT_INPUT_MISSING, -1, out)
