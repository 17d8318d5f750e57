"""Task options end to end: tags, ids, priorities, environment, features, placement, resources."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

import core as vine
from core.errors import ManagerError, TaskError, TuneError
from tests.conftest import drain, run, wait_for_workers, wait_until
from tests.integration.conftest import records


def rendezvous(directory, me: str, others: list[str], timeout_s: int = 20) -> str:
    """Shell snippet: record a start time, wait (bounded) until ``others`` started, record an end time.

    Tasks that were not running at the same time fail (exit 9) instead of hanging.
    """
    waits = " && ".join(f"[ -e {directory}/{o}.start ]" for o in others) or "true"
    return (
        f"date +%s%N > {directory}/{me}.start.tmp && mv {directory}/{me}.start.tmp {directory}/{me}.start; "
        f"n=0; until {waits}; do n=$((n+1)); [ $n -gt {timeout_s * 50} ] && exit 9; sleep 0.02; done; "
        f"date +%s%N > {directory}/{me}.end"
    )


# --- waiting -------------------------------------------------------------------------------------


def test_wait_for_tag(m):
    manager = m
    ids = {tag: [manager.submit(vine.Task(f"echo {tag}", tag=tag)) for _ in range(2)] for tag in ("red", "blue")}
    got = []
    for _ in range(2):
        t = manager.wait_for_tag("blue", 30)
        assert t is not None and t.tag == "blue" and t.output == "blue\n"
        got.append(t.id)
    assert sorted(got) == ids["blue"]
    assert manager.wait_for_tag("blue", 0) is None  # none left with that tag
    rest = drain(manager, 30)
    assert sorted(t.id for t in rest) == ids["red"]


def test_wait_for_task_id(manager, start_worker):
    start_worker(manager, cores=1)
    ids = [manager.submit(vine.Task(f"echo {i}")) for i in range(3)]
    assert ids == [1, 2, 3]
    t = manager.wait_for_task_id(ids[2], 30)
    assert (t.id, t.output) == (ids[2], "2\n")
    assert sorted(t.id for t in drain(manager, 30)) == ids[:2]


def test_wait_timeouts(manager):
    assert manager.wait(0) is None  # nothing submitted
    manager.submit(vine.Task("true"))  # no worker: stays queued
    assert manager.wait(0) is None
    assert manager.wait(0.2) is None
    with pytest.raises(ValueError):
        manager.wait(-5)
    assert manager.cancel_all() == 1
    assert manager.wait(5).result == "cancelled"


# --- ordering ------------------------------------------------------------------------------------


def test_priorities_on_one_core(manager, start_worker, tmp_path):
    order = tmp_path / "order"
    prios = [0, 5, -3, 10, 1]
    for p in prios:
        manager.submit(vine.Task(f"echo {p} >> {order}", cores=1, priority=p))
    start_worker(manager, cores=1)  # after submitting, so every task is queued when it arrives
    done = drain(manager, 30)
    assert all(t.result == "success" for t in done)
    ran = [int(x) for x in order.read_text().split()]
    assert ran == sorted(prios, reverse=True)


def test_equal_priority_is_first_come_first_served(manager, start_worker, tmp_path):
    order = tmp_path / "order"
    for i in range(4):
        manager.submit(vine.Task(f"echo {i} >> {order}", cores=1))
    start_worker(manager, cores=1)
    drain(manager, 30)
    assert order.read_text().split() == ["0", "1", "2", "3"]


# --- environment ---------------------------------------------------------------------------------


def test_env_vars(manager, start_worker, monkeypatch):
    monkeypatch.setenv("VINE_TEST_INHERITED", "from-worker")
    start_worker(manager, cores=1)
    t = vine.Task('echo "$GREETING|$EMPTY|${VINE_TEST_INHERITED-unset}"')
    t.set_env_var("GREETING", "hello world")
    t.set_env_var("EMPTY", "")
    t.set_env_var("VINE_TEST_INHERITED", None)  # None unsets
    t = run(manager, t)
    assert t.output == "hello world||unset\n"
    t = run(manager, vine.Task('echo "$A$B"', env={"A": "x", "B": "y"}))
    assert t.output == "xy\n"


def test_sandbox_env(manager, start_worker):
    start_worker(manager, cores=2, memory=2000, disk=4000)
    t = vine.Task('echo "$CORES $MEMORY $DISK $GPUS"; echo "$VINE_SANDBOX"; pwd -P; echo "$TMPDIR"', cores=1)
    t = run(manager, t)
    counts, sandbox, cwd, tmpdir = t.output.split("\n")[:4]
    cores, memory, disk, gpus = (int(x) for x in counts.split())
    assert (cores, memory, gpus) == (1, 1000, 0)
    assert 0 < disk <= 2000
    alloc = t.resources_allocated
    assert (alloc.cores, alloc.memory, alloc.disk) == (cores, memory, disk)
    assert sandbox and cwd.endswith(sandbox.rsplit("/", 1)[-1])
    assert tmpdir.startswith(sandbox)


# --- placement -----------------------------------------------------------------------------------


def test_features(manager, start_worker):
    start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    plain = manager.submit(vine.Task("echo plain"))
    needy = manager.submit(vine.Task("echo special", features=["gpu-ish"]))
    t = manager.wait(30)
    assert t.id == plain
    assert manager.wait(0.3) is None  # no worker has the feature: it waits
    w = start_worker(manager, cores=1, extra=["--feature", "gpu-ish", "--feature", "other"])
    t = manager.wait_for_task_id(needy, 30)
    assert (t.result, t.output) == ("success", "special\n")
    assert w.proc.poll() is None


def test_three_workers_share_the_work(manager, start_worker, tmp_path):
    for _ in range(3):
        start_worker(manager, cores=1)
    wait_for_workers(manager, 3)
    names = ["a", "b", "c"]
    for me in names:
        manager.submit(vine.Task(rendezvous(tmp_path, me, [o for o in names if o != me]), cores=1))
    done = drain(manager, 60)
    assert [(t.result, t.exit_code) for t in done] == [("success", 0)] * 3
    assert len({t.addrport for t in done}) == 3
    assert all(t.hostname for t in done)
    running = {r[3] for r in records(manager, "TASK") if r[2] == "RUNNING"}
    assert len(running) == 3  # three different worker ids


def test_proportional_allocation(manager, start_worker):
    start_worker(manager, cores=4, memory=4000, disk=4000)
    t = run(manager, vine.Task('echo "$CORES $MEMORY"', cores=1))
    alloc = t.resources_allocated
    assert (alloc.cores, alloc.memory) == (1, 1000)
    assert 0 < alloc.disk <= 1000
    assert t.output == "1 1000\n"
    # No request at all: the whole worker.
    t = run(manager, vine.Task('echo "$CORES $MEMORY"'))
    assert (t.resources_allocated.cores, t.resources_allocated.memory) == (4, 4000)
    # Memory drives the share: 2000 MB of 4000 is half the worker, so 2 cores.
    t = run(manager, vine.Task('echo "$CORES $MEMORY"', memory=2000))
    assert (t.resources_allocated.cores, t.resources_allocated.memory) == (2, 2000)


def test_two_tasks_overlap_on_a_two_core_worker(manager, start_worker, tmp_path):
    start_worker(manager, cores=2, memory=2000)
    manager.submit(vine.Task(rendezvous(tmp_path, "x", ["y"]), cores=1))
    manager.submit(vine.Task(rendezvous(tmp_path, "y", ["x"]), cores=1))
    done = drain(manager, 60)
    assert [(t.result, t.exit_code) for t in done] == [("success", 0)] * 2
    starts = [int((tmp_path / f"{n}.start").read_text()) for n in "xy"]
    ends = [int((tmp_path / f"{n}.end").read_text()) for n in "xy"]
    assert max(starts) < min(ends)  # both were running at once
    assert len({t.addrport for t in done}) == 1


def test_one_core_worker_runs_one_at_a_time(manager, start_worker, tmp_path):
    start_worker(manager, cores=1)
    for n in "pq":
        manager.submit(vine.Task(f"date +%s%N > {tmp_path}/{n}.start; sleep 0.1; date +%s%N > {tmp_path}/{n}.end", cores=1))
    drain(manager, 30)
    (_s1, e1), (s2, _e2) = sorted((int((tmp_path / f"{n}.start").read_text()), int((tmp_path / f"{n}.end").read_text())) for n in "pq")
    assert e1 <= s2


def test_task_larger_than_any_worker(manager, start_worker, caplog):
    caplog.set_level(logging.WARNING, logger="core.manager")
    start_worker(manager, cores=1, memory=1000)
    wait_for_workers(manager, 1)
    tid = manager.submit(vine.Task("echo big", cores=2))

    def warned() -> bool:
        return any(r.name == "core.manager" and r.levelno == logging.WARNING and f"task {tid} " in r.getMessage() for r in caplog.records)

    wait_until(warned, 30, "the oversized-task warning")
    assert manager.wait(0.3) is None
    assert not manager.empty()
    warnings = [r.getMessage() for r in caplog.records if r.name == "core.manager" and f"task {tid} " in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not on every scheduling pass
    assert "cores" in warnings[0]
    start_worker(manager, cores=2, memory=2000)
    t = manager.wait_for_task_id(tid, 30)
    assert (t.result, t.output) == ("success", "big\n")
    assert t.resources_allocated.cores == 2


# --- API contracts ---------------------------------------------------------------------------------


def test_task_keyword_constructor(manager, start_worker, tmp_path):
    start_worker(manager, cores=2, memory=2000)
    src = tmp_path / "in.txt"
    src.write_text("kw")
    out = manager.declare_buffer(None)
    t = vine.Task(
        "cat in.txt > out.txt; echo $K",
        cores=1,
        memory=500,
        tag="kw",
        category="cat-a",
        priority=3,
        env={"K": "v"},
        inputs={manager.declare_file(str(src)): "in.txt"},
        outputs={out: {"remote_name": "out.txt"}},
    )
    assert (t.tag, t.category, t.priority) == ("kw", "cat-a", 3)
    assert t.resources_requested.cores == 1 and t.resources_requested.memory == 500
    t = run(manager, t)
    assert (t.result, t.output, out.contents()) == ("success", "v\n", b"kw")
    # Proportional (REFERENCE §3.3): 1 of 2 cores is the larger share, so half the memory.
    assert (t.resources_allocated.cores, t.resources_allocated.memory) == (1, 1000)
    with pytest.raises(TypeError):
        vine.Task("true", no_such_option=1)
    with pytest.raises(TypeError):
        vine.Task({"command": "true"})


def test_submit_twice_raises(m):
    t = vine.Task("true")
    tid = m.submit(t)
    with pytest.raises(TaskError):
        m.submit(t)
    t = m.wait_for_task_id(tid, 30)
    with pytest.raises(TaskError):
        m.submit(t)  # also after it finished


def test_bad_names_raise(manager, tmp_path):
    f = manager.declare_buffer("x")
    t = vine.Task("true")
    with pytest.raises(ValueError):
        t.add_input(f, "/etc/passwd")
    with pytest.raises(ValueError):
        t.add_output(manager.declare_buffer(None), "/abs/out")
    with pytest.raises(ValueError):
        t.add_input(f, "")
    with pytest.raises(ValueError):
        manager.declare_file("")
    with pytest.raises(ValueError):
        manager.declare_url("not a url")


def test_unknown_tune_raises(manager):
    with pytest.raises(TuneError):
        manager.tune("no-such-parameter", 1)
    assert manager.tune("keepalive-interval", 5) == 0


def test_wait_negative_timeout_raises(manager):
    with pytest.raises(ValueError):
        manager.wait(-5)
    assert manager.wait(-1 if manager.empty() else 0) is None  # -1 means forever; returns at once when empty


def test_time_start_delays_the_task(manager, start_worker):
    start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    not_before = time.time() + 0.5
    t = vine.Task("date +%s%N", time_start=int(not_before * 1e6))
    t = run(manager, t)
    assert t.result == "success"
    assert int(t.output) / 1e9 >= not_before


def test_many_small_tasks(manager, start_worker):
    for _ in range(2):
        start_worker(manager, cores=1)
    n = 200
    for i in range(n):
        manager.submit(vine.Task(f"echo {i}", cores=1))
    done = drain(manager, 60)
    assert sorted(int(t.output) for t in done) == list(range(n))
    assert all(t.successful() for t in done)
    assert manager.stats.tasks_done == n


def test_shutdown_true_stops_workers(tmp_path, start_worker):
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "info"), shutdown=True)
    try:
        w = start_worker(m, cores=1)
        wait_for_workers(m, 1)
    finally:
        m.close()
    assert w.proc.wait(15) == 0


def test_context_manager_closes(tmp_path):
    with vine.Manager(port=0, run_info_path=str(tmp_path / "info")) as m:
        port = m.port
        staging = m.staging_directory
        assert os.path.isdir(staging)
    assert not os.path.exists(staging)
    with pytest.raises(ManagerError):
        m.submit(vine.Task("true"))
    # The port is free again.
    with vine.Manager(port=port, run_info_path=str(tmp_path / "info")) as again:
        assert again.port == port


def test_wait_for_an_absent_tag_does_not_hang(m):
    """With nothing in flight that could match, wait_for_tag returns None even when waiting forever."""
    tid = m.submit(vine.Task("true", tag="present"))
    wait_until(lambda: m.stats.tasks_with_results >= 1, 30, "the task to finish")
    assert m.wait_for_tag("absent") is None  # forever, but the only result has another tag
    assert m.wait_for_task_id(tid + 1000) is None
    assert m.wait_for_tag("present", 5).id == tid


def test_waiter_in_another_thread_wakes_when_nothing_is_left(m):
    """A thread waiting for a tag is released when another thread collects the last task."""
    tid = m.submit(vine.Task("true", tag="mine"))
    result: list[object] = []
    waiter = threading.Thread(target=lambda: result.append(m.wait_for_tag("someone-else")), daemon=True)
    waiter.start()
    assert m.wait_for_task_id(tid, 30).id == tid
    waiter.join(10)
    assert not waiter.is_alive() and result == [None]


def test_background_processes_end_with_their_task(m):
    """A task's leftovers (`sleep &`) are killed when the task ends: they would use its allocation."""
    t = vine.Task("sleep 60 & echo $!")
    m.submit(t)
    done = m.wait(30)
    assert done is not None and done.result == "success"
    pid = int(done.output.strip())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as fh:  # reaped by init later: a zombie counts as ended
            return fh.read().split(") ")[1].startswith("Z")

    wait_until(gone, 10, f"background process {pid} to end")


