"""Libraries and function calls in the pure scheduler state: slots, starts, exits, eviction."""

from __future__ import annotations

from core import constants as C
from core.api.library import FunctionCall, LibraryTask
from core.api.specs import task_spec
from core.api.task import Task
from core.state.libraries import QUEUE_BUDGET, LibraryInstalled, LibraryRemoved, StartLibrary, library_slots
from core.state.resources import Resources
from core.state.scheduler import Dispatch, Kill, ReturnTask
from tests.unit.test_scheduler import Sim as _Sim
from tests.unit.test_scheduler import box, of, placed


def Sim(tuning: dict[str, float] | None = None, **kw: object) -> _Sim:  # noqa: N802 - stands in for the class
    """The scheduler simulator with calls placed slot by slot unless a test asks for queueing."""
    return _Sim({"library-queue-depth": 1, **(tuning or {})}, **kw)  # type: ignore[arg-type]


def library(name: str = "lib", cores: float = -1, slots: int = 0, mode: str = "fork") -> LibraryTask:
    t = LibraryTask("true", name)
    if cores >= 0:
        t.set_cores(cores)
    t.set_function_slots(slots)
    t.set_function_exec_mode_from_string(mode)
    return t


def install(sim: Sim, lib: LibraryTask) -> None:
    sim.handle(LibraryInstalled(sim.now, task_spec(lib)))


def call(name: str = "lib", fn: str = "f") -> FunctionCall:
    return FunctionCall(name, fn)


def test_slots_rule():
    assert library_slots(task_spec(library(mode="direct", slots=4)), Resources(4, 1, 1, 0)) == 1
    assert library_slots(task_spec(library(slots=3)), Resources(4, 1, 1, 0)) == 3
    assert library_slots(task_spec(library()), Resources(4, 1, 1, 0)) == 4
    assert library_slots(task_spec(library()), Resources(0, 1, 1, 1)) == 1


def test_calls_start_instances_while_there_is_room_and_take_no_resources():
    sim = Sim({"library-queue-depth": 1})  # no queueing inside instances: a call needs a free slot
    sim.join("w1", cores=4)
    install(sim, library(cores=2))
    calls = [call() for _ in range(5)]
    out = sim.submit(*calls)
    starts = of(out, StartLibrary)
    assert len(starts) == 2  # 2 cores each on a 4-core worker
    assert all(s.slots == 2 and box(s.allocation)[0] == 2 and s.instance_id < 0 for s in starts)
    dispatched = of(out, Dispatch)
    assert len(dispatched) == 4  # two slots each; the fifth call waits for a slot
    assert all(box(d.allocation) == (0, 0, 0, 0) for d in dispatched)
    assert {sim.state.libs.instance_of(d.task_id) for d in dispatched} == {s.instance_id for s in starts}
    assert sim.state.workers["w1"].committed.cores == 4
    assert sim.state.tasks[calls[4].id].state == "ready"


def test_calls_beyond_free_slots_queue_in_the_least_busy_instance():
    """With library-queue-depth d an instance holds up to slots*d calls; new instances start first."""
    sim = Sim({"library-queue-depth": 2})
    sim.join("w1", cores=4)
    install(sim, library(cores=2))
    tmpl = sim.state.libs.templates["lib"]
    tmpl.calls_seen, tmpl.mean_call = 4, 0.001  # its calls were measured short
    calls = [call() for _ in range(10)]
    out = sim.submit(*calls)
    starts = of(out, StartLibrary)
    assert len(starts) == 2  # both instances started before any call queues
    dispatched = of(out, Dispatch)
    assert len(dispatched) == 8  # 2 instances x 2 slots x depth 2
    per_instance = [sum(1 for d in dispatched if sim.state.libs.instance_of(d.task_id) == s.instance_id) for s in starts]
    assert per_instance == [4, 4]
    assert [sim.state.tasks[c.id].state for c in calls[8:]] == ["ready", "ready"]
    sim.state.validate()


def test_long_or_unmeasured_calls_do_not_queue_inside_instances():
    sim = Sim({"library-queue-depth": 8})
    sim.join("w1", cores=2)
    install(sim, library(cores=2, slots=2))
    assert sim.state.libs.depth_for("lib") == 1  # nothing measured yet
    tmpl = sim.state.libs.templates["lib"]
    tmpl.calls_seen, tmpl.mean_call = 10, 2.0  # seconds per call: queueing would only add waiting
    out = sim.submit(*[call() for _ in range(5)])
    assert len(of(out, Dispatch)) == 2
    tmpl.mean_call = 0.001
    assert sim.state.libs.depth_for("lib") == 8  # short: as deep as the tune allows
    tmpl.mean_call = 0.04  # short, but 8 of them would take 0.32 s: as many as take QUEUE_BUDGET
    assert sim.state.libs.depth_for("lib") == int(QUEUE_BUDGET / 0.04) == 5
    sim.state.validate()


