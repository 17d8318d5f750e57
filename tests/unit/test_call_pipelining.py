"""Call pipelining in the pure scheduler: a call goes ahead to the worker making its temp inputs."""

from __future__ import annotations

from core import constants as C
from core.api.files import File
from core.api.library import FunctionCall
from core.state.scheduler import CacheUpdated, Dispatch, ReturnTask, TaskFinished
from tests.unit.test_library_state import Sim, install, library
from tests.unit.test_scheduler import of


def temp_call(*inputs: File) -> tuple[FunctionCall, File]:
    """A call reading ``inputs`` (temps of other calls) and making a temp of its own."""
    c = FunctionCall("lib", "f")
    for i, f in enumerate(inputs):
        c.add_input(f, f".vine_ref_{i}")
    out = File(None, "temp", "temp")
    c.add_output(out, ".vine_result", success_only=True)
    return c, out


def short_calls(sim: Sim) -> None:
    tmpl = sim.state.libs.templates["lib"]
    tmpl.calls_seen, tmpl.mean_call = 4, 0.001  # measured short: calls may queue inside the instance


def made(sim: Sim, wid: str, call: FunctionCall, out: File, result: int = C.VINE_RESULT_SUCCESS, exit_code: int = 0) -> list:
    """What the worker's "complete" message becomes: the temp (if made) and the end, in one step."""
    events = [CacheUpdated(sim.now, wid, out.cache_name, 40)] if exit_code == 0 else []
    return sim.handle(*events, TaskFinished(sim.now, wid, call.id, result, exit_code))


def chain_sim(tuning: dict[str, float] | None = None) -> Sim:
    sim = Sim({"library-queue-depth": 4, **(tuning or {})})
    sim.join("w1", cores=1)
    install(sim, library(cores=1, mode="direct"))
    short_calls(sim)
    return sim


def test_a_chain_follows_its_first_call_to_the_worker():
    sim = chain_sim()
    first, f1 = temp_call()
    second, f2 = temp_call(f1)
    third, f3 = temp_call(f2)
    out = sim.submit(first, second, third)
    dispatched = [d.task_id for d in of(out, Dispatch)]
    # All three go to w1 at once (queued inside its instance): each starts there when its input is made.
    assert dispatched == [first.id, second.id, third.id]
    assert all(d.worker == "w1" for d in of(out, Dispatch))
    assert sim.state.tasks[second.id].pinned == "w1"
    out = made(sim, "w1", first, f1)
    assert [r.task_id for r in of(out, ReturnTask)] == [first.id]
    assert sim.state.tasks[second.id].state == "dispatched"
    made(sim, "w1", second, f2)
    out = made(sim, "w1", third, f3)
    assert [r.task_id for r in of(out, ReturnTask)] == [third.id]
    sim.state.validate()


def test_without_pipelining_the_consumer_waits_for_the_file():
    sim = chain_sim({"call-pipelining": 0})
    first, f1 = temp_call()
    second, _f2 = temp_call(f1)
    out = sim.submit(first, second)
    assert [d.task_id for d in of(out, Dispatch)] == [first.id]
    assert sim.state.tasks[second.id].state == "waiting"
    out = made(sim, "w1", first, f1)
    assert [d.task_id for d in of(out, Dispatch)] == [second.id]


def test_inputs_made_on_two_workers_are_not_pinned_until_one_exists():
    sim = Sim({"library-queue-depth": 4})
    sim.join("w1", cores=1)
    sim.join("w2", cores=1)
    install(sim, library(cores=1, mode="direct"))
    short_calls(sim)
    a, fa = temp_call()
    b, fb = temp_call()
    both, _ = temp_call(fa, fb)
    out = sim.submit(a, b, both)
    where = {d.task_id: d.worker for d in of(out, Dispatch)}
    assert set(where) == {a.id, b.id} and where[a.id] != where[b.id]
    assert sim.state.tasks[both.id].state == "waiting" and sim.state.tasks[both.id].pinned is None
    # Once a's file exists, only b's is missing: the call follows b to its worker (fetching a's file there).
    out = made(sim, where[a.id], a, fa)
    assert [(d.task_id, d.worker) for d in of(out, Dispatch)] == [(both.id, where[b.id])]
    assert any(getattr(i, "name", None) == fa.cache_name for i in out)  # a's file is staged to that worker
    made(sim, where[b.id], b, fb)
    assert sim.state.tasks[both.id].state == "dispatched"
    sim.state.validate()


def test_a_pinned_call_whose_producer_failed_ends_input_missing():
    sim = chain_sim()
    first, f1 = temp_call()
    second, _f2 = temp_call(f1)
    sim.submit(first, second)
    assert sim.state.tasks[second.id].state == "dispatched"
    out = made(sim, "w1", first, f1, exit_code=1)  # the function raised: no temp
    assert [(r.task_id, r.exit_code) for r in of(out, ReturnTask)] == [(first.id, 1)]
    # The worker finds the input was never made and reports it (a temp: the cluster's fault, retried).
    out = sim.finish("w1", second, C.VINE_RESULT_INPUT_MISSING, -1, retry=True)
    assert [(r.task_id, r.result) for r in of(out, ReturnTask)] == [(second.id, C.VINE_RESULT_INPUT_MISSING)]
    assert not of(out, Dispatch)
    sim.state.validate()


def test_losing_the_worker_puts_the_chain_back_and_it_runs_again():
    sim = chain_sim()
    sim.join("w2", cores=1)
    first, f1 = temp_call()
    second, f2 = temp_call(f1)
    out = sim.submit(first, second)
    w = {d.task_id: d.worker for d in of(out, Dispatch)}
    assert w[second.id] == w[first.id]
    other = "w2" if w[first.id] == "w1" else "w1"
    out = sim.lose(w[first.id])
    again = {d.task_id: d.worker for d in of(out, Dispatch)}
    assert again.get(first.id) == other
    assert sim.state.tasks[second.id].state in ("dispatched", "waiting", "ready")
    made(sim, other, first, f1)
    if sim.state.tasks[second.id].state != "dispatched":
        sim.tick()
    assert sim.state.tasks[second.id].worker == other
    out = made(sim, other, second, f2)
    assert [r.task_id for r in of(out, ReturnTask)] == [second.id]
    sim.state.validate()
