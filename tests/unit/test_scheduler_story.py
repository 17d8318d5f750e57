"""The state owns its data (issue 11 points 2-3): frozen specs, events as the only way in, stories.

Pure: a SchedulerState, a fake clock, no processes.
"""

from __future__ import annotations

import dataclasses

import pytest

from core import constants as C
from core.api.files import File
from core.api.specs import file_spec, task_spec
from core.api.task import Task
from core.state import story as story_module
from core.state.events import (
    CategoryBoxSet,
    CategoryModeSet,
    EventFailed,
    HostDraining,
    TasksRetrieved,
    TuneChanged,
)
from core.state.resources import Resources
from core.state.scheduler import Dispatch, ReturnTask, SchedulerState, TaskSubmitted, WorkerJoined
from core.state.spec import FileSpec, TaskSpec

from .test_scheduler import Sim, placed


def test_the_spec_is_frozen_and_holds_what_the_scheduler_reads() -> None:
    t = Task("echo hi", cores=2, memory=100, priority=3, category="c", features=["gpu"])
    t.set_time_end(int(50 * 1e6))  # microseconds in the API
    t.set_time_min(7)
    t._id = 9
    spec = task_spec(t)
    assert (spec.id, spec.kind, spec.command, spec.category, spec.priority) == (9, "command", "echo hi", "c", 3.0)
    assert spec.requested == Resources(2, 100, -1, -1) and spec.features == ("gpu",)
    assert spec.time_end == 50.0 and spec.time_min == 7.0  # seconds inside the state
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.priority = 5  # type: ignore[misc]
    assert not hasattr(spec, "__dict__"), "specs have slots: no per-task dict"


def test_a_file_spec_is_shared_by_the_tasks_that_use_it() -> None:
    f = File(None, "buffer", "buffer", data=b"x", cache="workflow")
    a, b = Task("a"), Task("b")
    a.add_input(f, "in")
    b.add_input(f, "in")
    assert task_spec(a).inputs[0].file is task_spec(b).inputs[0].file
    f.set_mode(0o700)  # what a user may still change makes a new spec
    spec = file_spec(f)
    assert isinstance(spec, FileSpec) and spec.mode == 0o700 and spec.cache_name == f.cache_name


def test_the_scheduler_holds_no_user_object() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("true", cores=1)
    sim.submit(t)
    rec = sim.state.tasks[t.id]
    assert isinstance(rec.spec, TaskSpec) and not hasattr(rec, "task")
    t._state = C.VINE_TASK_INITIAL  # even a task made mutable again cannot reach the scheduler
    t.set_cores(3)
    assert rec.spec.requested.cores == 1


def test_story_replays_a_task_with_event_names_and_ids() -> None:
    sim = Sim()
    t = Task("true", cores=1)
    sim.submit(t)  # no worker: it waits in the ready queue
    sim.join("w1")
    sim.finish("w1", t)
    steps = [(s.event, s.start, s.finish) for s in sim.state.story(t.id)]
    assert steps == [("TaskSubmitted", "new", "ready"), ("schedule", "ready", "dispatched"),
                     ("TaskFinished", "dispatched", "done")]
    ids = [s.event_id for s in sim.state.story(t.id)]
    assert ids[0] < ids[1] <= ids[2], ids  # the pass is named by the event before it (the join)
    assert sim.state.story(12345) == []


def test_story_shows_a_lost_worker_and_the_retry() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("true", cores=1)
    sim.submit(t)
    sim.join("w2")
    sim.lose(sim.where(t) or "")
    assert [(s.event, s.finish) for s in sim.state.story(t.id)][-2:] == [("WorkerLost", "ready"), ("schedule", "dispatched")]


def test_the_story_log_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(story_module, "STORY_LENGTH", 10)
    state = SchedulerState()
    for i in range(1, 30):
        t = Task("true")
        t._id = i
        state.handle(TaskSubmitted(1.0, task_spec(t)))
    assert len(state._story.log) == 10
    assert state.story(1) == [] and len(state.story(29)) == 1


def test_validate_fails_on_a_transition_the_table_does_not_allow() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("true", cores=1)
    sim.submit(t)
    sim.finish("w1", t)
    rec = sim.state.tasks[t.id]
    sim.state._transition(rec, "dispatched")  # done -> dispatched: a bug
    with pytest.raises(AssertionError, match="transitions the table does not allow"):
        sim.state.validate()


