"""Task pipelining in the pure scheduler: a command task goes ahead, queued, to the worker making its
temp inputs, and the scheduler's mirror of that worker's queue starts it by the worker's own rule
(core/state/pipelining.py, core/state/prefetch.py; the worker's side is core/worker/pipelined.py)."""

from __future__ import annotations

from core import constants as C
from core.api.files import File
from core.api.task import Task
from core.state.prefetch import inputs_being_made, start_in_order, waits_in_queue
from core.state.scheduler import CacheUpdated, Dispatch, Kill, ReturnTask, TaskCancelled, TaskFinished, Warn
from core.wire import messages as M
from core.worker.pipelined import LocalMakers
from tests.unit.test_scheduler import Sim, of, placed


def link(prev: File | None, cores: float = 1, command: str = "link") -> tuple[Task, File]:
    """A chain link: reads ``prev`` (if any) as ``prev``, writes a temp of its own as ``out``."""
    t = Task(command, cores=cores)
    if prev is not None:
        t.add_input(prev, "prev")
    out = File(None, "temp", "temp")
    t.add_output(out, "out")
    return t, out


def chain(n: int) -> tuple[list[Task], list[File]]:
    tasks, temps, prev = [], [], None
    for _ in range(n):
        t, prev = link(prev)
        tasks.append(t)
        temps.append(prev)
    return tasks, temps


def complete(sim: Sim, wid: str, task: Task, out: File | None, exit_code: int = 0, **kw: object) -> list:
    """What the worker's ``complete`` becomes: the temp it cached (if made), then the task's end, in one step."""
    if out is None:  # the worker reports a missing output as such, whatever the exit code
        return sim.handle(TaskFinished(sim.now, wid, task.id, C.VINE_RESULT_OUTPUT_MISSING, exit_code, **kw))  # type: ignore[arg-type]
    return sim.handle(CacheUpdated(sim.now, wid, out.cache_name, 2),
                      TaskFinished(sim.now, wid, task.id, C.VINE_RESULT_SUCCESS, exit_code, **kw))  # type: ignore[arg-type]


def pipelined_sim(**tuning: float) -> Sim:
    return Sim({"task-pipelining": 1, **tuning})


def test_a_chain_link_is_queued_on_the_worker_making_its_input():
    sim = pipelined_sim()
    sim.join("w1", cores=1)
    tasks, temps = chain(4)
    out = sim.submit(*tasks)
    # The first runs; the second goes ahead into w1's queue (1 per core); the third waits its turn, pinned.
    assert [(d.task_id, d.worker, d.queued) for d in of(out, Dispatch)] == [(tasks[0].id, "w1", False), (tasks[1].id, "w1", True)]
    w = sim.state.workers["w1"]
    assert w.queue == [tasks[1].id] and w.committed.cores == 1
    third = sim.state.tasks[tasks[2].id]
    assert third.state == "ready" and third.pinned == "w1"
    for i in range(3):
        out = complete(sim, "w1", tasks[i], temps[i])
        assert [r.task_id for r in of(out, ReturnTask)] == [tasks[i].id]
        # The mirror starts the queued link as the worker does; the next link goes ahead at once.
        assert not sim.state.tasks[tasks[i + 1].id].queued and w.committed.cores == 1
        nxt = [(d.task_id, d.queued) for d in of(out, Dispatch)]
        assert nxt == ([(tasks[i + 2].id, True)] if i + 2 < 4 else [])
    out = complete(sim, "w1", tasks[3], temps[3])
    assert [r.task_id for r in of(out, ReturnTask)] == [tasks[3].id]
    assert not w.queue and w.committed.cores == 0 and not sim.state.pinned_for


def test_without_task_pipelining_the_link_waits_for_its_input():
    sim = Sim({"task-pipelining": 0})
    sim.join("w1", cores=1)
    tasks, temps = chain(2)
    out = sim.submit(*tasks)
    assert placed(out) == {tasks[0].id: "w1"}
    assert sim.task_state(tasks[1]) == "waiting"
    out = complete(sim, "w1", tasks[0], temps[0])
    assert [(d.task_id, d.queued) for d in of(out, Dispatch)] == [(tasks[1].id, False)]