def test_call_end_frees_a_slot():
    sim = Sim()
    sim.join("w1", cores=1)
    install(sim, library(cores=1))
    a, b = call(), call()
    out = sim.submit(a, b)
    assert list(placed(out)) == [a.id]
    out = sim.finish("w1", a)
    assert list(placed(out)) == [b.id]
    assert of(out, ReturnTask)[0].task_id == a.id


def test_missing_template_ends_calls():
    sim = Sim()
    sim.join("w1")
    out = sim.submit(call("ghost"))
    assert [r.result for r in of(out, ReturnTask)] == [C.VINE_RESULT_MISSING_LIBRARY]


def test_repeated_exits_remove_the_template():
    sim = Sim({"max-library-retries": 1})
    sim.join("w1", cores=1)
    install(sim, library(cores=1))
    c = call()
    out = sim.submit(c)
    iid = of(out, StartLibrary)[0].instance_id
    # The library dies before the call started: the worker asks for a retry.
    sim.finish("w1", iid, C.VINE_RESULT_LIBRARY_EXIT, 1)
    out = sim.finish("w1", c, C.VINE_RESULT_MISSING_LIBRARY, 9, retry=True)
    second = of(out, StartLibrary)
    assert len(second) == 1 and second[0].instance_id != iid
    out = sim.finish("w1", second[0].instance_id, C.VINE_RESULT_LIBRARY_EXIT, 1)
    out += sim.finish("w1", c, C.VINE_RESULT_MISSING_LIBRARY, 9, retry=True)
    assert [r.result for r in of(out, ReturnTask)] == [C.VINE_RESULT_MISSING_LIBRARY]
    assert "lib" not in sim.state.libs.templates
    assert "exited 2 times" in sim.state.libs.removed_reason["lib"]


def test_call_seeing_its_library_die_stops_new_calls_there():
    sim = Sim()
    sim.join("w1", cores=1)
    install(sim, library(cores=1, mode="direct"))
    a, b = call(), call()
    out = sim.submit(a, b)
    iid = of(out, StartLibrary)[0].instance_id
    out = sim.finish("w1", a, C.VINE_RESULT_LIBRARY_EXIT, 9)
    assert b.id not in placed(out)  # not into the dying instance
    assert sim.state.libs.instances[iid].dead
    out = sim.finish("w1", iid, C.VINE_RESULT_LIBRARY_EXIT, 7)  # its own report frees the room
    assert placed(out) == {b.id: "w1"} and len(of(out, StartLibrary)) == 1
    assert sim.state.libs.templates["lib"].exits == 1  # counted once


def test_idle_instance_gives_room_to_a_task():
    sim = Sim()
    sim.join("w1", cores=2)
    install(sim, library())  # whole worker
    c = call()
    iid = of(sim.submit(c), StartLibrary)[0].instance_id
    t = Task("echo hi")
    assert placed(sim.submit(t)) == {}  # the instance is busy with the call
    out = sim.finish("w1", c)
    assert [k.task_id for k in of(out, Kill)] == [iid]
    assert placed(out) == {t.id: "w1"}
    assert sim.state.libs.instances == {}


def test_remove_library_kills_instances_and_fails_waiting_calls():
    sim = Sim()
    sim.join("w1", cores=1)
    install(sim, library(cores=1))
    a, b = call(), call()
    out = sim.submit(a, b)
    iid = of(out, StartLibrary)[0].instance_id
    out = sim.handle(LibraryRemoved(sim.now, "lib"))
    assert [k.task_id for k in of(out, Kill)] == [iid]
    assert [(r.task_id, r.result) for r in of(out, ReturnTask)] == [(b.id, C.VINE_RESULT_MISSING_LIBRARY)]
    out = sim.finish("w1", a, C.VINE_RESULT_LIBRARY_EXIT, 9)
    assert [(r.task_id, r.result) for r in of(out, ReturnTask)] == [(a.id, C.VINE_RESULT_LIBRARY_EXIT)]


def test_worker_loss_forgets_instances():
    sim = Sim()
    sim.join("w1", cores=1)
    install(sim, library(cores=1))
    c = call()
    sim.submit(c)
    sim.lose("w1")
    assert sim.state.libs.instances == {} and sim.state.libs.call_instance == {}
    out = sim.join("w2", cores=1)
    assert len(of(out, StartLibrary)) == 1 and placed(out) == {c.id: "w2"}
