"""The manager's decisions as a pure state machine: events in, instructions out.

No sockets, no clocks, no sleeping: the manager's I/O thread turns bytes into events and
instructions into bytes. Time arrives as an argument (``now``, seconds), so keepalives, retries and
recovery are unit-tested without processes.

Task life::

    waiting --(temp inputs exist)--> ready --(worker chosen)--> dispatched --(complete)--> done
       ^                               ^  |                         |
       |                               |  +------(cancel)---------> cancelled
       +--------(temp input lost)------+--------(worker lost, forsaken: attempt counted)

Ready tasks sit in a heap keyed by (recovery first, then user priority, then submission order), so
the cost of a scheduling decision does not grow with the length of the queue.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from .. import constants as C
from .categories import CategoryBook

# Events, instructions and records live in their own modules; they are re-exported here because
# "the scheduler's vocabulary" is what other modules and the tests import.
from .events import (  # noqa: F401 - re-exported
    CacheInvalid,
    CacheUpdated,
    CategoryBoxSet,
    CategoryModeSet,
    Dispatch,
    Event,
    EventFailed,
    FetchPeer,
    FetchUrl,
    FileUndeclared,
    HostBlocked,
    HostDraining,
    HostUnblocked,
    Instruction,
    Keepalive,
    Kill,
    PolicyChanged,
    RemoveWorker,
    ReturnTask,
    RunMinitask,
    SendFile,
    TaskCancelled,
    TaskFinished,
    TasksRetrieved,
    TasksSubmitted,
    TaskSubmitted,
    Tick,
    TuneChanged,
    Unlink,
    Warn,
    WorkerHeard,
    WorkerJoined,
    WorkerLost,
)
from .invariants import Invariants
from .libraries import DEFAULT_QUEUE_DEPTH, LibraryBook
from .pipelining import Pipelining
from .placement import Placement
from .prefetch import PREFETCH_SAMPLES, SHORT_TASK, PrefetchPlanner  # noqa: F401 - re-exported
from .records import FileRecord, RecordState, ReplicaState, TaskRecord, TaskState, WorkerRecord  # noqa: F401 - re-exported
from .recovery import RecoveryPlanner
from .resources import Resources, hungry_count
from .settings import SettingsHandlers
from .spec import UNSET, FileSpec, MountSpec, TaskSpec  # noqa: F401 - re-exported
from .story import TaskStory, Transition
from .transfers import TransferPlanner, url_origin  # noqa: F401 - re-exported

POLICIES = {
    C.VINE_SCHEDULE_FCFS: "rand",
    C.VINE_SCHEDULE_FILES: "files",
    C.VINE_SCHEDULE_TIME: "time",
    C.VINE_SCHEDULE_RAND: "rand",
    C.VINE_SCHEDULE_WORST: "worst",
    C.VINE_SCHEDULE_DISK: "disk",
}
POLICY_NAMES = {"files", "time", "rand", "worst", "disk", "fcfs"}


def policy_name(policy: str | int) -> str:
    """Normalise a scheduler given as a TaskVine constant or a name; unknown ones raise ValueError."""
    if isinstance(policy, int) and policy in POLICIES:
        return POLICIES[policy]
    if isinstance(policy, str) and policy in POLICY_NAMES:
        return "rand" if policy == "fcfs" else policy
    raise ValueError(f"unknown scheduler {policy!r}; use one of files, time, rand, worst, disk, fcfs")


DEFAULT_TUNING: dict[str, float] = {
    "attempt-schedule-depth": 100,
    "call-pipelining": 1,  # a call may go to the worker still making its temp inputs (0: wait for them)
    "task-pipelining": 1,  # tasks per core queued on the worker still making their temp inputs (0: wait for them)
    "hungry-minimum": 10,
    "hungry-minimum-factor": 2,
    "keepalive-interval": 30,
    "keepalive-timeout": 60,
    "resource-submit-multiplier": 1.0,
    "proportional-resources": 1,
    "proportional-whole-tasks": 1,
    "exact-task-resources": 0,  # 1: a task's own values are allocated as set (TaskVine's C code, not its manual)
    "disk-proportion-available-to-task": 0.75,
    "wait-for-workers": 0,
    "max-task-attempts": 10,
    "immediate-recovery": 0,
    "temp-replica-count": 1,
    "worker-source-max-transfers": 10,
    "file-source-max-transfers": 1,
    "transient-error-interval": 15,
    "peer-transfers": 1,
    "worker-prefetch": 1,  # short tasks queued per worker core beyond what runs (0 = off)
    "category-steady-n-tasks": 25,  # measured tasks before an automatic category mode sizes its tasks
}


RECOVERY_ID_BASE = 1 << 40  # hidden recovery copies of tasks get ids above every user task id


def request_sample(shapes: dict[Resources, int], limit: int) -> list[Resources]:
    """At most ``limit`` requests of the queued tasks, in their shapes' proportions (each shape at
    least once): all of them when that many or fewer are queued. From the kept shapes, so a large
    queue is not walked for it."""
    total = sum(shapes.values())
    if total <= limit:
        return [box for box, n in shapes.items() for _ in range(n)]
    share = {box: max(1, round(n * limit / total)) for box, n in shapes.items()}
    excess = sum(share.values()) - limit  # (from rounding the rare ones up): the commonest give it back
    for box in sorted(share, key=share.__getitem__, reverse=True):
        if excess <= 0:
            break
        give = min(excess, share[box] - 1)
        share[box] -= give
        excess -= give
    return [box for box, n in share.items() for _ in range(n)][:limit]  # (more shapes than limit: cut)


def _ready_key(rec: TaskRecord) -> tuple[int, float, int, int]:
    """A ready task's place in the ready heap: recovery first, then retries after resource
    exhaustion, then the user's priority, then submit order."""
    priority = rec.spec.priority
    return (0 if rec.recovery else 1 if rec.exhaustions else 2, -priority if priority else 0.0, rec.seq, rec.id)


