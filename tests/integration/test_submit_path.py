"""What a queued task costs the manager (issue 13, the queued-tasks row), checked by count, not by time.

A burst of submits was mostly the cyclic garbage collector walking what each queued task left
behind: every tracked object a queued task keeps is walked by each full collection, and every one
that lives past two young collections brings the next full collection nearer. So a plain queued
task keeps three tracked objects (its ``Task``, its ``TaskSpec``, its ``TaskRecord``) and nothing
else: its READY log records and its story entry are tuples the collector stops tracking, its
requested resources and its environment are shared read-only mappings until it sets its own.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import threading

import pytest

import core as vine
from core.api.files import File
from core.api.specs import task_spec
from core.manager.logs import RunLogs
from core.state.scheduler import EventFailed, SchedulerState, TasksSubmitted, TaskSubmitted
from core.state.spec import MountSpec, TaskSpec
from core.state.story import Transition


def test_requested_resources_are_shared_read_only_and_per_task() -> None:
    a, b, c = vine.Task("a", cores=2), vine.Task("b"), vine.Task("c")
    b.set_cores(2)
    assert a.requested is b.requested, "tasks asking for the same share one mapping"
    assert dict(a.requested) == {"cores": 2.0, "memory": -1.0, "disk": -1.0, "gpus": -1.0}
    assert c.requested["cores"] == -1.0 and c.requested is not a.requested
    b.set_memory(100)  # b's own values change; a's stay
    assert b.requested["memory"] == 100.0 and a.requested["memory"] == -1.0
    b.set_memory(None)
    b.set_disk(-3)  # unset, as before
    assert b.requested is a.requested
    with pytest.raises(TypeError):
        a.requested["cores"] = 8  # type: ignore[index]
    assert task_spec(a).requested == task_spec(b).requested == vine.Resources(cores=2)


def test_environment_is_shared_empty_until_set() -> None:
    a, b = vine.Task("a"), vine.Task("b")
    assert dict(a.env) == {} and a.env is b.env
    with pytest.raises(TypeError):
        a.env["X"] = "1"  # type: ignore[index]
    a.set_env_var("X", "1")
    a.set_env_var("Y")
    assert a.env == {"X": "1", "Y": None} and dict(b.env) == {}
    assert a._task_spec(id=1).env == {"X": "1", "Y": None}
    assert b._task_spec(id=2).env == {} and type(b._task_spec(id=2).env) is dict


def test_a_plain_task_keeps_its_options_and_outcome_off_the_instance_until_set() -> None:
    t = vine.Task("true", cores=1)
    assert not hasattr(t, "__dict__") or not t.__dict__, "a plain task holds only its slots"
    assert (t.tag, t.category, t.priority, t.exit_code, t.result, t.std_output, t.max_retries) == (
        None, "default", 0.0, -1, "unknown", "", 0)
    t.set_category("c")
    t.set_tag("x")
    u = vine.Task("true")
    assert (t.category, t.tag, u.category, u.tag) == ("c", "x", "default", None)


def test_spec_is_an_immutable_tuple_with_named_fields() -> None:
    t = vine.Task("echo hi", cores=2, category="c")
    t._id = 4
    spec = task_spec(t)
    assert isinstance(spec, TaskSpec) and (spec.id, spec.kind, spec.command, spec.category) == (4, "command", "echo hi", "c")
    other = spec._replace(id=5)
    assert (other.id, other.command, other.requested) == (5, "echo hi", spec.requested) and spec.id == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.id = 6  # type: ignore[misc]
    with pytest.raises(ValueError, match="kind"):
        TaskSpec(1, kind="shell")  # type: ignore[arg-type]


def test_ready_records_wait_for_the_flush_untracked(tmp_path) -> None:
    """The READY records of a submit wait for the ticker's flush as tuples of numbers and strings,
    which the collector stops tracking at its first look (a tracked one per queued task, living
    until the flush, brought every full collection nearer)."""
    logs = RunLogs(str(tmp_path / "vine-run-info"))
    try:
        box = task_spec(vine.Task("true", cores=1)).requested
        for tid in range(1, 101):
            logs.task_ready(tid, "default", 1, box, 1700000000.0 + tid)
        queued = [r for r in logs._tx_queue if type(r) is tuple]
        assert len(queued) == 100
        gc.collect()
        assert not any(gc.is_tracked(r) for r in queued)
        logs.flush()
        with open(os.path.join(logs.log_dir, "transactions")) as fh:
            ready = [line.split() for line in fh if " READY " in line and not line.startswith("#")]
        assert [r[3] for r in ready] == [str(i) for i in range(1, 101)]
        assert ready[0][0] == "1700000001000000" and ready[0][4:8] == ["READY", "default", "FIRST_RESOURCES", "1"]
        assert json.loads(ready[0][8]) == {"cores": [1.0, "cores"]}
        with open(os.path.join(logs.log_dir, "debug")) as fh:
            assert "vine: Task 100 state change: INITIAL (0) to READY (1)" in fh.read()
    finally:
        logs.close({}, None)


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.timeout(120)
def test_a_queued_task_keeps_three_tracked_objects(manager) -> None:
    """1,000 queued tasks, no worker: what each leaves for the collector, its logs still complete."""
    n = 1000
    manager._call(lambda: None)
    warm = [vine.Task("true", cores=1) for _ in range(10)]
    for t in warm:
        manager.submit(t)
    manager._call(lambda: None)
    before = _tracked()
    ids = []
    for _ in range(n):
        t = vine.Task("true")
        t.set_cores(1)
        ids.append(manager.submit(t))
    manager._call(lambda: None)
    per_task = (_tracked() - before) / n
    assert per_task <= 3.05, f"{per_task:.2f} tracked objects per queued task (Task, TaskSpec, TaskRecord: 3)"
    assert manager.stats.tasks_waiting == n + len(warm)
    assert ids == list(range(len(warm) + 1, len(warm) + n + 1))
    # The story entries are plain tuples inside, Transitions when read.
    story = manager._call(lambda: manager._state.story(ids[-1]))
    assert [(s.start, s.finish) for s in story] == [("new", "ready")] and isinstance(story[0], Transition)
    manager._logs.flush()
    with open(os.path.join(manager.logging_directory, "transactions")) as fh:
        ready = [line.split() for line in fh if " READY " in line and not line.startswith("#")]
    assert len(ready) == n + len(warm)
    last = ready[-1]
    assert last[2:8] == ["TASK", str(ids[-1]), "READY", "default", "FIRST_RESOURCES", "1"]
    assert json.loads(last[8]) == {"cores": [1.0, "cores"]}
    with open(os.path.join(manager.logging_directory, "debug")) as fh:
        debug = fh.read()
    assert f"Task {ids[-1]} state change: INITIAL (0) to READY (1)" in debug


@pytest.mark.timeout(120)
def test_submits_from_two_threads_count_every_task(manager) -> None:
    """The shared request table and the log tuples under two submitting threads: nothing lost."""
    per_thread = 2000
    errors: list[BaseException] = []

    def burst(cores: int) -> None:
        try:
            for _ in range(per_thread):
                manager.submit(vine.Task("true", cores=cores))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=burst, args=(c,)) for c in (1, 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and not any(th.is_alive() for th in threads)
    assert manager.stats.tasks_waiting == 2 * per_thread
    by_cores = manager._call(lambda: sorted({rec.spec.requested.cores for rec in manager._state.tasks.values()}))
    assert by_cores == [1.0, 2.0]


@pytest.mark.timeout(120)
def test_a_burst_of_submits_reaches_the_state_in_few_events_in_order(manager) -> None:
    """A submit posts its spec alone; the I/O thread hands each run of posted specs to the state
    as one TasksSubmitted. Every task arrives, in submit order, and far fewer events than tasks
    are made (one TaskSubmitted per task before)."""
    manager._call(lambda: None)
    n = 3000
    ids = [manager.submit(vine.Task("true", cores=1)) for _ in range(n)]
    assert manager.stats.tasks_waiting == n
    log = manager._call(lambda: list(manager._state._story.log))
    made = [(entry[0], entry[1], entry[2]) for entry in log if entry[3] == "new"]
    assert [tid for tid, _, _ in made] == ids, "every task made ready once, in submit order"
    assert {name for _, name, _ in made} == {"TasksSubmitted"}
    events = len({event_id for _, _, event_id in made})
    assert events < n / 2, f"{events} events for {n} submits"


@pytest.mark.timeout(120)
def test_a_cancel_between_two_submits_applies_between_them(manager) -> None:
    """Other events keep their place among the posted specs: a run of specs is cut where a cancel
    was posted, so the cancel finds its task queued (applied before it, it would find nothing and
    the task would stay queued for ever)."""
    manager._call(lambda: None)
    ids, cancelled = [], []
    for i in range(700):
        tid = manager.submit(vine.Task("true", cores=1))
        ids.append(tid)
        if i % 7 == 3:
            assert manager.cancel_by_task_id(tid)
            cancelled.append(tid)
    back = []
    while len(back) < len(cancelled):
        t = manager.wait(30)
        assert t is not None, f"{len(back)} of {len(cancelled)} cancelled tasks came back"
        back.append(t)
    assert sorted(t.id for t in back) == cancelled and {t.result for t in back} == {"cancelled"}
    assert manager.stats.tasks_waiting == len(ids) - len(cancelled)
    story = manager._call(lambda: manager._state.story(cancelled[-1]))
    assert [(s.event, s.start, s.finish) for s in story] == [("TasksSubmitted", "new", "ready"),
                                                              ("TaskCancelled", "ready", "done")]


def test_a_spec_failing_inside_a_batch_is_reported_alone_and_the_rest_apply() -> None:
    """One bad spec in a TasksSubmitted is reported as its own TaskSubmitted failing (as one event
    per task reported it); the specs before and after it are still queued."""
    state = SchedulerState()
    specs = []
    for tid in (1, 2, 3):
        t = vine.Task("true", cores=1)
        t._id = tid
        specs.append(task_spec(t))
    bad = specs[1]._replace(inputs=(MountSpec(None, "x"),))  # type: ignore[arg-type]  # a value no check caught
    out = state.handle(TasksSubmitted(5.0, (specs[0], bad, specs[2])))
    failed = [ins for ins in out if isinstance(ins, EventFailed)]
    assert len(failed) == 1 and isinstance(failed[0].event, TaskSubmitted) and failed[0].event.spec is bad
    assert state.failed_events[0][0] is failed[0].event and isinstance(failed[0].error, AttributeError)
    assert state.tasks[1].state == state.tasks[3].state == "ready"
    assert state.stats["tasks_submitted"] == 3
    assert [(entry[0], entry[1]) for entry in state._story.log] == [(1, "TasksSubmitted"), (3, "TasksSubmitted")]


def test_a_burst_leaves_the_state_one_submit_at_a_time_would() -> None:
    """TasksSubmitted admits a plain spec (no files, no deadline) on a path of its own, with the
    counts added once for the burst; a spec with files or a deadline takes _submit's. Both must
    leave exactly the state that one TaskSubmitted per spec leaves: records, ready heap, counts,
    the queued requests, the story and the stats, for a mix of shapes, priorities and kinds."""

    def specs() -> list[TaskSpec]:
        made = []
        for tid in range(1, 41):
            t = vine.Task(f"echo {tid}")
            if tid % 3:
                t.set_cores(1 + tid % 2)
            if tid % 5 == 0:
                t.set_memory(100 * tid)
            if tid % 4 == 0:
                t.set_priority(tid)
            if tid % 7 == 0:
                t.set_time_end(int(1e6 * (1e9 + tid)))  # a deadline: _submit's path
            if tid % 11 == 0:
                t.add_input(File(None, "buffer", "buffer", data=b"x"), "in")  # a file: _submit's path
            t._id = tid
            made.append(task_spec(t))
        return made

    burst, single = SchedulerState(), SchedulerState()
    burst.handle(TasksSubmitted(5.0, tuple(specs())))
    for spec in specs():
        single.handle(TaskSubmitted(5.0, spec))
    for state in (burst, single):
        state.validate()
    assert {tid: (r.state, r.heap_key, r.seq) for tid, r in burst.tasks.items()} == \
        {tid: (r.state, r.heap_key, r.seq) for tid, r in single.tasks.items()}
    assert sorted(burst.ready) == sorted(single.ready) and len(burst.ready) == 40
    assert burst.state_counts == single.state_counts and burst.waiting_shapes == single.waiting_shapes
    assert len(burst.waiting_shapes) > 3, burst.waiting_shapes  # the mix did make several shapes
    assert burst.stats == single.stats
    assert [(e[0], e[3], e[4]) for e in burst._story.log] == [(e[0], e[3], e[4]) for e in single._story.log]
    assert {e[1] for e in burst._story.log} == {"TasksSubmitted"}
    assert len(burst.deadlines) == len(single.deadlines) == 5
