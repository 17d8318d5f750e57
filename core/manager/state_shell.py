"""The shell around the scheduler state in the manager's I/O thread: events in, instructions out.

::

    events (links, the user's posts, the ticker)
        │
        ▼  apply(*events)
    SchedulerState.handle() ──► instructions ──► execute(ins)
                                                   ├─ Dispatch, SendFile, Fetch*, Kill, ... ──► the worker's link
                                                   ├─ RemoveWorker, EventFailed ──────────────► abort that link
                                                   ├─ Warn ───────────────────────────────────► log
                                                   └─ ReturnTask ──► the user's Task filled in ──► done queue ──► wait()
    then one TasksRetrieved for every task handed back in the step (the state lets them go)

The connections turn bytes into events (core/manager/links.py); this member turns the state's
decisions into sends, log lines and finished tasks, and runs the ticker (every 0.5 s: workers heard,
time passing, slow workers, the performance log). Everything here runs in the I/O thread; the only
thing it shares with the user's thread is the done queue and its condition.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

from .. import constants as C
from ..api.files import File
from ..api.task import Task
from ..state.scheduler import (
    Event,
    EventFailed,
    FileUndeclared,
    Instruction,
    RemoveWorker,
    ReturnTask,
    SchedulerState,
    SendFile,
    TasksRetrieved,
    TasksSubmitted,
    Tick,
    Warn,
    WorkerHeard,
)
from ..state.spec import TaskSpec

if TYPE_CHECKING:
    from .links import WorkerLink, WorkerLinks
    from .logs import RunLogs
    from .metrics import ManagerMetrics
    from .tasks_cache import TasksCache
    from .worker_controls import WorkerControls

log = logging.getLogger("core.manager")

# Results whose exit code is the task's own (the others report -1 or a code the worker made up).
_OWN_EXIT_CODE = (C.VINE_RESULT_SUCCESS, C.VINE_RESULT_OUTPUT_MISSING, C.VINE_RESULT_SIGNAL,
                  C.VINE_RESULT_STDOUT_MISSING, C.VINE_RESULT_MAX_WALL_TIME)


class StateShell:
    """A member of :class:`core.manager.Manager`: applies events to ``state`` and carries out what it
    decides. Lent the manager's state, logs, metrics, link table, task and file tables, the done
    queue and its condition, the loop, and callables for the parts made after it (the links' send,
    the worker controls, the tasks cache, the stats, a task's finalizer)."""

    def __init__(self, state: SchedulerState, logs: RunLogs, metrics: ManagerMetrics, links: dict[str, WorkerLink],
                 tasks: dict[int, Task], files: dict[str, File], done: collections.OrderedDict[int, Task],
                 cond: threading.Condition, loop: asyncio.AbstractEventLoop, *,
                 worker_links: Callable[[], WorkerLinks], worker_controls: Callable[[], WorkerControls],
                 tasks_cache: Callable[[], TasksCache | None], collect_stats: Callable[[], dict[str, float]],
                 finalize: Callable[[Task], None]) -> None:
        self._state = state
        self._logs = logs
        self._metrics = metrics
        self._links = links
        self._tasks = tasks
        self._files = files
        self._done = done
        self._cond = cond
        self._loop = loop
        self._worker_links = worker_links
        self._worker_controls = worker_controls
        self._tasks_cache = tasks_cache
        self._collect_stats = collect_stats
        self._finalize = finalize
        self._retrieved: list[int] = []  # task ids returned in the current step (one TasksRetrieved)
        self._notify_pending = False
        self._perf_check_at = 0.0  # the tick collects stats for the performance log again from then

    # -- events in, instructions out ---------------------------------------------------------------
    def apply_posted(self, *posted: Event | TaskSpec) -> None:
        """What the user's threads posted (core/manager/io_thread.py), in order. A submit posts its
        task's spec alone, and each run of specs goes to the state as one TasksSubmitted: a burst of
        submits is one event, not one per task (an event object made in the user's thread and a
        pass of handle() each cost about as much as the task's record)."""
        events: list[Event] = []
        run: list[TaskSpec] = []
        for item in posted:
            if type(item) is TaskSpec:
                run.append(item)
                continue
            if run:
                events.append(TasksSubmitted(time.time(), tuple(run)))
                run = []
            events.append(item)  # type: ignore[arg-type]  # not a TaskSpec: an Event
        if run:
            events.append(TasksSubmitted(time.time(), tuple(run)))
        self.apply(*events)

    def apply(self, *events: Event) -> None:
        """Hand ``events`` to the state and carry out every instruction it returns, in order."""
        # Wall-clock, as TaskVine's time_scheduling is: time.thread_time() is a system call on many
        # VMs (3.2 us on the 2-core test machine, a third of the I/O thread's samples under small
        # FunctionCalls), and handle() does not block, so for it wall time and CPU time agree.
        began = time.perf_counter()
        instructions = self._state.handle(*events)
        self._metrics.busy["scheduling"] += (time.perf_counter() - began) * 1e6
        for ins in instructions:
            self.execute(ins)
        if self._retrieved:  # the user's tasks handed back in this step: the scheduler lets them go
            retrieved, self._retrieved = tuple(self._retrieved), []
            self.apply(TasksRetrieved(time.time(), retrieved))

    def execute(self, ins: Instruction) -> None:
        if isinstance(ins, ReturnTask):
            self._return_task(ins)
        elif isinstance(ins, EventFailed):
            self._event_failed(ins)
        elif isinstance(ins, RemoveWorker):
            link = self._links.get(ins.worker)
            if link is not None:
                self._logs.debug(f"removing worker {ins.worker} ({link.addrport}): {ins.reason}")
                # Abort, not close: close() waits to flush unsent bytes, which a hung worker never
                # reads, so its link (and DISCONNECTION record) would linger until it woke up.
                link.conn.writer.transport.abort()
        elif isinstance(ins, Warn):
            log.warning("%s", ins.message)
            self._logs.debug(f"warning: {ins.message}")
        else:
            link = self._links.get(getattr(ins, "worker", ""))
            if link is None:
                return
            if link.idle and link.outbox.empty() and not isinstance(ins, SendFile):
                # Nothing queued ahead of it: send now instead of waking the sender (saves a loop turn per task).
                try:
                    self._worker_links().send_message(link, ins)
                except OSError as exc:
                    self._logs.debug(f"sending to {link.id} failed: {exc}")
                    link.conn.close()
            else:
                link.outbox.put_nowait(ins)

    def _event_failed(self, ins: EventFailed) -> None:
        """A handler raised (a bug, or a value no check caught): the decisions made before it were
        carried out; the event is logged and dropped, and the worker it came from disconnected,
        so one bad peer cannot stop the manager serving everyone else."""
        ev, exc = ins.event, ins.error
        wid = getattr(ev, "worker", None)
        what = type(ev).__name__ if ev is not None else "a scheduling pass"
        log.error("dropped %s%s: %s: %s", what, f" from worker {wid}" if wid else "", type(exc).__name__, exc)
        self._logs.debug(f"dropped {what} ({ev!r}): {type(exc).__name__}: {exc}")
        link = self._links.get(wid) if isinstance(wid, str) else None
        if link is not None:
            link.disconnect_reason = "FAILURE"
            link.conn.writer.transport.abort()

    # -- finished tasks to the user's thread --------------------------------------------------------
    def _return_task(self, ins: ReturnTask) -> None:
        task = self._tasks.get(ins.task_id)
        self._retrieved.append(ins.task_id)
        self._logs.debug_task_retrieved(ins.task_id, done=task is None)  # None: a recovery task, never waited for
        if task is None:
            return
        task._result = ins.result
        if ins.result not in _OWN_EXIT_CODE:
            task._exit_code = ins.exit_code if ins.exit_code != -1 else task._exit_code
        task._state = C.VINE_TASK_RETRIEVED
        task._done_time = time.time()
        task.metrics["time_when_done"] = task._done_time * 1e6
        tasks_cache = self._tasks_cache()
        if tasks_cache is not None:
            tasks_cache.record(task)  # before the finalizer: a PythonTask then lets its buffers go
        self._unlink_undeclared_inputs(task)
        self._finalize(task)
        totals = self._logs.transfer_totals
        self._metrics.task_returned(task, ins.result, (totals["time_send"] + totals["time_receive"]) / (self._metrics.times.tasks + 1))
        result_name = C.result_enum_name(ins.result)
        self._logs.task_done(task.id, result_name, task._exit_code)
        self._logs.graph_task(task.id, task.command, [m.file.cache_name for m in task.inputs], [m.file.cache_name for m in task.outputs])
        with self._cond:
            self._done[task.id] = task
        # One wake-up of the user's thread per loop turn, however many tasks finished in it.
        if not self._notify_pending:
            self._notify_pending = True
            self._loop.call_soon(self._notify_waiters)

    def _unlink_undeclared_inputs(self, task: Task) -> None:
        """Inputs the user undeclared while ``task`` still needed them were sent to workers all the
        same; once no unfinished task needs them, workers delete them now, not with the workflow."""
        gone = {m.file.cache_name for m in task.inputs if m.file.cache_name not in self._files}
        if not gone:
            return
        gone.difference_update(m.file.cache_name for t in self._tasks.values()
                               if t is not task and t._state < C.VINE_TASK_RETRIEVED for m in t.inputs)
        for name in gone:
            self._loop.call_soon(self.apply, FileUndeclared(time.time(), name, forget=True))

    def notify_now(self) -> None:
        """Wake the user's threads now for the tasks handed back so far in this loop turn (called
        once the frames of a read have been answered); the wake-up queued for later has nothing left to do."""
        if self._notify_pending:
            self._notify_waiters()

    def _notify_waiters(self) -> None:
        if not self._notify_pending:
            return  # done already in this turn (notify_now)
        self._notify_pending = False
        with self._cond:
            self._cond.notify_all()

    # -- the ticker ----------------------------------------------------------------------------------
    def _heard_events(self) -> list[WorkerHeard]:
        """Workers heard from since the last tick (each frame's arrival is noted on its link), as
        events: one per worker per tick instead of one per frame, before the keepalive check."""
        heard = []
        for link in self._links.values():
            if link.heard_at > link.heard_told:
                link.heard_told = link.heard_at
                heard.append(WorkerHeard(link.heard_at, link.id))
        return heard

    async def tick_loop(self) -> None:
        """Every 0.5 s until cancelled: workers heard, a Tick (timeouts, keepalives), slow workers,
        the performance log, the logs flushed."""
        while True:
            await asyncio.sleep(0.5)
            try:
                self.apply(*self._heard_events(), Tick(time.time()))
                self._worker_controls().check_workers(time.time())
                self._performance_tick(time.time())
                self._logs.flush()
            except Exception:  # noqa: BLE001 - the ticker must never die
                log.exception("tick failed")

    def _performance_tick(self, now: float) -> None:
        """A performance-log line when one is due. The stats are only collected when a line could be
        written (they walk the workers and links; the scheduler keeps the task counts); with many
        tasks known, a row found unchanged is looked at again after a whole interval rather than at
        every tick."""
        interval = self._state.tuning.get("perf-log-interval", 5)
        if now < self._perf_check_at or not self._logs.performance_due(now, interval):
            return
        self._logs.performance(self._collect_stats(), now, interval)
        if self._logs.performance_due(now, interval):  # nothing written: the row had not changed
            self._perf_check_at = now + (interval if len(self._state.tasks) > 10_000 else 0)
