"""Libraries and function calls in the scheduler's pure state: templates, instances, slots.

::

    install_library(L) ──► template L (a LibraryTask)                 FunctionCall(L, "f", ...)
                                │                                            │ ready, needs a slot
       a call finds no free slot, a worker has room for L's allocation       ▼
                                └──► StartLibrary(worker, L, instance -N) ──► call placed in it
    instance exits unasked ──► template.exits += 1; > max(1, max-library-retries) ──► template removed,
                                                         waiting calls end with "missing library"

An instance holds its allocation on its worker like a task; calls inside it are allocated nothing
(REFERENCE §3.3 step 1) and take one of its ``slots`` each. Instances have negative ids so they never
collide with the manager's task ids. Idle instances (no calls) give their room back when a task or
another library needs it. Everything here is pure: no sockets, no clocks; the
:class:`~core.state.scheduler.SchedulerState` calls in at a handful of points.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import constants as C
from .events import Event, Instruction, Kill, TaskFinished
from .records import TaskRecord
from .resources import Resources
from .spec import TaskSpec

if TYPE_CHECKING:
    from .placement import Placement
    from .records import WorkerRecord
    from .spec import FileSpec


class SchedulerState(Protocol):
    """What the book uses of :class:`core.state.scheduler.SchedulerState` (named here, not imported:
    the scheduler imports this module)."""

    tasks: dict[int, TaskRecord]
    workers: dict[str, WorkerRecord]
    tuning: dict[str, float]
    stats: dict[str, float]
    _schedule_needed: bool
    placement: Placement

    def _finish(self, rec: TaskRecord, result: int, exit_code: int, out: list[Instruction]) -> None: ...
    def _stage(self, f: FileSpec, w: WorkerRecord, out: list[Instruction], placing: bool = False) -> None: ...

DEFAULT_MAX_LIBRARY_RETRIES = 15


@dataclass(frozen=True)
class LibraryInstalled(Event):
    """``Manager.install_library``: calls may now name this library."""

    spec: TaskSpec  # the LibraryTask's spec; ``library_provided`` names the library


@dataclass(frozen=True)
class LibraryRemoved(Event):
    """``Manager.remove_library``: stop its instances; its waiting calls end with ``missing library``."""

    name: str


@dataclass(frozen=True)
class StartLibrary(Instruction):
    """Start an instance of library ``name`` on ``worker`` as task ``instance_id`` with ``slots`` slots."""

    worker: str
    name: str
    instance_id: int
    allocation: Resources
    slots: int


# Calls per slot a library instance may hold at most (tune "library-queue-depth"). The one place this
# default lives: the scheduler reads it from here. The more calls in flight, the more calls each
# message batch of a loop turn carries (the manager's tasks, the worker's completes, the library's
# replies): summed over manager, worker and library a trivial direct call cost 0.59-0.62 ms of CPU
# at depth 8, 0.52-0.58 at 16, 0.49-0.50 at 32, 0.45-0.48 at 64 (issue 13, session 22; 32 is
# where the gain flattens). Only calls measured short (SHORT_CALL) queue at all, and no more of
# them than QUEUE_BUDGET seconds of calls per slot, so a slow-ish call is not stuck behind 31 others.
DEFAULT_QUEUE_DEPTH = 32
SHORT_CALL = 0.05  # s: calls shorter than this on average may queue inside an instance
QUEUE_BUDGET = 0.2  # s: the calls queued per slot take about this long at most (mean_call each)


@dataclass
class LibraryTemplate:
    spec: TaskSpec
    exits: int = 0
    mean_call: float = -1.0  # moving average of call durations (s); -1 until one returns
    calls_seen: int = 0


@dataclass
class LibraryInstance:
    id: int
    name: str
    worker: str
    allocation: Resources
    slots: int
    calls: set[int] = field(default_factory=set)
    dead: bool = False  # a call saw it die: no new calls; its end is already counted

    @property
    def free(self) -> int:
        return 0 if self.dead else self.slots - len(self.calls)

    def queue_room(self, depth: int) -> int:
        """Calls it may still take beyond its free slots: they wait inside the instance, so the
        next call starts the moment one ends instead of a manager round trip later."""
        return 0 if self.dead else self.slots * max(1, depth) - len(self.calls)


def library_slots(spec: TaskSpec, allocation: Resources) -> int:
    """Slots of an instance: 1 in direct mode, else the requested number, else its allocated cores."""
    if spec.exec_mode == "direct":
        return 1
    requested = int(spec.function_slots or 0)
    if requested > 0:
        return requested
    return max(1, int(allocation.cores)) if allocation.cores > 0 else 1


class LibraryBook:
    """The scheduler's record of library templates and running instances."""

    def __init__(self) -> None:
        self.templates: dict[str, LibraryTemplate] = {}
        self.instances: dict[int, LibraryInstance] = {}
        self.call_instance: dict[int, int] = {}  # call task id -> instance id
        self.removed_reason: dict[str, str] = {}  # why a template went away
        self._ids = itertools.count(-1, -1)
        self.depth = DEFAULT_QUEUE_DEPTH  # tune "library-queue-depth": calls per slot an instance may hold

    # -- events -------------------------------------------------------------------------------------
    def handlers(self, s: SchedulerState) -> dict[type, Callable[[Any, list[Instruction]], None]]:
        return {
            LibraryInstalled: lambda ev, out: self.install(s, ev, out),
            LibraryRemoved: lambda ev, out: self.remove(s, ev.name, out, "removed by remove_library"),
        }

    def install(self, s: SchedulerState, ev: LibraryInstalled, out: list[Instruction]) -> None:
        name = ev.spec.library_provided
        assert name is not None
        self.templates[name] = LibraryTemplate(ev.spec)
        self.removed_reason.pop(name, None)
        s._schedule_needed = True

    def remove(self, s: SchedulerState, name: str, out: list[Instruction], reason: str) -> None:
        self.templates.pop(name, None)
        self.removed_reason[name] = reason
        for inst in [i for i in self.instances.values() if i.name == name]:
            out.append(Kill(inst.worker, inst.id))
            self._drop(s, inst)
        for rec in list(s.tasks.values()):
            if rec.spec.library_required == name and rec.state in ("ready", "waiting"):
                s._finish(rec, C.VINE_RESULT_MISSING_LIBRARY, -1, out)

    # -- queries ------------------------------------------------------------------------------------
    def owns(self, task_id: int) -> bool:
        return task_id < 0 or task_id in self.instances

    def instance_of(self, call_id: int) -> int | None:
        return self.call_instance.get(call_id)

    def committed_on(self, worker: str) -> Resources:
        total = Resources(0, 0, 0, 0)
        for inst in self.instances.values():
            if inst.worker == worker:
                total = total + inst.allocation
        return total

    def depth_for(self, name: str) -> int:
        """Calls per slot an instance of ``name`` may hold. Queueing inside instances only pays for
        short calls (it saves a manager round trip per call); long calls would wait behind each
        other while another worker's slot sits free, so they get exactly one call per slot, and
        short ones as many as take QUEUE_BUDGET seconds (at most ``library-queue-depth``)."""
        tmpl = self.templates.get(name)
        if tmpl is None or tmpl.calls_seen < 4 or tmpl.mean_call > SHORT_CALL:
            return 1
        mean = tmpl.mean_call
        return max(1, min(self.depth, int(QUEUE_BUDGET / mean) if mean > 0 else self.depth))

    def has_room(self, depth: int = 1) -> bool:
        """Some instance has a free slot or queue room, or is idle and could give its room away.

        (``depth`` is not used: each instance's own ``depth_for`` decides. Asked once or twice per
        scheduling step, hence a plain loop with the cheap tests first: a free slot needs no depth.)
        """
        for i in self.instances.values():
            if i.dead:
                continue
            held = len(i.calls)
            if held < i.slots or held < i.slots * self.depth_for(i.name):
                return True
        return False

    def slot_for(self, name: str, w: WorkerRecord) -> Resources | None:
        """All-zero allocation if ``w`` runs an instance of ``name`` with a free slot, else None."""
        for inst in self.instances.values():
            if inst.worker == w.id and inst.name == name and inst.free > 0:
                return Resources.zero()
        return None

    # -- placement ------------------------------------------------------------------------------------
    def placed(self, rec: TaskRecord, w: WorkerRecord) -> None:
        name = rec.spec.library_required
        if name is None:
            return
        depth = self.depth_for(name)
        best: LibraryInstance | None = None  # the one with the most free slots, then the fewest calls
        for i in self.instances.values():
            if i.worker == w.id and i.name == name and i.queue_room(depth) > 0 and (
                    best is None or (i.free, -len(i.calls)) > (best.free, -len(best.calls))):
                best = i
        assert best is not None, f"call {rec.id} placed on {w.id} without a free slot of {name}"
        best.calls.add(rec.id)
        self.call_instance[rec.id] = best.id

    def released(self, rec: TaskRecord) -> None:
        iid = self.call_instance.pop(rec.id, None)
        inst = self.instances.get(iid) if iid is not None else None
        if inst is not None:
            inst.calls.discard(rec.id)

    def make_room(self, s: SchedulerState, rec: TaskRecord, now: float, out: list[Instruction]) -> tuple[WorkerRecord, Resources] | None:
        """No worker took ``rec`` as things stand: start a library for a call, or evict idle ones.

        A call whose library is not installed (or was removed) ends here with ``missing library``.
        """
        name = rec.spec.library_required
        if name is None:
            if self._evict_for(s, lambda w: s.placement.eligible(rec, w, now), None, out):
                return s.placement.choose_worker(rec, now)
            return None
        tmpl = self.templates.get(name)
        if tmpl is None:
            s._finish(rec, C.VINE_RESULT_MISSING_LIBRARY, -1, out)
            return None
        if not self._could_start_or_evict(s):
            return self._queue_for(s, rec, now)  # every core is taken and nothing is idle: skip the search
        lib_spec = tmpl.spec
        if rec.spec.features:  # an instance starts where the call may run: the call's features added
            lib_spec = lib_spec._replace(features=tuple(dict.fromkeys(lib_spec.features + rec.spec.features)))
        lib_rec = TaskRecord(lib_spec.id, lib_spec, -1)
        choice = self._best_worker_for(s, lib_rec, now)
        if choice is None and self._evict_for(s, lambda w: s.placement.eligible(lib_rec, w, now), name, out):
            choice = self._best_worker_for(s, lib_rec, now)
        if choice is None:
            return self._queue_for(s, rec, now)
        w, alloc = choice
        self.start(s, tmpl, w, alloc, out)
        return w, Resources.zero()

    def _could_start_or_evict(self, s: SchedulerState) -> bool:
        """Cheap necessary condition for starting an instance: some worker has a free core, or some
        instance is idle and could be evicted."""
        if any(w.committed.cores < w.total.cores or w.total.cores <= 0 for w in s.workers.values()):
            return True
        return any(not i.calls and not i.dead for i in self.instances.values())

    def _queue_for(self, s: SchedulerState, rec: TaskRecord, now: float) -> tuple[WorkerRecord, Resources] | None:
        """No free slot and no room for another instance: queue the call in the least busy instance."""
        name = rec.spec.library_required
        assert name is not None  # only calls queue in instances
        depth = self.depth_for(name)
        best = None
        for inst in self.instances.values():
            if inst.name != name or inst.queue_room(depth) <= 0:
                continue
            w = s.workers.get(inst.worker)
            if w is None or not s.placement.open_to(rec.spec, w, now):
                continue
            if best is None or len(inst.calls) < len(best[0].calls):
                best = (inst, w)
        return None if best is None else (best[1], Resources.zero())

    def _best_worker_for(self, s: SchedulerState, lib_rec: TaskRecord, now: float) -> tuple[WorkerRecord, Resources] | None:
        best = None
        for w in s.workers.values():
            alloc = s.placement.eligible(lib_rec, w, now)
            if alloc is None:
                continue
            score = (-sum(1 for i in self.instances.values() if i.worker == w.id), max(w.total.cores, 0) - max(w.committed.cores, 0))
            if best is None or score > best[0]:
                best = (score, w, alloc)
        return None if best is None else (best[1], best[2])

    def _evict_for(self, s: SchedulerState, eligible: Any, keep: str | None, out: list[Instruction]) -> bool:
        """Kill idle instances on one worker until ``eligible(w)`` holds there; True if it worked."""
        for w in s.workers.values():
            idle = [i for i in self.instances.values() if i.worker == w.id and not i.calls and not i.dead and i.name != keep]
            if not idle:
                continue
            freed = w.committed
            for inst in idle:
                freed = freed - inst.allocation
            saved = w.committed
            w.committed = freed
            ok = eligible(w) is not None
            w.committed = saved
            if not ok:
                continue
            for inst in idle:
                out.append(Kill(w.id, inst.id))
                self._drop(s, inst)
                if eligible(w) is not None:
                    break
            return True
        return False

    def start(self, s: SchedulerState, tmpl: LibraryTemplate, w: WorkerRecord, alloc: Resources, out: list[Instruction]) -> LibraryInstance:
        name = tmpl.spec.library_provided
        assert name is not None
        for f in tmpl.spec.environments:
            s._stage(f, w, out)
        for m in tmpl.spec.inputs:
            s._stage(m.file, w, out)
        inst = LibraryInstance(next(self._ids), name, w.id, alloc, library_slots(tmpl.spec, alloc))
        self.instances[inst.id] = inst
        w.committed = w.committed + alloc
        s.stats["libraries_started"] += 1
        out.append(StartLibrary(w.id, name, inst.id, alloc, inst.slots))
        return inst

    # -- endings ----------------------------------------------------------------------------------------
    def _drop(self, s: SchedulerState, inst: LibraryInstance) -> None:
        self.instances.pop(inst.id, None)
        for cid in inst.calls:
            self.call_instance.pop(cid, None)
        w = s.workers.get(inst.worker)
        if w is not None:
            w.committed = w.committed - inst.allocation
        s._schedule_needed = True

    def call_ended(self, s: SchedulerState, rec: TaskRecord, ev: TaskFinished, out: list[Instruction]) -> None:
        """A call came back; if its library died under it, stop using that instance at once.

        The instance's own report may come later; until then it keeps its room on the worker, but
        no new call goes into it (that race used to send calls into a dead library).
        """
        tmpl = self.templates.get(rec.spec.library_required or "")
        if tmpl is not None and ev.result == C.VINE_RESULT_SUCCESS:
            tmpl.calls_seen += 1
            tmpl.mean_call = ev.runtime if tmpl.mean_call < 0 else 0.9 * tmpl.mean_call + 0.1 * ev.runtime
        if ev.result not in (C.VINE_RESULT_LIBRARY_EXIT, C.VINE_RESULT_MISSING_LIBRARY):
            return
        iid = self.call_instance.get(rec.id)
        inst = self.instances.get(iid) if iid is not None else None
        if inst is not None and not inst.dead:
            inst.dead = True
            self._count_exit(s, inst, out)

    def instance_ended(self, s: SchedulerState, ev: TaskFinished, out: list[Instruction]) -> None:
        """The worker reports an instance gone. Unasked exits count against the template."""
        inst = self.instances.get(ev.task_id)
        if inst is None or inst.worker != ev.worker:
            return  # one we killed on purpose, or a late report
        self._drop(s, inst)
        if ev.result == C.VINE_RESULT_FORSAKEN or inst.dead:
            return  # the worker had no room (not the library's fault), or already counted
        self._count_exit(s, inst, out)

    def _count_exit(self, s: SchedulerState, inst: LibraryInstance, out: list[Instruction]) -> None:
        tmpl = self.templates.get(inst.name)
        if tmpl is None:
            return
        tmpl.exits += 1
        s.stats["libraries_failed"] += 1
        limit = max(1, int(s.tuning.get("max-library-retries", DEFAULT_MAX_LIBRARY_RETRIES)))
        if tmpl.exits > limit:
            self.remove(s, inst.name, out, f"library {inst.name!r} exited {tmpl.exits} times (max-library-retries is {limit})")

    def worker_lost(self, s: SchedulerState, worker: str) -> None:
        for inst in [i for i in self.instances.values() if i.worker == worker]:
            self.instances.pop(inst.id, None)
            for cid in inst.calls:
                self.call_instance.pop(cid, None)