def test_a_queued_link_waits_for_its_maker_even_with_a_core_free():
    """The start rule's second half: room is not enough while a started task is making an input."""
    sim = pipelined_sim()
    sim.join("w1", cores=2)
    tasks, temps = chain(2)
    other = Task("other", cores=1)
    out = sim.submit(tasks[0], other, tasks[1])
    assert {d.task_id: d.queued for d in of(out, Dispatch)} == {tasks[0].id: False, other.id: False, tasks[1].id: True}
    w = sim.state.workers["w1"]
    sim.finish("w1", other)  # a core is free now, but the link's input is still being made
    assert w.queue == [tasks[1].id] and w.committed.cores == 1
    complete(sim, "w1", tasks[0], temps[0])
    assert w.queue == [] and w.committed.cores == 1 and not sim.state.tasks[tasks[1].id].queued


def test_a_failed_producer_ends_its_queued_consumer_and_the_rest_of_the_chain():
    sim = pipelined_sim()
    sim.join("w1", cores=1)
    tasks, _temps = chain(4)
    sim.submit(*tasks)
    assert sim.state.workers["w1"].queue == [tasks[1].id]
    out = complete(sim, "w1", tasks[0], None, exit_code=1)  # exits 1 without writing its output
    # The queued consumer never starts: it is killed where it waits and ends "input missing", as the
    # links still waiting (or pinned, not yet sent) do; nothing else is dispatched.
    assert [k.task_id for k in of(out, Kill)] == [tasks[1].id]
    assert {r.task_id: r.result for r in of(out, ReturnTask)} == {
        tasks[0].id: C.VINE_RESULT_OUTPUT_MISSING, tasks[1].id: C.VINE_RESULT_INPUT_MISSING,
        tasks[2].id: C.VINE_RESULT_INPUT_MISSING, tasks[3].id: C.VINE_RESULT_INPUT_MISSING}
    assert of(out, Dispatch) == [] and of(out, Warn)
    w = sim.state.workers["w1"]
    assert not w.queue and not w.tasks and w.committed.cores == 0
    assert not sim.state.waiting_on and not sim.state.pinned_for
    # The worker's own report for the killed consumer, if it comes, is a late one: ignored.
    assert sim.finish("w1", tasks[1], C.VINE_RESULT_INPUT_MISSING, -1, retry=True) == []


def test_a_producer_sent_again_takes_its_consumer_along():
    """A retried producer (resource exhaustion, forsaken) does not end its consumer: the worker starts
    the consumer when the producer is released, finds no input and says so (a temp: retried); it waits,
    then goes ahead again to wherever the producer runs next."""
    sim = pipelined_sim()
    sim.join("w1", cores=1)
    tasks, temps = chain(2)
    sim.submit(*tasks)
    out = sim.finish("w1", tasks[0], C.VINE_RESULT_FORSAKEN, -1)
    assert of(out, ReturnTask) == [] and of(out, Dispatch) == []
    # The worker started the consumer when it released the producer; the mirror did the same.
    assert sim.task_state(tasks[1]) == "dispatched" and not sim.state.tasks[tasks[1].id].queued
    assert sim.task_state(tasks[0]) == "ready"
    out = sim.finish("w1", tasks[1], C.VINE_RESULT_INPUT_MISSING, -1, retry=True)
    assert of(out, ReturnTask) == []
    assert [(d.task_id, d.queued) for d in of(out, Dispatch)] == [(tasks[0].id, False), (tasks[1].id, True)]
    assert sim.state.workers["w1"].queue == [tasks[1].id]
    complete(sim, "w1", tasks[0], temps[0])
    out = complete(sim, "w1", tasks[1], temps[1])
    assert [(r.task_id, r.result) for r in of(out, ReturnTask)] == [(tasks[1].id, C.VINE_RESULT_SUCCESS)]