def test_settings_arrive_as_events() -> None:
    sim = Sim()
    sim.join("a", hostname="host-a")
    sim.join("b", hostname="host-b")
    sim.handle(HostDraining(sim.now, "host-a"))
    assert sim.state.workers["a"].draining and not sim.state.workers["b"].draining
    tasks = [Task(f"t{i}", cores=1) for i in range(3)]
    assert set(placed(sim.submit(*tasks)).values()) == {"b"}
    sim.handle(TuneChanged(sim.now, "library-queue-depth", 3))
    assert sim.state.libs.depth == 3 and sim.state.tuning["library-queue-depth"] == 3
    sim.handle(CategoryModeSet(sim.now, "c", C.VINE_ALLOCATION_MODE_MAX))
    sim.handle(CategoryBoxSet(sim.now, "c", "maximum", Resources(1, 100, 100, 0)))
    cat = sim.state.categories.categories["c"]
    assert cat.maximum == Resources(1, 100, 100, 0) and sim.state.categories.mode_of(cat) == C.VINE_ALLOCATION_MODE_MAX


def test_a_failing_event_comes_back_as_an_instruction() -> None:
    state = SchedulerState()
    out = state.handle(WorkerJoined(1.0, "w", "h", "h:1", Resources(float("inf"), 1, 1, 0)))
    (failed,) = [i for i in out if isinstance(i, EventFailed)]
    assert isinstance(failed.event, WorkerJoined) and isinstance(failed.error, ValueError)


def test_retrieved_tasks_are_let_go() -> None:
    sim = Sim()
    sim.join("w1")
    t = Task("true", cores=1)
    (d,) = [i for i in sim.submit(t) if isinstance(i, Dispatch)]
    out = sim.finish("w1", t)
    assert [r.task_id for r in out if isinstance(r, ReturnTask)] == [t.id]
    sim.handle(TasksRetrieved(sim.now, (t.id, 999)))
    assert t.id not in sim.state.tasks and d.worker == "w1"


def test_recovery_reruns_the_producers_spec_under_its_own_id() -> None:
    sim = Sim()
    sim.join("w1")
    x = File(None, "temp", "temp")
    producer, consumer = Task("make"), Task("use")
    producer.add_output(x, "x")
    consumer.add_input(x, "x")
    sim.submit(producer)
    sim.cached("w1", x)
    sim.finish("w1", producer)
    sim.handle(TasksRetrieved(sim.now, (producer.id,)))
    sim.lose("w1")
    sim.join("w2")
    sim.submit(consumer)
    (copy,) = [r for r in sim.state.tasks.values() if r.recovery]
    assert copy.id != producer.id and copy.spec.id == producer.id and copy.spec.command == "make"
    assert copy.spec is sim.state.lineage[x.cache_name], "the spec is shared, not copied"


def test_the_prefetch_rule_both_sides_use() -> None:
    from core.state.prefetch import start_in_order, waits_in_queue

    assert waits_in_queue([], fits_now=False) and waits_in_queue(["ahead"], fits_now=True)
    assert not waits_in_queue([], fits_now=True)
    room = [3]
    queue = [2, 1, 5, 1]
    started: list[int] = []

    def start(need: int) -> None:
        room[0] -= need
        started.append(need)

    assert start_in_order(queue, lambda need: need <= room[0], start) == 2
    assert started == [2, 1] and queue == [5, 1], "the head that does not fit holds back the ones behind it"


def test_one_eligibility_rule_for_placing_and_for_pinned_calls() -> None:
    sim = Sim()
    sim.join("short", end_time=sim.now + 10)
    sim.join("long", end_time=sim.now + 1000)
    t = Task("true", cores=1)
    t.set_time_min(100)
    assert placed(sim.submit(t)) == {t.id: "long"}
    spec = task_spec(t)
    assert not sim.state.placement.open_to(spec, sim.state.workers["short"], sim.now)
    sim.handle(HostDraining(sim.now, "host-long"))
    assert not sim.state.placement.open_to(spec, sim.state.workers["long"], sim.now)