def _count(counts: dict[Any, int], key: Any, change: int) -> None:
    """Add ``change`` to ``counts[key]``; a count that reaches 0 is removed."""
    n = counts.get(key, 0) + change
    if n:
        counts[key] = n
    else:
        del counts[key]


class SchedulerState(TransferPlanner, RecoveryPlanner, Pipelining, PrefetchPlanner, SettingsHandlers, Invariants):
    """Tasks, files, replicas and workers, and every decision about them.

    Feed events with :meth:`handle`, the only way to change it; it returns the instructions to
    carry out. :meth:`story` replays a task's transitions. Call :meth:`validate` in tests to check
    the invariants.
    """

    def __init__(self, tuning: dict[str, float] | None = None, policy: str = "files", seed: int | None = None) -> None:
        self.tuning = dict(DEFAULT_TUNING)
        if tuning:
            self.tuning.update(tuning)
        self.rng = random.Random(seed)
        self.tasks: dict[int, TaskRecord] = {}
        # Kept by _transition, so the stats (counts, the smallest waiting request) never walk every
        # task: with 200,000 tasks queued, each performance-log line and each m.stats read was a walk.
        self.state_counts: dict[str, int] = {"waiting": 0, "ready": 0, "dispatched": 0, "done": 0}
        self.waiting_shapes: dict[Resources, int] = {}  # requested box -> tasks ready or waiting with it
        self.recovery_shapes: dict[Resources, int] = {}  # the same for the hidden recovery copies among them
        self.workers: dict[str, WorkerRecord] = {}
        self.files: dict[str, FileRecord] = {}
        # Entries are (class, -priority, submission order, task id); the record keeps its own entry
        # (heap_key) so a stale one is told by identity, with no second tuple per task.
        self.ready: list[tuple[int, float, int, int]] = []
        # Ready tasks a pass looked at but could not place. Like the cursor TaskVine keeps in its
        # ready list, the next pass goes on from where this one stopped instead of re-reading the
        # head of the queue, so unplaceable tasks at the front cannot starve the ones behind them.
        self._passed: list[tuple[int, float, int, int]] = []
        self.waiting_on: dict[str, set[int]] = defaultdict(set)  # temp name -> consumer task ids
        self.blocked_hosts: set[str] = set()
        self._seq = itertools.count()
        self.stats: dict[str, float] = defaultdict(float)
        self._schedule_needed = False
        # (event or None for a scheduling pass, exception) of the last handlers that raised; each is
        # also handed to the manager as an EventFailed instruction.
        self.failed_events: deque[tuple[Event | None, Exception]] = deque(maxlen=64)
        self._story = TaskStory()
        self.forsaken_on: dict[int, str] = {}  # task id -> the worker that last gave it back
        self._now = 0.0
        self.deadlines: list[tuple[float, int]] = []
        self.category_time: dict[str, tuple[int, float]] = {}  # category -> (tasks seen, mean runtime s)  # (time_end in s, task id): expire even with no workers
        # Data plane: who is sending what to whom, so sources are never overloaded.
        self.transfers: dict[tuple[str, str], str] = {}  # (dest worker, file) -> source: worker id, "manager", "url:<origin>"
        self.url_active: dict[str, int] = defaultdict(int)
        self.manager_sending: dict[str, int] = defaultdict(int)
        # Lineage: the task that makes each temp file, kept after the user has the task back.
        self.lineage: dict[str, TaskSpec] = {}
        self.recovering: dict[str, int] = {}  # temp name -> id of the recovery task re-making it
        self.pinned_for: defaultdict[str, set[int]] = defaultdict(set)  # temp name -> tasks sent ahead for it (pipelining.py)
        self._failing: deque[tuple[str, str]] | None = None  # temps whose consumers are being ended (_fail_consumers)
        self.recoveries: dict[str, int] = defaultdict(int)
        self._recovery_ids = itertools.count(RECOVERY_ID_BASE)
        self._handlers: dict[type, Callable[[Any, list[Instruction]], None]] = {
            TaskSubmitted: self._on_submitted,
            TasksSubmitted: self._on_tasks_submitted,
            TaskCancelled: self._on_cancelled,
            WorkerJoined: self._on_worker_joined,
            WorkerLost: self._on_worker_lost,
            WorkerHeard: self._on_worker_heard,
            CacheUpdated: self._on_cache_updated,
            CacheInvalid: self._on_cache_invalid,
            TaskFinished: self._on_task_finished,
            FileUndeclared: self._on_file_undeclared,
            Tick: self._on_tick,
            TasksRetrieved: self._on_tasks_retrieved,
        }
        self.libs = LibraryBook()  # libraries and function calls (core/state/libraries.py)
        self.libs.depth = int(self.tuning.get("library-queue-depth", DEFAULT_QUEUE_DEPTH))
        self.categories = CategoryBook()  # category maxima, modes and measured peaks (core/state/categories.py)
        # Whether a worker takes a task, what it gets there, the best worker (core/state/placement.py).
        self.placement = Placement(self.workers, self.files, self.tuning, self.blocked_hosts, self.forsaken_on, self.libs,
                                   self.categories, self._source, self.rng, policy)
        self._handlers.update(self.libs.handlers(self))
        self._handlers.update(self.settings_handlers())  # core/state/settings.py

    @property
    def policy(self) -> str:
        """The placement policy for tasks that name none (set by a PolicyChanged event)."""
        return self.placement.policy

    @policy.setter
    def policy(self, name: str) -> None:
        self.placement.policy = name

    # -- entry point ---------------------------------------------------------------------------------
    def handle(self, *events: Event) -> list[Instruction]:
        """Apply events in order, then schedule what became possible; the only way to change the state."""
        out: list[Instruction] = []
        now = 0.0
        story = self._story
        for ev in events:
            now = self._now = story.now = ev.now
            story.event, story.event_id = type(ev).__name__, ev.id
            try:
                self._handlers[type(ev)](ev, out)
            except Exception as exc:  # noqa: BLE001 - any bug in one handler: see below
                # The instructions already in ``out`` are decisions this state has recorded (a task
                # marked running, a transfer counted): they must still be carried out, or the state
                # waits forever for them. So a failing event is handed to the manager to act on
                # (log it, drop the peer that sent it) and the other events still apply.
                self.failed_events.append((ev, exc))
                out.append(EventFailed(ev, exc))
        if self._schedule_needed:
            self._schedule_needed = False
            story.event = "schedule"
            try:
                self._schedule(now, out)
            except Exception as exc:  # noqa: BLE001 - as above: keep what was placed before the failure
                self._requeue_ready()  # the task the pass had popped when it failed
                self._schedule_needed = True  # try again on the next event
                self.failed_events.append((None, exc))
                out.append(EventFailed(None, exc))
        return out

    @staticmethod
    def _is_done(rec: TaskRecord) -> bool:
        return rec.state == "done"

    def _transition(self, rec: TaskRecord, finish: RecordState) -> None:
        """Every change of a task's state comes through here: checked and logged (see core/state/story.py).
        The one exception is a plain spec's admission in a burst (_on_tasks_submitted), which does
        the same for "new" -> "ready" with the counts added once for the burst."""
        start = rec.state
        self._story.record(rec.id, start, finish)
        rec.state = finish
        if start == finish:
            return
        counts = self.state_counts
        if start != "new":
            counts[start] -= 1
        counts[finish] += 1
        queued_before = start == "ready" or start == "waiting"
        if queued_before != (finish == "ready" or finish == "waiting"):
            box = rec.spec.requested
            _count(self.waiting_shapes, box, -1 if queued_before else 1)
            if rec.recovery:
                _count(self.recovery_shapes, box, -1 if queued_before else 1)

    def story(self, task_id: int) -> list[Transition]:
        """What happened to task ``task_id``: each transition (event name and id, start and finish
        state, time) still in the bounded log, oldest first."""
        return self._story.story(task_id)

    def _requeue_ready(self) -> None:
        """Put back in the ready queue every ready task a failed pass left out of it."""
        queued = {key[3] for key in self.ready} | {key[3] for key in self._passed}
        for tid, rec in self.tasks.items():
            if rec.state == "ready" and tid not in queued and rec.heap_key is not None:
                self._passed.append(rec.heap_key)

    # -- files ------------------------------------------------------------------------------------------
    def _file(self, f: FileSpec) -> FileRecord:
        rec = self.files.get(f.cache_name)
        if rec is None:
            rec = self.files[f.cache_name] = FileRecord(f)
            # Workers may have announced it (forever/worker caches) before it was declared here.
            for w in self.workers.values():
                state = w.replicas.get(f.cache_name)
                if state is not None:
                    rec.replicas[w.id] = state
        return rec

    def _has_ready_replica(self, name: str) -> bool:
        rec = self.files.get(name)
        return bool(rec and any(s == "ready" for s in rec.replicas.values()))

    # -- handlers -------------------------------------------------------------------------------------
    def _on_submitted(self, ev: TaskSubmitted, out: list[Instruction]) -> None:
        self._submit(ev.spec, out)

    def _on_tasks_submitted(self, ev: TasksSubmitted, out: list[Instruction]) -> None:
        """A burst of submits in one event: each spec as its own TaskSubmitted would be handled. A
        spec whose handling raises is reported as that task's TaskSubmitted failing (what one event
        per task reported) and the specs after it still apply.

        A plain spec (no inputs, outputs or environments, no deadline: most of a big burst) is made
        ready here without _submit's calls, and the counts _transition keeps (state_counts,
        waiting_shapes) are added once per request shape for the burst: a quarter of the I/O
        thread's time per queued task (``vine_benchmark queue-mem``). It leaves what one
        TaskSubmitted per spec leaves (test_submit_path checks records, heap, counts and story)."""
        submit, tasks, seq, ready = self._submit, self.tasks, self._seq, self.ready
        log, story = self._story.log, self._story
        event, event_id, now = story.event, story.event_id, story.now
        shapes: dict[int, list[Any]] = {}  # id(request box) -> [box, plain tasks made ready with it]
        plain = 0
        try:
            for t in ev.specs:
                try:
                    if t.inputs or t.outputs or t.environments or t.options.time_end:
                        submit(t, out)
                        continue
                    # A plain spec (no files, no deadline): what _submit, _make_ready, _push_ready
                    # and _transition do for it, with the counts added once for the burst below.
                    tid = t.id
                    rec = tasks[tid] = TaskRecord(tid, t, next(seq))
                    rec.state = "ready"
                    log.append((tid, event, event_id, "new", "ready", now))
                    rec.heap_key = key = _ready_key(rec)
                    heapq.heappush(ready, key)
                    plain += 1
                    box = t.requested
                    shape = shapes.get(id(box))
                    if shape is None:
                        shapes[id(box)] = [box, 1]
                    else:
                        shape[1] += 1
                except Exception as exc:  # noqa: BLE001 - as handle() does for an event: reported, the rest go on
                    failed = TaskSubmitted(ev.now, t)
                    self.failed_events.append((failed, exc))
                    out.append(EventFailed(failed, exc))
        finally:
            if plain:
                self.stats["tasks_submitted"] += plain
                self.state_counts["ready"] += plain
                for box, n in shapes.values():
                    _count(self.waiting_shapes, box, n)
                self._schedule_needed = True

    def _submit(self, t: TaskSpec, out: list[Instruction]) -> None:
        rec = self.tasks[t.id] = TaskRecord(t.id, t, next(self._seq))
        self.stats["tasks_submitted"] += 1
        end = t.options.time_end
        if end:
            heapq.heappush(self.deadlines, (end, t.id))
        if t.inputs or t.outputs or t.environments:
            for m in t.inputs:
                self._file(m.file)
            for f in t.environments:
                self._file(f)
            for m in t.outputs:
                frec = self._file(m.file)
                frec.producer = t.id
                if m.file.kind == "temp":
                    self.lineage[m.file.cache_name] = t
        self._make_ready(rec, out)

    def _push_ready(self, rec: TaskRecord) -> None:
        self._transition(rec, "ready")
        rec.heap_key = _ready_key(rec)
        heapq.heappush(self.ready, rec.heap_key)
        self._schedule_needed = True

    def _make_ready(self, rec: TaskRecord, out: list[Instruction]) -> None:
        """Ready if every temp input exists somewhere; otherwise wait for the first missing one.

        A temp whose producer already finished but which has no replica left was lost with a
        worker: its producer runs again (lineage recovery).
        """
        if rec.spec.inputs and self._pipelines(rec.spec) and self._pin(rec):
            return  # its inputs are being made on one worker: it may go there now (pipelining.py)
        for m in rec.spec.inputs:
            name = m.file.cache_name
            if m.file.kind == "temp" and not self._has_ready_replica(name):
                self._transition(rec, "waiting")
                rec.heap_key = None
                self.waiting_on[name].add(rec.id)
                if not self._producer_active(name):
                    frec = self.files.get(name)
                    producer = self.lineage.get(name)
                    if frec is not None and frec.size < 0 and producer is not None and producer.id in self.tasks:
                        # Its producer ended without ever making it: nothing to recover.
                        self._fail_waiters(name, f"temp file {name} was never made: its producer (task {producer.id}) did not produce it", out)
                    else:
                        self._recover(name, out)
                return
        self._push_ready(rec)

    def _on_cancelled(self, ev: TaskCancelled, out: list[Instruction]) -> None:
        rec = self.tasks.get(ev.task_id)
        if rec is None or rec.state == "done":
            return
        if rec.state == "dispatched" and rec.worker is not None:
            out.append(Kill(rec.worker, rec.id))
            self._release(rec)
        self._finish(rec, C.VINE_RESULT_CANCELLED, -1, out)

    def _on_worker_joined(self, ev: WorkerJoined, out: list[Instruction]) -> None:
        # Checked before anything is recorded: a non-finite total would make every later pass raise.
        if not all(math.isfinite(v) for v in ev.resources.to_dict().values()):
            raise ValueError(f"worker {ev.worker} reports resources {ev.resources.to_dict()}, which are not finite")
        w = WorkerRecord(
            ev.worker, ev.hostname, ev.addrport, ev.resources, ev.features, ev.transfer_addr, ev.end_time, ev.now
        )
        self.workers[w.id] = w
        self.stats["workers_joined"] += 1
        for name, size in ev.cache.items():
            w.replicas[name] = "ready"
            w.cache_bytes += max(size, 0)
            frec = self.files.get(name)
            if frec is not None:
                frec.replicas[w.id] = "ready"
                frec.size = size
        self._schedule_needed = True

    def _on_worker_heard(self, ev: WorkerHeard, out: list[Instruction]) -> None:
        w = self.workers.get(ev.worker)
        if w is not None:
            w.last_heard = ev.now
            w.check_sent = None

    def _on_worker_lost(self, ev: WorkerLost, out: list[Instruction]) -> None:
        w = self.workers.pop(ev.worker, None)
        if w is None:
            return
        self.stats["workers_removed"] += 1
        if ev.reason != "EXPLICIT":
            self.stats["workers_lost"] += 1
        lost_only_copy = []
        for name in w.replicas:
            frec = self.files.get(name)
            if frec is not None:
                frec.replicas.pop(w.id, None)
                if frec.spec.kind == "temp" and not frec.replicas:
                    lost_only_copy.append(name)
        for (dest, name), source in list(self.transfers.items()):
            if dest == w.id or source == w.id:
                self._end_transfer(dest, name, out)
        self.libs.worker_lost(self, w.id)
        for tid in sorted(w.tasks):
            rec = self.tasks[tid]
            self.libs.released(rec)
            rec.worker = None
            rec.allocation = UNSET
            rec.queued = False
            # A lost worker is not the task's fault, but attempts stay bounded (TaskVine loops forever).
            self._retry_or_fail(rec, C.VINE_RESULT_MAX_RETRIES, out)
        w.tasks.clear()
        w.queue.clear()
        if self.tuning["immediate-recovery"]:
            for name in lost_only_copy:
                if not self._producer_active(name):
                    self._recover(name, out)
        self._schedule_needed = True

    def _on_cache_updated(self, ev: CacheUpdated, out: list[Instruction]) -> None:
        w = self.workers.get(ev.worker)
        if w is None:
            return
        frec = self.files.get(ev.name)
        if frec is None:
            # Undeclared while on its way (a worker keeps a file still arriving): delete it now.
            self._drop_replica(w, ev.name)
            out.append(Unlink(w.id, ev.name))
            return
        if w.replicas.get(ev.name) != "ready":
            w.cache_bytes += max(ev.size, 0)
        w.replicas[ev.name] = "ready"
        self._end_transfer(w.id, ev.name, out, ev.size)
        frec.replicas[w.id] = "ready"
        frec.size = ev.size
        if frec.spec.kind == "temp":
            self._replicate(frec, out)
        for tid in self.waiting_on.pop(ev.name, ()):  # consumers of a temp that now exists
            rec = self.tasks.get(tid)
            if rec is not None and rec.state == "waiting":
                self._make_ready(rec, out)

    def _on_cache_invalid(self, ev: CacheInvalid, out: list[Instruction]) -> None:
        self._end_transfer(ev.worker, ev.name, out, failed=True)
        w = self.workers.get(ev.worker)
        if w is not None and self._drop_replica(w, ev.name):
            self._schedule_needed = True
        frec = self.files.get(ev.name)
        if frec is not None:
            frec.replicas.pop(ev.worker, None)

    def _on_task_finished(self, ev: TaskFinished, out: list[Instruction]) -> None:
        rec = self.tasks.get(ev.task_id)
        w = self.workers.get(ev.worker)
        for name in ev.unlinked:
            if w is not None and self._drop_replica(w, name):
                frec = self.files.get(name)
                if frec is not None:
                    frec.replicas.pop(w.id, None)
        if self.libs.owns(ev.task_id):
            self.libs.instance_ended(self, ev, out)
            return
        if rec is None or rec.state != "dispatched" or rec.worker != ev.worker:
            return  # a late report for a task already cancelled or moved elsewhere
        if rec.spec.library_required is not None:
            self.libs.call_ended(self, rec, ev, out)
        allocated = rec.allocation
        self._release(rec)
        if w is not None:
            w.completed += 1
            w.busy_time += ev.runtime
        if ev.result == C.VINE_RESULT_SUCCESS and rec.spec.library_required is None:
            n, mean = self.category_time.get(rec.spec.category, (0, 0.0))
            self.category_time[rec.spec.category] = (n + 1, ev.runtime if n == 0 else 0.9 * mean + 0.1 * ev.runtime)
            self.categories.record(rec.spec.category, ev.measured, ev.runtime)
        if ev.result == C.VINE_RESULT_FORSAKEN:
            rec.forsaken += 1
            self.forsaken_on[rec.id] = ev.worker  # tried elsewhere first (see Placement.choose_worker)
            if rec.spec.max_forsaken >= 0 and rec.forsaken > rec.spec.max_forsaken:
                self._finish(rec, C.VINE_RESULT_FORSAKEN, ev.exit_code, out)
            else:
                # Unlimited forsaking still ends (TaskVine retries forever): after max-task-attempts,
                # a task whose input could not be obtained ends as what it is, "input missing".
                self._retry_or_fail(rec, C.VINE_RESULT_INPUT_MISSING if ev.missing_input else C.VINE_RESULT_FORSAKEN, out)
            return
        if ev.retry:
            self._retry_or_fail(rec, ev.result, out)
            return
        if ev.result == C.VINE_RESULT_RESOURCE_EXHAUSTION and self._may_grow(rec, ev.exceeded, allocated):
            rec.exhaustions += 1
            self.stats["tasks_exhausted_attempts"] += 1
            self._retry_or_fail(rec, ev.result, out)
            return
        self._finish(rec, ev.result, ev.exit_code, out)

    def _may_grow(self, rec: TaskRecord, exceeded: tuple[str, ...], allocated: Resources) -> bool:
        """Retry at the category's largest box only if the task went over a share we chose, once,
        within its own retry limit, and some worker offers more (rules: core/state/categories.py)."""
        t = rec.spec
        if t.max_retries > 0 and rec.exhaustions >= t.max_retries:
            return False
        largest = Resources(*(max((max(getattr(w.total, f), 0) for w in self.workers.values()), default=0)
                              for f in ("cores", "memory", "disk", "gpus")))
        return self.categories.may_grow(t.category, t.requested, rec.exhaustions, exceeded, allocated, largest,
                                        self.tuning["disk-proportion-available-to-task"])

    def _on_file_undeclared(self, ev: FileUndeclared, out: list[Instruction]) -> None:
        frec = self.files.get(ev.name)
        if frec is None:
            return
        for wid in list(frec.replicas):
            w = self.workers.get(wid)
            if w is not None:
                self._drop_replica(w, ev.name)
                out.append(Unlink(wid, ev.name))
            self._end_transfer(wid, ev.name, out)  # else its source would count a transfer that never ends
        frec.replicas.clear()
        if ev.forget:
            del self.files[ev.name]
            # A forgotten temp can never be remade: free its producer and end whoever still waits.
            self.lineage.pop(ev.name, None)
            self.recoveries.pop(ev.name, None)
            self._fail_waiters(ev.name, f"file {ev.name} was undeclared", out)

    def _drop_replica(self, w: WorkerRecord, name: str) -> bool:
        """Forget ``w``'s replica of ``name``, keeping its cache tally right; True if it had one."""
        state = w.replicas.pop(name, None)
        if state == "ready":
            frec = self.files.get(name)
            w.cache_bytes = max(0, w.cache_bytes - max(frec.size if frec else 0, 0))
        return state is not None

    def _on_tick(self, ev: Tick, out: list[Instruction]) -> None:
        while self.deadlines and self.deadlines[0][0] < ev.now:
            _, tid = heapq.heappop(self.deadlines)
            rec = self.tasks.get(tid)
            if rec is not None and rec.state in ("ready", "waiting"):
                self._finish(rec, C.VINE_RESULT_MAX_END_TIME, -1, out)
        interval = self.tuning["keepalive-interval"]
        timeout = self.tuning["keepalive-timeout"]
        if interval > 0:
            for w in list(self.workers.values()):
                if w.check_sent is not None:
                    if timeout > 0 and ev.now - w.check_sent > timeout:
                        out.append(RemoveWorker(w.id, "keepalive timeout"))
                        self._on_worker_lost(WorkerLost(ev.now, w.id, "FAILURE"), out)
                elif ev.now - w.last_heard > interval:
                    w.check_sent = ev.now
                    out.append(Keepalive(w.id))
        # Tasks waiting for a start time, or out of time, need a look even if nothing else changed.
        if self.ready or self._passed:
            self._schedule_needed = True

    # -- task outcomes ------------------------------------------------------------------------------------
    def _release(self, rec: TaskRecord) -> None:
        w = self.workers.get(rec.worker) if rec.worker else None
        if w is not None:
            if rec.queued:
                w.queue.remove(rec.id)
            else:
                w.committed = w.committed - rec.allocation
            w.tasks.discard(rec.id)
            self._promote(w)
        self.libs.released(rec)
        rec.worker = None
        rec.allocation = UNSET
        rec.queued = False
        self._schedule_needed = True

    def _retry_or_fail(self, rec: TaskRecord, result_if_exhausted: int, out: list[Instruction]) -> None:
        limit = int(self.tuning["max-task-attempts"])
        if rec.attempts >= limit:
            self._finish(rec, result_if_exhausted if result_if_exhausted != C.VINE_RESULT_SUCCESS else C.VINE_RESULT_MAX_RETRIES, -1, out)
        else:
            self._make_ready(rec, out)

    def _finish(self, rec: TaskRecord, result: int, exit_code: int, out: list[Instruction]) -> None:
        self._transition(rec, "done")
        self.forsaken_on.pop(rec.id, None)
        rec.heap_key = None
        self.stats["tasks_done"] += 1
        if result == C.VINE_RESULT_SUCCESS and exit_code == 0:
            self.stats["tasks_succeeded"] += 1
        else:
            self.stats["tasks_failed"] += 1
        if result == C.VINE_RESULT_CANCELLED:
            self.stats["tasks_cancelled"] += 1
        if not rec.recovery:
            out.append(ReturnTask(rec.id, result, exit_code))
        for m in rec.spec.outputs:
            name = m.file.cache_name
            if self.recovering.get(name) == rec.id:
                del self.recovering[name]
            if m.file.kind == "temp" and not self._has_ready_replica(name):
                what = "recovery copy of task" if rec.recovery else "task"
                reason = (f"temp file {name} cannot be made: its producer ({what} {rec.id}) ended with '{C.result_string(result)}'"
                          + (f" (exit code {exit_code})" if result == C.VINE_RESULT_SUCCESS else ""))
                self._fail_consumers(name, reason, out)
            elif self.pinned_for:
                self.pinned_for.pop(name, None)

    def _fail_consumers(self, name: str, reason: str, out: list[Instruction]) -> None:
        """End the tasks waiting for temp ``name`` and those sent ahead for it (pipelining.py), which
        can no longer get it; and, through their own ends, everything downstream of them.

        Iterative on purpose: ending a consumer ends its own consumers, so a chain of N links whose
        first one fails would otherwise recurse N levels deep (_finish -> _fail_waiters -> _finish)
        and, past Python's recursion limit, leave the rest of the chain waiting forever. A call made
        while the cascade runs only queues its file."""
        if self._failing is not None:
            self._failing.append((name, reason))
            return
        self._failing = pending = deque([(name, reason)])
        try:
            while pending:
                n, r = pending.popleft()
                self._fail_waiters(n, r, out)
                self._fail_pinned(n, r, out)
        finally:
            self._failing = None

    def _on_tasks_retrieved(self, ev: TasksRetrieved, out: list[Instruction]) -> None:
        """Drop finished tasks' records once the user has them (keeps memory flat on long runs)."""
        for task_id in ev.task_ids:
            rec = self.tasks.get(task_id)
            if rec is not None and rec.state == "done":
                del self.tasks[task_id]
                self.state_counts["done"] -= 1

    # -- scheduling ----------------------------------------------------------------------------------------
    def _schedule(self, now: float, out: list[Instruction]) -> None:  # noqa: C901 - the scheduling pass: its order of checks is the policy, kept in one place
        if not self.workers or len(self.workers) < self.tuning["wait-for-workers"]:
            return
        depth = int(self.tuning["attempt-schedule-depth"])
        if not self.ready and self._passed:
            # The last pass reached the end of the queue: start again from the top.
            self.ready, self._passed = self._passed, []
            heapq.heapify(self.ready)
        misses = 0
        while self.ready and misses < depth:
            # With no free room anywhere, only prefetching is left: it stops at the first task it
            # cannot queue, so a pass costs little when the queue is full of such tasks.
            prefetch_only = not self.placement.has_room()
            if prefetch_only and not self._prefetch_room() and not self._pipelining_room():
                break
            key = heapq.heappop(self.ready)
            tid = key[3]
            rec = self.tasks.get(tid)
            if rec is None or rec.state != "ready" or rec.heap_key is not key:
                continue  # stale heap entry (lazy deletion)
            if prefetch_only:
                if rec.pinned is not None and rec.spec.library_required is None and self._place_pinned_task(rec, now, out):
                    continue
                if not self._prefetch_room():
                    heapq.heappush(self.ready, key)  # only a pinned task could have gone: the head keeps its place
                    break
                target = None if rec.spec.past_end(now) else self._prefetch_worker(rec, now)
                if target is None or not self._inputs_exist_quiet(rec):
                    self._passed.append(key)
                    break
                self._place(rec, target[0], target[1], out, queued=True)
                continue
            t = rec.spec
            if t.past_end(now):
                self._finish(rec, C.VINE_RESULT_MAX_END_TIME, -1, out)
                continue
            if t.before_start(now):
                self._passed.append(key)
                misses += 1
                continue
            if not self._inputs_exist(rec, out):
                continue  # parked as waiting on a missing temp
            if rec.pinned is not None:
                choice = self._pinned_choice(rec, now)
                if choice is None:
                    self._passed.append(key)  # no room there yet; its inputs will come to exist
                    misses += 1
                    continue
                w, alloc = choice
                self._place_pinned(rec, w, alloc, out)
                continue
            choice = self.placement.choose_worker(rec, now)
            if choice is None:
                choice = self.libs.make_room(self, rec, now, out)  # start a library, or evict idle ones
                if self._is_done(rec):  # make_room ended it (its library is gone)
                    continue
            if choice is None:
                queue_on = self._prefetch_worker(rec, now)
                if queue_on is not None:
                    self._place(rec, queue_on[0], queue_on[1], out, queued=True)
                    continue
            if choice is None:
                if not rec.warned_unfit and not self.placement.could_ever_fit(rec):
                    rec.warned_unfit = True
                    out.append(Warn(self.placement.unfit_message(rec)))
                self._passed.append(key)
                misses += 1
                continue
            w, alloc = choice
            self._place(rec, w, alloc, out)

    def _inputs_exist_quiet(self, rec: TaskRecord) -> bool:
        return all(m.file.kind != "temp" or self._has_ready_replica(m.file.cache_name) for m in rec.spec.inputs)

    def _inputs_exist(self, rec: TaskRecord, out: list[Instruction]) -> bool:
        """True when ``rec`` may be placed: its temp inputs exist, or are being made where it is pinned."""
        missing = False
        for m in rec.spec.inputs:
            if m.file.kind == "temp" and not self._has_ready_replica(m.file.cache_name):
                if rec.pinned is not None and self._maker_of(m.file.cache_name, rec.spec.library_required is not None) == rec.pinned:
                    missing = True
                    continue
                rec.pinned = None
                self._make_ready(rec, out)  # parks it as waiting on that temp (or pins it where it is made now)
                return False
        if not missing:
            rec.pinned = None  # everything exists now: any worker will do
        return True

    def _place(self, rec: TaskRecord, w: WorkerRecord, alloc: Resources, out: list[Instruction], queued: bool = False) -> None:
        """Send ``rec`` to ``w``, to start there now or (``queued``) to wait in its prefetch queue,
        committing nothing until it starts (core/state/prefetch.py). The one place a task is placed."""
        for f in rec.spec.environments:
            self._stage(f, w, out, placing=True)
        for m in rec.spec.inputs:
            self._stage(m.file, w, out, placing=True)
        self._transition(rec, "dispatched")
        rec.heap_key = None
        rec.worker = w.id
        rec.allocation = alloc
        rec.attempts += 1
        rec.queued = queued
        w.tasks.add(rec.id)
        if queued:
            w.queue.append(rec.id)
            self.stats["tasks_prefetched"] += 1
        else:
            w.committed = w.committed + alloc
            self.libs.placed(rec, w)
        self.stats["tasks_dispatched"] += 1
        out.append(Dispatch(w.id, rec.id, alloc, queued=queued))
        if rec.spec.outputs and self._pins_consumers(rec, queued):
            self._pin_consumers(rec)

    # -- queries ---------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Tasks in each state (a record still "new", left half-made by a handler that raised, in none)."""
        return dict(self.state_counts)

    def hungry(self) -> int:
        counts = self.state_counts
        total = Resources(0, 0, 0, 0)
        committed = Resources(0, 0, 0, 0)
        for w in self.workers.values():
            total = total + w.total
            committed = committed + w.committed
        sample = request_sample(self.waiting_shapes, 100)
        return hungry_count(
            workers=len(self.workers),
            waiting=counts["ready"] + counts["waiting"],
            running=counts["dispatched"],
            total=total,
            committed=committed,
            waiting_requests=sample,
            minimum=int(self.tuning["hungry-minimum"]),
            factor=self.tuning["hungry-minimum-factor"],
        )
