"""SchedulerState driven by events and a fake clock: no manager, no sockets, no sleeping.

Each test builds a :class:`Sim` (a SchedulerState plus a clock and id counter), feeds it events,
and checks the instructions that come out. ``Sim.handle`` calls ``validate()`` after every step.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from core import constants as C
from core.api.files import File
from core.api.specs import task_spec
from core.api.task import Task
from core.state import scheduler as S
from core.state.placement import Placement
from core.state.resources import Resources
from core.state.scheduler import (
    CacheInvalid,
    CacheUpdated,
    Dispatch,
    Event,
    FetchPeer,
    FetchUrl,
    HostBlocked,
    HostUnblocked,
    Instruction,
    Keepalive,
    Kill,
    PolicyChanged,
    RemoveWorker,
    ReturnTask,
    RunMinitask,
    SchedulerState,
    SendFile,
    TaskCancelled,
    TaskFinished,
    TaskSubmitted,
    Tick,
    Warn,
    WorkerHeard,
    WorkerJoined,
    WorkerLost,
)
from core.state.spec import TaskSpec

I = TypeVar("I", bound=Instruction)

# The manual's example worker (REFERENCE §3.3): 4 cores, 12 GB memory, 36 GB disk.
MANUAL = {"cores": 4, "memory": 12000, "disk": 36000}


class Sim:
    """A SchedulerState with a fake clock, task ids, and one-line helpers for common events."""

    def __init__(self, tuning: dict[str, float] | None = None, policy: str = "files", seed: int = 7, now: float = 1000.0) -> None:
        # Prefetch and task pipelining (queueing tasks on workers) are tested on their own (test_task_pipelining.py);
        # elsewhere a dispatch means "runs now".
        self.state = SchedulerState({"worker-prefetch": 0, "task-pipelining": 0, **(tuning or {})}, policy=policy, seed=seed)
        self.now = now
        self._ids = itertools.count(1)
        self._ports = itertools.count(9200)

    def handle(self, *events: Event) -> list[Instruction]:
        out = self.state.handle(*events)
        self.state.validate()
        check_transfer_counts(self.state)
        return out

    def prepare(self, task: Task) -> Task:
        """What Manager.submit does to a task before posting TaskSubmitted."""
        task._id = next(self._ids)
        task._state = C.VINE_TASK_READY
        return task

    def submit(self, *tasks: Task) -> list[Instruction]:
        return self.handle(*(TaskSubmitted(self.now, task_spec(self.prepare(t))) for t in tasks))

    def join(self, wid: str, cores: float = 4, memory: float = 12000, disk: float = 36000, gpus: float = 0, *,
             hostname: str | None = None, features: Iterable[str] = (), cache: dict[str, int] | None = None,
             transfer: bool = True, end_time: float = 0.0) -> list[Instruction]:
        port = next(self._ports)
        return self.handle(WorkerJoined(
            self.now, wid, hostname or f"host-{wid}", f"10.0.0.9:{port}", Resources(cores, memory, disk, gpus),
            frozenset(features), dict(cache or {}), f"10.0.0.9:{port + 1000}" if transfer else None, end_time,
        ))

    def finish(self, wid: str, task: Task | int, result: int = C.VINE_RESULT_SUCCESS, exit_code: int = 0, **kw: Any) -> list[Instruction]:
        tid = task if isinstance(task, int) else task.id
        return self.handle(TaskFinished(self.now, wid, tid, result, exit_code, **kw))

    def lose(self, wid: str, reason: str = "FAILURE") -> list[Instruction]:
        return self.handle(WorkerLost(self.now, wid, reason))

    def cancel(self, task: Task) -> list[Instruction]:
        return self.handle(TaskCancelled(self.now, task.id))

    def cached(self, wid: str, f: File, size: int = 1000) -> list[Instruction]:
        return self.handle(CacheUpdated(self.now, wid, f.cache_name, size))

    def heard(self, wid: str) -> list[Instruction]:
        return self.handle(WorkerHeard(self.now, wid))

    def tick(self, advance: float = 0.0) -> list[Instruction]:
        self.now += advance
        return self.handle(Tick(self.now))

    def where(self, task: Task) -> str | None:
        return self.state.tasks[task.id].worker

    def task_state(self, task: Task) -> str:
        return self.state.tasks[task.id].state


def check_transfer_counts(state: SchedulerState) -> None:
    """The per-source transfer counters agree with the table of transfers in flight."""
    outgoing: Counter[str] = Counter()
    manager: Counter[str] = Counter()
    urls: Counter[str] = Counter()
    for (dest, name), source in state.transfers.items():
        assert dest in state.workers, f"transfer of {name} to departed worker {dest}"
        assert state.workers[dest].replicas.get(name) == "creating", f"transfer of {name} to {dest} but its replica is not creating"
        if source == "manager":
            manager[name] += 1
        elif source.startswith("url:"):
            urls[source[4:]] += 1
        else:
            outgoing[source] += 1
    for wid, w in state.workers.items():
        assert w.outgoing == outgoing[wid], f"{wid} serves {outgoing[wid]} transfers but counts {w.outgoing}"
    assert {k: v for k, v in state.manager_sending.items() if v} == dict(manager)
    assert {k: v for k, v in state.url_active.items() if v} == dict(urls)


def of(out: list[Instruction], cls: type[I]) -> list[I]:
    return [i for i in out if isinstance(i, cls)]


def placed(out: list[Instruction]) -> dict[int, str]:
    """task id -> worker for every Dispatch in ``out``."""
    return {d.task_id: d.worker for d in of(out, Dispatch)}


def box(r: Resources) -> tuple[float, float, float, float]:
    return (r.cores, r.memory, r.disk, r.gpus)


def buffer(data: bytes = b"data") -> File:
    return File(None, "buffer", "buffer", data=data)


# --- dispatch and allocation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_, expected",
    [
        ({"cores": 1}, (1, 3000, 6750, 0)),  # p = 1/4; disk 9000 before the 0.75 margin
        ({"cores": 1, "memory": 6000}, (2, 6000, 13500, 0)),  # p = 1/2
        ({"cores": 1, "memory": 6000, "disk": 27000}, (4, 12000, 27000, 0)),  # p = .75 -> whole worker
        ({}, (4, 12000, 27000, 0)),  # nothing asked: the whole worker
    ],
)
def test_dispatch_uses_the_manuals_allocation(request_: dict[str, float], expected: tuple[float, ...]) -> None:
    sim = Sim()
    sim.join("w1", **MANUAL)
    t = Task("run", **request_)
    out = sim.submit(t)
    assert of(out, Dispatch) == [Dispatch("w1", t.id, Resources(*expected))]
    assert box(sim.state.workers["w1"].committed) == expected
    assert sim.task_state(t) == "dispatched"


def test_dispatch_picks_a_worker_the_task_fits() -> None:
    sim = Sim()
    sim.join("small", cores=2, memory=4000, disk=10000)
    sim.join("big", cores=8, memory=24000, disk=72000)
    many_cores, much_memory, tiny = Task("a", cores=3), Task("b", cores=1, memory=5000), Task("c", cores=1)
    out = sim.submit(many_cores, much_memory, tiny)
    got = placed(out)
    assert got[many_cores.id] == "big" and got[much_memory.id] == "big"
    assert got[tiny.id] in ("small", "big")


def test_whole_worker_tasks_fill_workers_one_each() -> None:
    sim = Sim()
    for w in ("w1", "w2"):
        sim.join(w, **MANUAL)
    tasks = [Task(f"t{i}") for i in range(3)]
    out = sim.submit(*tasks)
    assert sorted(placed(out).values()) == ["w1", "w2"]
    assert sim.state.counts() == {"waiting": 0, "ready": 1, "dispatched": 2, "done": 0}


def test_finished_task_returns_and_frees_its_room() -> None:
    sim = Sim()
    sim.join("w1", cores=1, memory=1000, disk=1000)
    a, b = Task("a"), Task("b")
    sim.submit(a, b)
    out = sim.finish("w1", a, exit_code=3)
    assert ReturnTask(a.id, C.VINE_RESULT_SUCCESS, 3) in out
    assert placed(out) == {b.id: "w1"}
    assert sim.state.stats["tasks_done"] == 1


def test_a_late_or_foreign_report_is_ignored() -> None:
    sim = Sim()
    sim.join("w1")
    sim.join("w2")
    t = Task("t")
    sim.submit(t)
    other = "w2" if sim.where(t) == "w1" else "w1"
    assert sim.finish(other, t) == []  # not where the task runs
    assert sim.finish("w9", t) == []  # no such worker
    assert sim.finish("w1", 999) == []  # no such task
    assert sim.task_state(t) == "dispatched"


# --- ready order -----------------------------------------------------------------------------------


def test_ready_order_is_priority_then_submission() -> None:
    sim = Sim()
    prios = [0, 5, 0, 5, -1, 10, 5]
    tasks = [Task(f"t{i}", priority=p) for i, p in enumerate(prios)]
    assert sim.submit(*tasks) == []  # no workers yet
    out = sim.join("w1", cores=1, memory=1000, disk=1000)  # room for one task at a time
    order = []
    running = next(iter(placed(out)), None)
    while running is not None:
        order.append(running)
        out = sim.finish("w1", running)
        running = next(iter(placed(out)), None)
    expected = [t.id for t in sorted(tasks, key=lambda t: (-t.priority, t.id))]
    assert order == expected


def test_requeued_task_keeps_its_place() -> None:
    sim = Sim()
    sim.join("w1", cores=1, memory=1000, disk=1000)
    first, second = Task("first"), Task("second")
    sim.submit(first, second)
    assert sim.where(first) == "w1"
    out = sim.lose("w1")
    assert of(out, ReturnTask) == []
    out = sim.join("w2", cores=1, memory=1000, disk=1000)
    assert placed(out) == {first.id: "w2"}  # ahead of 'second', which never ran


# --- never over-commit -------------------------------------------------------------------------------


def test_random_load_on_three_workers_never_overcommits() -> None:
    rng = random.Random(20240611)
    sim = Sim({"max-task-attempts": 1000})
    shapes = {"w1": (4, 12000, 36000), "w2": (2, 4000, 8000), "w3": (8, 16000, 64000)}
    for wid, (c, m, d) in shapes.items():
        sim.join(wid, c, m, d)
    running: dict[int, str] = {}  # what the instruction stream says runs where
    returned: set[int] = set()
    tasks: dict[int, Task] = {}

    def apply(out: list[Instruction]) -> None:
        for ins in out:
            if isinstance(ins, Dispatch):
                assert ins.task_id not in running, f"task {ins.task_id} dispatched twice"
                assert ins.task_id not in returned
                running[ins.task_id] = ins.worker
            elif isinstance(ins, Kill):
                assert running.pop(ins.task_id) == ins.worker
            elif isinstance(ins, ReturnTask):
                assert ins.task_id not in returned, f"task {ins.task_id} returned twice"
                returned.add(ins.task_id)
                running.pop(ins.task_id, None)
        # The instruction stream and the state agree, and no worker holds more than it has.
        for wid, w in sim.state.workers.items():
            assert w.tasks == {t for t, where in running.items() if where == wid}
            used = Resources.zero()
            for tid in w.tasks:
                used = used + sim.state.tasks[tid].allocation
            assert used.fits_in(w.total), (wid, used, w.total)

    for step in range(600):
        r = rng.random()
        if r < 0.45:
            kw = {k: v for k, v in (("cores", rng.choice([None, 1, 1, 2, 3])), ("memory", rng.choice([None, 500, 1000, 3000, 5000])),
                                    ("disk", rng.choice([None, 100, 2000]))) if v is not None}
            t = Task(f"s{step}", priority=rng.choice([0, 0, 1, 2]), **kw)
            out = sim.submit(t)
            tasks[t.id] = t
        elif r < 0.85 and running:
            tid = rng.choice(sorted(running))
            out = sim.finish(running.pop(tid), tid, result=rng.choice([0, 0, 0, C.VINE_RESULT_FORSAKEN]))
        elif r < 0.9 and running:
            out = sim.cancel(tasks[rng.choice(sorted(running))])
        elif r < 0.94:
            wid = rng.choice(sorted(shapes))
            if wid in sim.state.workers:
                out = sim.lose(wid)
                for tid in [t for t, w in running.items() if w == wid]:
                    del running[tid]
            else:
                out = sim.join(wid, *shapes[wid])
        else:
            out = sim.tick(1.0)
        apply(out)
    assert len(returned) > 100 and running


# --- tasks no worker can hold --------------------------------------------------------------------------


def test_too_big_task_warns_once_stays_queued_and_runs_on_a_big_worker() -> None:
    sim = Sim()
    sim.join("w1", **MANUAL)
    big = Task("big", cores=16)
    out = sim.submit(big)
    warns = of(out, Warn)
    assert len(warns) == 1 and f"task {big.id}" in warns[0].message and "16" in warns[0].message
    assert of(out, Dispatch) == []
    for _ in range(5):
        assert of(sim.tick(10), Warn) == []
    small = Task("small", cores=1)
    assert placed(sim.submit(small)) == {small.id: "w1"}  # the big one blocks nobody
    assert sim.task_state(big) == "ready"
    out = sim.join("w-big", cores=16, memory=64000, disk=100000)
    assert placed(out) == {big.id: "w-big"}
    assert of(out, Warn) == []


def test_task_needing_a_missing_feature_warns_and_waits() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("gpu-ish", features=["fpga"])
    out = sim.submit(t)
    assert len(of(out, Warn)) == 1 and not of(out, Dispatch)
    out = sim.join("w2", features=["fpga", "ssd"])
    assert placed(out) == {t.id: "w2"}


def test_unplaceable_tasks_at_the_head_do_not_starve_the_rest() -> None:
    """TaskVine keeps a cursor in the ready list, so a pass starts where the last one stopped."""
    sim = Sim()
    sim.join("w1", **MANUAL)
    depth = int(sim.state.tuning["attempt-schedule-depth"])
    giants = [Task(f"giant{i}", cores=64) for i in range(depth + 50)]
    sim.submit(*giants)
    small = Task("small", cores=1)
    sim.submit(small)
    for _ in range(5):
        if sim.task_state(small) == "dispatched":
            break
        sim.tick(1)
    assert sim.where(small) == "w1"


def test_tasks_waiting_for_their_start_time_do_not_starve_the_rest() -> None:
    sim = Sim()
    sim.join("w1", **MANUAL)
    depth = int(sim.state.tuning["attempt-schedule-depth"])
    later = [Task(f"later{i}", cores=1, time_start=int((sim.now + 3600) * 1e6)) for i in range(depth + 50)]
    sim.submit(*later)
    now = Task("now", cores=1)
    sim.submit(now)
    for _ in range(5):
        if sim.task_state(now) == "dispatched":
            break
        sim.tick(1)
    assert sim.where(now) == "w1"
    assert all(sim.task_state(t) == "ready" for t in later)


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_a_ready_task() -> None:
    sim = Sim()
    t = Task("t")
    sim.submit(t)
    out = sim.cancel(t)
    assert out == [ReturnTask(t.id, C.VINE_RESULT_CANCELLED, -1)]
    assert of(sim.join("w1"), Dispatch) == []
    assert sim.cancel(t) == []  # twice is harmless
    assert sim.state.stats["tasks_cancelled"] == 1


def test_cancel_a_dispatched_task_kills_it_and_frees_the_worker() -> None:
    sim = Sim()
    sim.join("w1", cores=1, memory=1000, disk=1000)
    a, b = Task("a"), Task("b")
    sim.submit(a, b)
    out = sim.cancel(a)
    assert Kill("w1", a.id) in out
    assert ReturnTask(a.id, C.VINE_RESULT_CANCELLED, -1) in out
    assert placed(out) == {b.id: "w1"}  # the room went to the next task at once
    # The worker's report for the killed task arrives later and changes nothing.
    assert sim.finish("w1", a, result=C.VINE_RESULT_SIGNAL, exit_code=-9) == []
    assert sim.task_state(b) == "dispatched"


def test_cancel_a_waiting_task() -> None:
    sim = Sim()
    sim.join("w1")
    temp = File(None, "temp", "temp")
    producer, consumer = Task("p", cores=1), Task("c", cores=1)
    producer.add_output(temp, "out")
    consumer.add_input(temp, "in")
    sim.submit(producer, consumer)
    assert sim.task_state(consumer) == "waiting"
    assert sim.cancel(consumer) == [ReturnTask(consumer.id, C.VINE_RESULT_CANCELLED, -1)]
    sim.finish("w1", producer)
    assert of(sim.cached("w1", temp), Dispatch) == []  # the temp's arrival does not revive it


# --- lost workers and retries -------------------------------------------------------------------------


def test_worker_lost_requeues_its_tasks_elsewhere() -> None:
    sim = Sim()
    sim.join("w1", **MANUAL)
    tasks = [Task(f"t{i}", cores=1) for i in range(4)]
    out = sim.submit(*tasks)
    assert set(placed(out).values()) == {"w1"}
    sim.join("w2", **MANUAL)
    out = sim.lose("w1")
    assert placed(out) == {t.id: "w2" for t in tasks}
    assert of(out, ReturnTask) == []
    assert "w1" not in sim.state.workers
    assert sim.state.stats["workers_lost"] == 1
    assert sim.lose("w1") == []  # the manager may report the same loss twice


def test_worker_lost_without_another_worker_leaves_tasks_ready() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("t")
    sim.submit(t)
    assert sim.lose("w1") == []
    assert sim.task_state(t) == "ready"
    assert sim.state.workers == {}


def test_attempts_are_bounded_by_max_task_attempts() -> None:
    sim = Sim({"max-task-attempts": 3})
    t = Task("unlucky")
    sim.submit(t)
    for i in range(3):
        assert placed(sim.join(f"w{i}")) == {t.id: f"w{i}"}
        out = sim.lose(f"w{i}")
        if i < 2:
            assert of(out, ReturnTask) == []
    assert out == [ReturnTask(t.id, C.VINE_RESULT_MAX_RETRIES, -1)]
    assert sim.task_state(t) == "done"
    assert of(sim.join("w9"), Dispatch) == []


def test_forsaken_task_is_retried() -> None:
    sim = Sim()
    sim.join("w1")
    sim.join("w2")
    t = Task("t")
    sim.submit(t)
    first = sim.where(t)
    assert first is not None
    out = sim.finish(first, t, result=C.VINE_RESULT_FORSAKEN, exit_code=-1)
    assert of(out, ReturnTask) == []
    assert t.id in placed(out)
    assert sim.state.tasks[t.id].forsaken == 1


def test_forsaken_past_max_forsaken_is_returned() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("t", max_forsaken=1)
    sim.submit(t)
    out = sim.finish("w1", t, result=C.VINE_RESULT_FORSAKEN)
    assert placed(out) == {t.id: "w1"}
    out = sim.finish("w1", t, result=C.VINE_RESULT_FORSAKEN)
    assert of(out, ReturnTask) == [ReturnTask(t.id, C.VINE_RESULT_FORSAKEN, 0)]


def test_cluster_fault_is_retried_not_returned() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("t")
    sim.submit(t)
    out = sim.finish("w1", t, result=C.VINE_RESULT_INPUT_MISSING, exit_code=-1, retry=True)
    assert of(out, ReturnTask) == [] and placed(out) == {t.id: "w1"}
    out = sim.finish("w1", t, result=C.VINE_RESULT_INPUT_MISSING, exit_code=-1)
    assert out == [ReturnTask(t.id, C.VINE_RESULT_INPUT_MISSING, -1)]


# --- keepalive ---------------------------------------------------------------------------------------------


def test_keepalive_check_then_removal_after_silence() -> None:
    sim = Sim({"keepalive-interval": 30, "keepalive-timeout": 60}, now=0.0)
    sim.join("w1")
    sim.join("w2")
    a, b = Task("a"), Task("b")
    sim.submit(a, b)
    assert {sim.where(a), sim.where(b)} == {"w1", "w2"}
    silent, chatty = sim.where(a), sim.where(b)
    assert silent is not None and chatty is not None

    assert of(sim.tick(29), Keepalive) == []
    out = sim.tick(2)  # t = 31: both quiet for over 30 s
    assert sorted(k.worker for k in of(out, Keepalive)) == ["w1", "w2"]
    assert of(sim.tick(1), Keepalive) == []  # one check at a time

    sim.now = 40
    sim.heard(chatty)
    out = sim.tick(52)  # t = 92: the silent one is 61 s past its check
    assert of(out, RemoveWorker) == [RemoveWorker(silent, "keepalive timeout")]
    assert silent not in sim.state.workers and chatty in sim.state.workers
    assert sim.task_state(a) == "ready"  # requeued; the other worker is full
    assert [k.worker for k in of(out, Keepalive)] == [chatty]  # 52 s since it was last heard
    assert sim.lose(silent) == []  # the manager's own WorkerLost afterwards is a no-op

    sim.now = 100
    sim.heard(chatty)
    out = sim.tick(55)  # t = 155: heard after its check, so no removal
    assert of(out, RemoveWorker) == []
    out = sim.finish(chatty, b)
    assert placed(out) == {a.id: chatty}


def test_keepalive_interval_zero_disables_checks() -> None:
    sim = Sim({"keepalive-interval": 0}, now=0.0)
    sim.join("w1")
    for _ in range(5):
        out = sim.tick(10_000)
        assert of(out, Keepalive) == [] and of(out, RemoveWorker) == []
    assert "w1" in sim.state.workers


def test_keepalive_timeout_zero_never_removes() -> None:
    sim = Sim({"keepalive-interval": 30, "keepalive-timeout": 0}, now=0.0)
    sim.join("w1")
    assert len(of(sim.tick(31), Keepalive)) == 1
    assert of(sim.tick(10_000), RemoveWorker) == []


# --- temp files -----------------------------------------------------------------------------------------


def _producer_consumer(consumer_features: Iterable[str] = ()) -> tuple[File, Task, Task]:
    temp = File(None, "temp", "temp")
    producer = Task("produce", cores=1)
    producer.add_output(temp, "out")
    consumer = Task("consume", cores=1, features=list(consumer_features))
    consumer.add_input(temp, "in")
    return temp, producer, consumer


def test_temp_consumer_waits_then_runs_where_the_temp_is() -> None:
    sim = Sim()
    sim.join("w1")
    sim.join("w2")
    temp, producer, consumer = _producer_consumer()
    out = sim.submit(producer, consumer)
    assert list(placed(out)) == [producer.id]
    holder = sim.where(producer)
    assert holder is not None
    assert sim.task_state(consumer) == "waiting"
    assert of(sim.tick(5), Dispatch) == []
    assert sim.task_state(consumer) == "waiting"
    # The worker reports its outputs before the task's completion.
    out = sim.cached(holder, temp, size=5000)
    assert [type(i) for i in out] == [Dispatch]
    assert placed(out) == {consumer.id: holder}
    out = sim.finish(holder, producer)
    assert out == [ReturnTask(producer.id, 0, 0)]


@pytest.mark.parametrize("pipelining", [0, 1])
def test_a_long_chain_whose_first_link_fails_ends_every_link(pipelining: int) -> None:
    """Ending a consumer ends its own consumers: done recursively, a 3,000-link chain passed Python's
    recursion limit inside the handler, which failed, and left ~2,500 links waiting forever."""
    sim = Sim({"task-pipelining": pipelining})
    sim.state.validate = lambda: None  # type: ignore[method-assign]  # O(tasks) per event; checked once below
    sim.join("w1", cores=1)
    links, prev = [], None
    for _ in range(3000):
        t = Task("step")
        if prev is not None:
            t.add_input(prev, "in")
        prev = File(None, "temp", "temp")
        t.add_output(prev, "out")
        links.append(t)
    sim.submit(*links)
    out = sim.finish("w1", links[0], exit_code=1)  # exits 1 without making its temp
    assert list(sim.state.failed_events) == []
    returned = {i.task_id: i.result for i in of(out, ReturnTask)}
    assert returned[links[0].id] == C.VINE_RESULT_SUCCESS
    assert all(returned[t.id] == C.VINE_RESULT_INPUT_MISSING for t in links[1:])
    assert all(sim.task_state(t) == "done" for t in links)
    SchedulerState.validate(sim.state)


def test_temp_consumer_on_another_worker_fetches_from_the_peer() -> None:
    sim = Sim()
    sim.join("w1")
    temp, producer, consumer = _producer_consumer(consumer_features=["special"])
    sim.submit(producer, consumer)
    sim.cached("w1", temp)
    sim.finish("w1", producer)
    assert sim.task_state(consumer) == "ready"  # ready, but no worker has the feature
    out = sim.join("w2", features=["special"])
    assert out[0] == FetchPeer("w2", temp.cache_name, "w1")
    assert placed(out) == {consumer.id: "w2"}
    assert out.index(of(out, FetchPeer)[0]) < out.index(of(out, Dispatch)[0])
    assert sim.state.files[temp.cache_name].replicas == {"w1": "ready", "w2": "creating"}


def test_temp_is_not_fetched_from_a_worker_without_a_transfer_address() -> None:
    sim = Sim()
    sim.join("w1", transfer=False)
    temp, producer, consumer = _producer_consumer(consumer_features=["special"])
    sim.submit(producer, consumer)
    sim.cached("w1", temp)
    sim.finish("w1", producer)
    out = sim.join("w2", features=["special"])
    # w2 could never get the temp, so the task must not be sent there to fail.
    assert of(out, Dispatch) == [] and of(out, FetchPeer) == []
    assert sim.task_state(consumer) == "ready"


def test_consumer_of_a_lost_temp_waits_for_its_producer_to_run_again() -> None:
    sim = Sim()
    sim.join("w1")
    temp, producer, consumer = _producer_consumer(consumer_features=["special"])
    sim.submit(producer, consumer)
    assert sim.where(producer) == "w1"
    sim.cached("w1", temp)
    sim.finish("w1", producer)
    assert sim.task_state(consumer) == "ready"
    sim.lose("w1")  # the only replica is gone before any worker could run the consumer
    out = sim.join("w2", features=["special"])
    assert of(out, FetchPeer) == [] and consumer.id not in placed(out)
    assert sim.task_state(consumer) == "waiting"
    assert of(out, ReturnTask) == []
    # Its producer runs again as a hidden recovery copy, which is never returned to the user.
    recovery = [tid for tid in placed(out) if tid >= S.RECOVERY_ID_BASE]
    assert len(recovery) == 1
    out = sim.cached("w2", temp)
    assert placed(out) == {consumer.id: "w2"}
    out = sim.finish("w2", recovery[0])
    assert out == []
    assert sim.state.stats["tasks_recovery"] == 1


def test_undeclared_file_in_flight_leaves_no_transfer_behind() -> None:
    sim = Sim()
    sim.join("w1")
    shared = File(None, "url", "https://example.org/shared.tar", cache="workflow")
    a, b = Task("a", cores=1), Task("b", cores=1, features=["x"])
    a.add_input(shared, "s")
    b.add_input(shared, "s")
    sim.submit(a)
    sim.cached("w1", shared)
    sim.join("w2", features=["x"])
    assert FetchPeer("w2", shared.cache_name, "w1") in sim.submit(b)
    assert sim.state.workers["w1"].outgoing == 1
    out = sim.handle(S.FileUndeclared(sim.now, shared.cache_name))
    assert sorted(u.worker for u in of(out, S.Unlink)) == ["w1", "w2"]
    sim.cached("w2", shared)  # the fetch completes after the file was forgotten
    assert sim.state.workers["w1"].outgoing == 0
    assert sim.state.transfers == {}


# --- input staging ----------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, File]:
    path = tmp_path / "in.txt"
    path.write_text("hello")
    tar_input = buffer(b"tar bytes")
    mini_task = Task("tar xf in.tar")
    mini_task.add_input(tar_input, "in.tar")
    return {
        "local": File(None, "file", str(path)),
        "buffer": buffer(b"abc"),
        "url": File(None, "url", "https://example.org/data.tar"),
        "mini": File(None, "minitask", "output", minitask=mini_task, minitask_output="output"),
        "mini_input": tar_input,
    }


def _task_with(inputs: dict[str, File], **kw: Any) -> Task:
    t = Task("use inputs", cores=1, **kw)
    for name in ("local", "buffer", "url", "mini"):
        t.add_input(inputs[name], name)
    return t


def test_inputs_are_staged_before_dispatch(inputs: dict[str, File]) -> None:
    sim = Sim()
    sim.join("w1")
    t = _task_with(inputs)
    out = sim.submit(t)
    name = {k: f.cache_name for k, f in inputs.items()}
    assert out[:-1] == [
        SendFile("w1", name["local"]),
        SendFile("w1", name["buffer"]),
        FetchUrl("w1", name["url"]),
        SendFile("w1", name["mini_input"]),  # the mini-task's own input first
        RunMinitask("w1", name["mini"]),
    ]
    assert isinstance(out[-1], Dispatch) and out[-1].task_id == t.id
    assert all(sim.state.workers["w1"].replicas[n] == "creating" for n in name.values())


def test_no_resend_while_creating_or_ready(inputs: dict[str, File]) -> None:
    sim = Sim()
    sim.join("w1")
    sim.submit(_task_with(inputs))
    second = _task_with(inputs)
    out = sim.submit(second)  # replicas are still being created
    assert [type(i) for i in out] == [Dispatch]
    for f in inputs.values():
        sim.cached("w1", f)
    third = _task_with(inputs)
    assert [type(i) for i in sim.submit(third)] == [Dispatch]


def test_worker_cache_announced_at_join_is_not_resent(inputs: dict[str, File]) -> None:
    sim = Sim()
    sim.join("w1")
    sim.submit(_task_with(inputs))
    sim.join("w2", features=["x"], cache={inputs["local"].cache_name: 5, inputs["url"].cache_name: 10})
    out = sim.submit(_task_with(inputs, features=["x"]))
    assert SendFile("w2", inputs["local"].cache_name) not in out
    assert FetchUrl("w2", inputs["url"].cache_name) not in out
    assert SendFile("w2", inputs["buffer"].cache_name) in out


def test_invalid_replica_is_sent_again() -> None:
    sim = Sim()
    sim.join("w1")
    f = buffer()
    a, b = Task("a", cores=1), Task("b", cores=1)
    a.add_input(f, "f")
    b.add_input(f, "f")
    assert SendFile("w1", f.cache_name) in sim.submit(a)
    sim.handle(CacheInvalid(sim.now, "w1", f.cache_name, "disk full"))
    assert SendFile("w1", f.cache_name) in sim.submit(b)


def test_shared_input_comes_from_a_peer_when_one_has_it() -> None:
    sim = Sim()
    sim.join("w1")
    url = File(None, "url", "https://example.org/big.tar", cache="workflow")
    a, b = Task("a", cores=1), Task("b", cores=1, features=["x"])
    a.add_input(url, "big.tar")
    b.add_input(url, "big.tar")
    assert FetchUrl("w1", url.cache_name) in sim.submit(a)
    sim.cached("w1", url)
    sim.join("w2", features=["x"])
    out = sim.submit(b)
    assert FetchPeer("w2", url.cache_name, "w1") in out and not of(out, FetchUrl)


def test_task_level_inputs_never_come_from_peers() -> None:
    sim = Sim()
    sim.join("w1")
    f = buffer()  # cache=False: TASK level
    a, b = Task("a", cores=1), Task("b", cores=1, features=["x"])
    a.add_input(f, "f")
    b.add_input(f, "f")
    sim.submit(a)
    sim.cached("w1", f)
    sim.join("w2", features=["x"])
    out = sim.submit(b)
    assert SendFile("w2", f.cache_name) in out and not of(out, FetchPeer)


# --- worker selection policies -----------------------------------------------------------------------------


def test_files_policy_prefers_the_worker_holding_the_inputs() -> None:
    sim = Sim(policy="files")
    f = buffer()
    sim.join("roomy", cores=16, memory=48000, disk=100000)
    sim.join("holder", features=["h"])
    seed = Task("seed", cores=1, features=["h"])
    seed.add_input(f, "f")
    sim.submit(seed)
    sim.cached("holder", f)
    t = Task("t", cores=1)
    t.add_input(f, "f")
    assert placed(sim.submit(t)) == {t.id: "holder"}


def test_worst_policy_spreads_by_free_cores_and_ignores_inputs() -> None:
    sim = Sim(policy="worst")
    sim.join("w1")
    sim.join("w2")
    f = buffer()
    a = Task("a", cores=1)
    a.add_input(f, "f")
    assert placed(sim.submit(a)) == {a.id: "w1"}
    sim.cached("w1", f)
    b = Task("b", cores=1)
    b.add_input(f, "f")
    assert placed(sim.submit(b)) == {b.id: "w2"}  # w2 has 4 free cores, w1 only 3


def test_disk_policy_prefers_the_most_free_cache() -> None:
    sim = Sim(policy="disk")
    sim.join("small-disk", disk=20000)
    sim.join("big-disk", disk=60000)
    sim.join("full-cache", disk=80000, cache={"file-md5-old": 75_000 * 1_000_000})
    t = Task("t", cores=1)
    assert placed(sim.submit(t)) == {t.id: "big-disk"}


def test_time_policy_prefers_the_fastest_worker() -> None:
    sim = Sim(policy="files")
    sim.join("slow")
    sim.join("fast")
    a, b = Task("a"), Task("b")  # whole-worker tasks: one on each
    assert placed(sim.submit(a, b)) == {a.id: "slow", b.id: "fast"}
    sim.finish("slow", a, runtime=100.0)
    sim.finish("fast", b, runtime=1.0)
    timed = Task("timed", cores=1)
    timed.set_scheduler("time")  # a task's own policy beats the manager's
    assert placed(sim.submit(timed)) == {timed.id: "fast"}
    untimed = Task("untimed", cores=1)
    assert placed(sim.submit(untimed)) == {untimed.id: "slow"}  # files: more free cores
    sim.handle(PolicyChanged(sim.now, "time"))
    later = Task("later", cores=1)
    assert placed(sim.submit(later)) == {later.id: "fast"}


def test_rand_policy_spreads_and_is_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[str]:
        sim = Sim(policy="rand", seed=seed)
        for w in ("w1", "w2", "w3"):
            sim.join(w, cores=100, memory=100000, disk=100000)
        out = sim.submit(*[Task(f"t{i}", cores=1, memory=10, disk=10) for i in range(60)])
        return [d.worker for d in of(out, Dispatch)]

    first = run(3)
    assert len(first) == 60
    counts = Counter(first)
    assert set(counts) == {"w1", "w2", "w3"} and min(counts.values()) >= 5
    assert run(3) == first


@pytest.mark.parametrize("name, expected", [("fcfs", "rand"), ("files", "files"), (C.VINE_SCHEDULE_WORST, "worst"),
                                            (C.VINE_SCHEDULE_DISK, "disk"), (C.VINE_SCHEDULE_TIME, "time")])
def test_policy_names(name: str | int, expected: str) -> None:
    assert S.policy_name(name) == expected


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown scheduler"):
        S.policy_name("fastest")


# --- time limits, blocked hosts, waiting for workers --------------------------------------------------------


def test_task_past_its_end_time_is_returned() -> None:
    sim = Sim()
    sim.join("w1")
    late = Task("late", time_end=int((sim.now - 10) * 1e6))
    fine = Task("fine", cores=1, time_end=int((sim.now + 3600) * 1e6))
    out = sim.submit(late, fine)
    assert ReturnTask(late.id, C.VINE_RESULT_MAX_END_TIME, -1) in out
    assert placed(out) == {fine.id: "w1"}


def test_task_expires_while_queued() -> None:
    sim = Sim()
    sim.join("w1", cores=1, memory=1000, disk=1000)
    blocker, t = Task("blocker"), Task("t", time_end=int((sim.now + 5) * 1e6))
    sim.submit(blocker, t)
    sim.now += 10
    out = sim.finish("w1", blocker)
    assert ReturnTask(t.id, C.VINE_RESULT_MAX_END_TIME, -1) in out and not of(out, Dispatch)


def test_task_waits_for_its_start_time() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("t", time_start=int((sim.now + 100) * 1e6))
    assert of(sim.submit(t), Dispatch) == []
    assert of(sim.tick(50), Dispatch) == []
    assert placed(sim.tick(51)) == {t.id: "w1"}


def test_blocked_hosts_get_no_tasks() -> None:
    sim = Sim()
    sim.join("a", hostname="host-a")
    sim.join("b", hostname="host-b")
    sim.handle(HostBlocked(sim.now, "host-a"))
    tasks = [Task(f"t{i}", cores=1) for i in range(3)]
    assert set(placed(sim.submit(*tasks)).values()) == {"b"}
    sim.handle(HostBlocked(sim.now, "host-b"))
    late = Task("late", cores=1)
    out = sim.submit(late)
    assert out == []  # no dispatch, and no "too big" warning either: it fits, just not now
    assert placed(sim.handle(HostUnblocked(sim.now, "host-a"))) == {late.id: "a"}


def test_wait_for_workers_holds_dispatch() -> None:
    sim = Sim({"wait-for-workers": 3})
    t = Task("t", cores=1)
    sim.submit(t)
    assert sim.join("w1") == [] and sim.join("w2") == []
    assert sim.tick(1) == []
    assert t.id in placed(sim.join("w3"))


def test_time_min_skips_workers_about_to_leave() -> None:
    sim = Sim()
    sim.join("leaving", end_time=sim.now + 60)
    t = Task("t", cores=1, time_min=600)
    assert of(sim.submit(t), Dispatch) == []
    assert placed(sim.join("staying")) == {t.id: "staying"}


# --- resource multiplier ------------------------------------------------------------------------------------


def test_submit_multiplier_overcommits_cores_but_never_disk() -> None:
    sim = Sim({"resource-submit-multiplier": 2.0, "proportional-resources": 0})
    sim.join("w1", cores=2, memory=4000, disk=4000)
    tasks = [Task(f"t{i}", cores=1, memory=1000, disk=1000) for i in range(6)]
    out = sim.submit(*tasks)
    assert len(placed(out)) == 4  # 2 cores x 2, and disk 4 x 1000 = 4000 is the hard limit
    assert sim.state.workers["w1"].committed.cores == 4


# --- scheduling cost ----------------------------------------------------------------------------------------


def _many_tasks(sim: Sim, n: int, **kw: Any) -> list[TaskSpec]:
    """n task specs cheaply: one real Task's spec under n ids (Task() with setters is ~15 us each)."""
    template = task_spec(sim.prepare(Task("bulk", **kw)))
    return [template] + [template._replace(id=next(sim._ids)) for _ in range(n - 1)]