def test_losing_the_worker_mid_chain_loses_nothing():
    sim = pipelined_sim()
    sim.join("w1", cores=1)
    tasks, temps = chain(4)
    sim.submit(*tasks)
    complete(sim, "w1", tasks[0], temps[0])
    assert sim.state.workers["w1"].queue == [tasks[2].id]
    out = sim.lose("w1")  # link 1 running, link 2 queued: both come back; link 0's temp is gone
    assert of(out, ReturnTask) == []
    assert sim.task_state(tasks[1]) == "waiting" and sim.task_state(tasks[2]) == "waiting"
    out = sim.join("w2", cores=1)
    (d,) = [d for d in of(out, Dispatch) if not d.queued]
    recovery = sim.state.tasks[d.task_id]
    assert recovery.recovery and recovery.spec.id == tasks[0].id  # link 0 runs again, hidden
    # The links then follow each other to w2, one queued at a time.
    returned: dict[int, int] = {}
    running = {d.task_id: temps[0]}
    by_id = {t.id: (t, f) for t, f in zip(tasks, temps)}
    for _ in range(10):
        if not running:
            break
        tid = next(iter(running))
        f = running.pop(tid)
        out = sim.handle(CacheUpdated(sim.now, "w2", f.cache_name, 2), TaskFinished(sim.now, "w2", tid, C.VINE_RESULT_SUCCESS, 0))
        returned.update({r.task_id: r.result for r in of(out, ReturnTask)})
        w = sim.state.workers["w2"]
        for t in w.tasks:
            rec = sim.state.tasks[t]
            if not rec.queued and t not in running:
                running[t] = by_id[rec.spec.id][1]
    assert returned == {t.id: C.VINE_RESULT_SUCCESS for t in tasks[1:]}


def test_only_one_task_per_core_goes_ahead_and_the_rest_go_anywhere_once_the_file_exists():
    sim = pipelined_sim()
    sim.join("w1", cores=1)
    producer, f = link(None)
    readers = [Task(f"read {i}", cores=1) for i in range(4)]
    for r in readers:
        r.add_input(f, "in")
    out = sim.submit(producer, *readers)
    assert [(d.task_id, d.queued) for d in of(out, Dispatch)] == [(producer.id, False), (readers[0].id, True)]
    assert all(sim.state.tasks[r.id].pinned == "w1" for r in readers[1:])
    sim.join("w2", cores=2)  # pinned tasks do not go to w2 while the file does not exist
    assert all(sim.task_state(r) == "ready" for r in readers[1:])
    out = complete(sim, "w1", producer, f)
    where = placed(out)
    assert set(where) == {r.id for r in readers[1:3]} and set(where.values()) == {"w2"}  # fetched from w1
    assert all(sim.state.tasks[r.id].pinned is None for r in readers[1:])


def test_a_consumer_that_would_not_fit_in_its_makers_room_is_not_sent_ahead():
    """Queued there, it could wait for room on that worker while another one idles: it waits for its file."""
    sim = pipelined_sim()
    sim.join("w1", cores=2)
    producer, f = link(None)
    other = Task("other", cores=1)
    big = Task("big", cores=2)
    big.add_input(f, "in")
    out = sim.submit(producer, other, big)
    assert set(placed(out)) == {producer.id, other.id}
    assert sim.task_state(big) == "ready" and sim.state.workers["w1"].queue == []
    out = complete(sim, "w1", producer, f)
    assert of(out, Dispatch) == [] and sim.task_state(big) == "ready"
    out = sim.finish("w1", other)
    assert [(d.task_id, d.queued) for d in of(out, Dispatch)] == [(big.id, False)]