def test_every_scheduler_tuning_name_is_accepted_by_tune(tmp_path):
    from core.state.scheduler import DEFAULT_TUNING

    with vine.Manager(port=0, run_info_path=str(tmp_path / "ri")) as mgr:
        for name, value in DEFAULT_TUNING.items():
            assert mgr.tune(name, value) == 0, name


def test_submit_and_wait_from_different_threads(m):
    """Parsl's pattern: one thread submits, another waits; nothing is lost and empty() ends true."""
    n = 300
    got: list[int] = []

    def collect() -> None:
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            t = m.wait(1)  # None while nothing is outstanding yet: keep collecting, as Parsl's thread does
            if t is not None:
                got.append(t.id)

    collector = threading.Thread(target=collect)
    collector.start()
    ids = [m.submit(vine.Task("true")) for _ in range(n)]
    collector.join(60)
    assert sorted(got) == sorted(ids)
    assert m.empty()


@pytest.mark.parametrize("change", [
    lambda t: t.set_cores(2), lambda t: t.set_memory(100), lambda t: t.set_disk(10), lambda t: t.set_gpus(1),
    lambda t: t.set_category("other"), lambda t: t.set_priority(5), lambda t: t.set_retries(2),
    lambda t: t.set_max_forsaken(1), lambda t: t.set_time_max(10), lambda t: t.set_env_var("A", "1"),
    lambda t: t.add_feature("gpu"), lambda t: t.set_tag("x"), lambda t: t.set_scheduler("files"),
])
def test_a_submitted_task_can_no_longer_change(manager, change):
    """The I/O thread reads a task's definition after submit: a change then would be half-seen, so it is refused."""
    t = vine.Task("true")
    t.set_cores(1)
    manager.submit(t)
    with pytest.raises(TaskError, match="already submitted"):
        change(t)
    assert t.requested["cores"] == 1
    manager.cancel_by_task_id(t.id)