class _CountingHeap:
    """Stand-in for the heapq module inside core.state.scheduler that counts pops."""

    def __init__(self) -> None:
        self.pops = 0
        self.heappush = heapq.heappush
        self.heapify = heapq.heapify

    def heappop(self, heap: list[Any]) -> Any:
        self.pops += 1
        return heapq.heappop(heap)

    def __getattr__(self, name: str) -> Any:
        return getattr(heapq, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    heap = _CountingHeap()
    monkeypatch.setattr(S, "heapq", heap)
    considered = {"n": 0}
    real = Placement.choose_worker

    def choose(self: Placement, rec: Any, now: float) -> Any:
        considered["n"] += 1
        return real(self, rec, now)

    monkeypatch.setattr(Placement, "choose_worker", choose)
    return {"heap": heap, "considered": considered}


def test_100k_ready_tasks_cost_at_most_depth_per_pass(counting: dict[str, Any]) -> None:
    sim = Sim()
    heap, considered = counting["heap"], counting["considered"]
    depth = int(sim.state.tuning["attempt-schedule-depth"])
    sim.join("w1", cores=1, memory=1000, disk=1000)
    tasks = _many_tasks(sim, 100_000, cores=1)
    sim.handle(*(TaskSubmitted(sim.now, t) for t in tasks))
    assert sim.state.counts()["dispatched"] == 1
    assert heap.pops <= depth + 1

    # One full worker: a pass looks at nothing.
    for _ in range(3):
        heap.pops = considered["n"] = 0
        sim.tick(1)
        assert heap.pops <= depth and considered["n"] <= depth

    # A worker with room where no task may go: each pass gives up after attempt-schedule-depth tasks.
    sim.handle(HostBlocked(sim.now, "blocked-host"))
    sim.join("w2", hostname="blocked-host")
    for _ in range(3):
        heap.pops = considered["n"] = 0
        assert sim.tick(1) == []
        assert considered["n"] == depth
        assert heap.pops <= depth + 1  # +1: the first pass may meet the dispatched task's stale entry
    assert sim.state.counts()["ready"] == 100_000 - 1


# --- the invariant checker itself ------------------------------------------------------------------------------


def test_validate_catches_overcommit_and_stray_replicas() -> None:
    sim = Sim()
    sim.join("w1", cores=1, memory=1000, disk=1000)
    t = Task("t")
    sim.submit(t)
    rec = sim.state.tasks[t.id]
    rec.allocation = Resources(2, 1000, 750, 0)
    sim.state.workers["w1"].committed = rec.allocation
    with pytest.raises(AssertionError, match="over-committed cores"):
        sim.state.validate()
    rec.allocation = sim.state.workers["w1"].committed = Resources(1, 1000, 750, 0)
    sim.state.validate()
    f = buffer()
    sim.state._file(f).replicas["ghost"] = "ready"
    with pytest.raises(AssertionError, match="disconnected worker"):
        sim.state.validate()
    del sim.state.files[f.cache_name].replicas["ghost"]
    sim.state.validate()


def test_hungry_counts_from_the_state() -> None:
    sim = Sim({"hungry-minimum": 11})
    assert sim.state.hungry() == 11
    sim.join("w1", cores=12, memory=12000, disk=12000)
    assert sim.state.hungry() == 24
    sim.state.validate()


def test_the_hungry_sample_follows_the_queued_shapes() -> None:
    """hungry() samples at most 100 queued requests from the shapes the state keeps: all of them
    when 100 or fewer wait, else in their proportions, each shape at least once."""
    small, big, rare = Resources(1, 100, 10, 0), Resources(4, 4000, 10, 0), Resources(2, 10, 10, 1)
    assert Counter(S.request_sample({small: 3, big: 2}, 100)) == {small: 3, big: 2}
    sample = S.request_sample({small: 900, big: 300, rare: 1}, 100)
    assert Counter(sample) == {small: 74, big: 25, rare: 1}
    assert S.request_sample({}, 100) == []
    sim = Sim({"hungry-minimum": 11})
    sim.join("w1", cores=4, memory=4000, disk=4000)
    for i in range(150):
        t = Task("true")
        t.set_cores(1 if i % 3 else 4)
        sim.submit(t)
    assert sum(sim.state.waiting_shapes.values()) == sim.state.counts()["ready"] + sim.state.counts()["waiting"]
    assert sim.state.hungry() == 0  # far more queued than the pool could take
    sim.state.validate()


def test_time_end_expires_on_tick_even_without_workers():
    from core.api.specs import task_spec
    from core.api.task import Task
    from core.state.scheduler import ReturnTask, SchedulerState, TaskSubmitted, Tick

    state = SchedulerState()
    t = Task("true")
    t._id = 1
    t.set_time_end(int(10 * 1e6))  # epoch second 10
    assert state.handle(TaskSubmitted(5.0, task_spec(t))) == []
    out = state.handle(Tick(11.0))
    assert [(r.task_id, r.result) for r in out if isinstance(r, ReturnTask)] == [(1, C.VINE_RESULT_MAX_END_TIME)]
    state.validate()



# --- prefetch of short tasks ---------------------------------------------------------------------------------


def _short_category(sim: Sim, worker: str, n: int = 5) -> None:
    """Run n tasks to completion so the default category is measured short."""
    for _ in range(n):
        t = Task("true", cores=1)
        out = sim.submit(t)
        (d,) = of(out, Dispatch)
        sim.finish(d.worker, d.task_id)


def test_short_tasks_are_prefetched_and_promoted_in_order() -> None:
    sim = Sim({"worker-prefetch": 1})
    sim.join("w1", 2, 2000, 4000)
    _short_category(sim, "w1")
    tasks = [Task("true", cores=1) for _ in range(6)]
    out = sim.submit(*tasks)
    ds = of(out, Dispatch)
    assert [d.queued for d in ds] == [False, False, True, True]  # 2 run, 2 queued (1 per core)
    assert sim.state.tasks[tasks[4].id].state == "ready"
    w = sim.state.workers["w1"]
    assert w.queue == [tasks[2].id, tasks[3].id] and w.committed.cores == 2
    out = sim.finish("w1", tasks[0].id)  # the head of the queue takes the freed core, a new task is queued
    assert w.queue == [tasks[3].id, tasks[4].id] and w.committed.cores == 2
    assert [(d.task_id, d.queued) for d in of(out, Dispatch)] == [(tasks[4].id, True)]
    sim.state.validate()


def test_unmeasured_or_long_tasks_are_not_prefetched() -> None:
    sim = Sim({"worker-prefetch": 1})
    sim.join("w1", 1, 2000, 4000)
    out = sim.submit(*[Task("true", cores=1) for _ in range(3)])
    assert [d.queued for d in of(out, Dispatch)] == [False]  # nothing measured yet
    sim.state.category_time["default"] = (50, 30.0)  # 30 s per task: queueing could idle other workers
    assert of(sim.tick(1), Dispatch) == []
    assert all(not w.queue for w in sim.state.workers.values())
    sim.state.validate()


def test_lost_worker_requeues_its_prefetched_tasks() -> None:
    sim = Sim({"worker-prefetch": 1})
    sim.join("w1", 1, 2000, 4000)
    _short_category(sim, "w1")
    a, b = Task("true", cores=1), Task("true", cores=1)
    sim.submit(a, b)
    assert sim.state.workers["w1"].queue == [b.id]
    sim.handle(WorkerLost(sim.now, "w1", "FAILURE"))
    assert sim.state.tasks[a.id].state == "ready" and sim.state.tasks[b.id].state == "ready"
    assert not sim.state.tasks[b.id].queued
    sim.state.validate()


def test_cancelled_prefetched_task_leaves_the_queue() -> None:
    sim = Sim({"worker-prefetch": 1})
    sim.join("w1", 1, 2000, 4000)
    _short_category(sim, "w1")
    a, b = Task("true", cores=1), Task("true", cores=1)
    sim.submit(a, b)
    out = sim.handle(TaskCancelled(sim.now, b.id))
    assert [(k.worker, k.task_id) for k in of(out, Kill)] == [("w1", b.id)]
    assert sim.state.workers["w1"].queue == [] and sim.state.workers["w1"].committed.cores == 1
    sim.state.validate()


def test_prefetch_only_pass_stops_at_the_first_task_it_cannot_queue() -> None:
    """With every core busy and only prefetch room left, a pass must not churn through a queue of
    tasks that cannot be prefetched (function calls): it looks at one and stops."""
    from core.api.library import FunctionCall

    sim = Sim({"worker-prefetch": 1})
    sim.join("w1", 1, 2000, 4000)
    _short_category(sim, "w1")
    sim.submit(Task("sleep 100", cores=1))  # the only core is busy
    calls = [FunctionCall("nolib", "f") for _ in range(500)]
    sim.submit(*calls)
    pops_before = len(sim.state.ready) + len(sim.state._passed)
    passed_before = len(sim.state._passed)
    sim.tick(0.5)
    assert len(sim.state.ready) + len(sim.state._passed) == pops_before  # nothing lost
    # this pass stopped at the head: at most one task moved to the passed list
    assert len(sim.state._passed) - passed_before <= 1
    sim.state.validate()


# --- kept allocations -----------------------------------------------------------------------------------------


def test_allocations_kept_per_request_and_worker_follow_a_tuning_change() -> None:
    from core.state.events import TuneChanged

    sim = Sim()
    sim.join("w1", **MANUAL)
    first, second = Task("a", cores=1), Task("b", cores=1)
    (d1,) = of(sim.submit(first), Dispatch)
    (d2,) = of(sim.submit(second), Dispatch)
    # Proportional: 1 of 4 cores is a quarter of the worker, memory and disk too (REFERENCE §3.3).
    assert d1.allocation == d2.allocation == Resources(1, 3000, 6750, 0)
    assert d1.allocation is d2.allocation  # the same request on the same worker: the kept box
    sim.finish("w1", first)
    sim.finish("w1", second)
    sim.handle(TuneChanged(sim.now, "proportional-resources", 0))
    (d3,) = of(sim.submit(Task("c", cores=1)), Dispatch)
    assert d3.allocation.cores == 1 and d3.allocation.memory == 12000  # the whole worker's memory, not the kept box