def test_a_consumer_of_temps_made_on_two_workers_waits_until_one_exists():
    """A test of the waiting path with pipelining on: no one worker makes every missing input."""
    sim = pipelined_sim()
    sim.join("w1", cores=1)
    sim.join("w2", cores=1)
    a, fa = link(None)
    b, fb = link(None)
    both = Task("both", cores=1)
    both.add_input(fa, "a")
    both.add_input(fb, "b")
    out = sim.submit(a, b, both)
    where = placed(out)
    assert set(where) == {a.id, b.id} and where[a.id] != where[b.id]
    assert sim.task_state(both) == "waiting" and sim.state.tasks[both.id].pinned is None
    # Once a's file exists only b's is missing: the task goes ahead to b's worker, a's file fetched there.
    out = complete(sim, where[a.id], a, fa)
    assert [(d.task_id, d.worker, d.queued) for d in of(out, Dispatch)] == [(both.id, where[b.id], True)]
    out = complete(sim, where[b.id], b, fb)
    assert not sim.state.tasks[both.id].queued and sim.state.workers[where[b.id]].committed.cores == 1


def test_cancelling_a_queued_consumer_takes_it_out_of_the_queue():
    sim = pipelined_sim()
    sim.join("w1", cores=1)
    tasks, temps = chain(3)
    sim.submit(*tasks)
    out = sim.handle(TaskCancelled(sim.now, tasks[1].id))
    assert [k.task_id for k in of(out, Kill)] == [tasks[1].id]
    assert sim.state.workers["w1"].queue == []
    out = complete(sim, "w1", tasks[0], temps[0])
    assert [r.task_id for r in of(out, ReturnTask)] == [tasks[0].id]
    assert sim.task_state(tasks[2]) == "done"  # its input can never be made now
    assert not sim.state.pinned_for


def test_calls_and_tasks_do_not_pin_to_each_other():
    """A task's consumer pinned to a call (or the reverse) would wait on the worker for a file the
    other kind's machinery never announces there: only like follows like."""
    from core.api.library import FunctionCall

    sim = pipelined_sim()
    sim.join("w1", cores=1)
    producer, f = link(None)
    call = FunctionCall("lib", "f")
    call.add_input(f, ".vine_ref_0")
    sim.submit(producer, call)
    assert sim.state.tasks[call.id].state == "waiting" and sim.state.tasks[call.id].pinned is None


def _definition(tid: int, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = (), call: bool = False) -> M.TaskDefinition:
    return M.TaskDefinition(
        tid, "true", inputs=tuple(M.InputRef(n, n, 1, "temp") for n in inputs),
        outputs=tuple(M.OutputRef(n, n, 1, "temp") for n in outputs),
        function_call=M.CallRef("lib", "f") if call else None)


def test_the_worker_counts_the_makers_the_scheduler_mirrors():
    """The worker's LocalMakers and the shared rule: a queued task waits while a started task
    (not a call) is making one of its inputs, and may start once that task is released."""
    makers = LocalMakers()
    producer, consumer, call = _definition(1, outputs=("t1",)), _definition(2, inputs=("t1",), outputs=("t2",)), _definition(3, outputs=("t3",), call=True)
    assert not makers.blocks(consumer)
    makers.started(producer)
    makers.started(call)  # calls tell waiting calls through the cache's futures: not counted
    assert makers.blocks(consumer) and not makers.blocks(_definition(4, inputs=("t3",))) and len(makers) == 1
    queue = [consumer]
    started: list[int] = []
    assert waits_in_queue([], fits_now=not makers.blocks(consumer))
    assert start_in_order(queue, lambda q: not makers.blocks(q), lambda q: started.append(q.id)) == 0
    assert not makers.ended(_definition(5, outputs=("t1",)))  # another task naming it is not its maker
    assert makers.ended(producer) and not makers.ended(producer)
    assert start_in_order(queue, lambda q: not makers.blocks(q), lambda q: started.append(q.id)) == 1 and started == [2]
    assert inputs_being_made(["a", "t9"], {"t9"}) and not inputs_being_made([], {"t9"})
    makers.started(consumer)
    makers.clear()
    assert len(makers) == 0
