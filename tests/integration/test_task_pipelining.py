"""Task pipelining on real workers: a chain's next link is sent ahead, queued, to the worker making
its input, and that worker starts it the moment the input is in its cache, without hearing from the
manager (core/state/pipelining.py, core/worker/pipelined.py).

Every chain here is submitted before its worker connects, so the scheduler's decisions do not
depend on timing: the first link starts, and each completion sends the next-but-one link ahead (one
per core), so a chain of n links has n - 1 of them queued (``tasks_prefetched``) and, if no link
ever started before its input existed, exactly n dispatches (a link started too early would report
its input missing and be sent again). One timing is left: when a worker's ends of links i and i+1
arrive in one socket read, the manager applies them in one step (core/manager/links.py
_defer_finish), link i+2's input then exists, and it is sent to start rather than queued: fewer
prefetches, never more dispatches.
"""

from __future__ import annotations

import os
import signal

import pytest

import core as vine
from tests.conftest import drain, wait_for_workers

NEXT = "read x < prev; echo $((x+1)) > out"


def _chain(m, n: int, command: str = NEXT, first: str = "echo 0 > out", fail_at: int | None = None, marks: str | None = None):
    """Submit ``n`` temp-linked links; link ``fail_at`` exits 1 without its output; each link touches
    ``marks``/ran.<i> first (a file outside its sandbox) when ``marks`` is given. Returns (tasks, last temp)."""
    tasks, prev = [], None
    for i in range(n):
        cmd = first if prev is None else command
        if i == fail_at:
            cmd = "exit 1"
        if marks is not None:
            cmd = f"touch {marks}/ran.{i}; {cmd}"
        t = vine.Task(cmd)
        if prev is not None:
            t.add_input(prev, "prev")
        prev = m.declare_temp()
        t.add_output(prev, "out")
        t.set_cores(1)
        m.submit(t)
        tasks.append(t)
    return tasks, prev


@pytest.mark.timeout(90)
def test_a_chain_runs_with_each_link_sent_ahead(manager, start_worker):
    tasks, last = _chain(manager, 30)
    start_worker(manager, cores=1)
    done = drain(manager, 60)
    assert len(done) == 30 and all(t.successful() for t in done), [(t.id, t.result, t.std_output) for t in done if not t.successful()]
    assert manager.fetch_file(last).strip() == "29"
    # 29 when every end came in a read of its own; one less for each pair of ends read together
    # (seen once in CI: 28). A chain sent without pipelining has 0.
    assert 20 <= manager.stats.tasks_prefetched <= 29
    assert manager.stats.tasks_dispatched == 30, "a link started before its input existed and was sent again"


@pytest.mark.timeout(90)
def test_a_queued_link_waits_for_its_maker_on_a_worker_with_a_free_core(manager, start_worker):
    """On a 2-core worker the queued link fits at once: only the worker's rule (a started task is
    making its input) holds it back until the previous link's output is in the cache."""
    _tasks, last = _chain(manager, 8, command="sleep 0.1; " + NEXT, first="sleep 0.1; echo 0 > out")
    start_worker(manager, cores=2)
    done = drain(manager, 60)
    assert len(done) == 8 and all(t.successful() for t in done), [(t.id, t.result) for t in done]
    assert manager.fetch_file(last).strip() == "7"
    assert 5 <= manager.stats.tasks_prefetched <= 7  # 7 unless two ends were read together (module doc)
    assert manager.stats.tasks_dispatched == 8, "a link started before its input existed and was sent again"


@pytest.mark.timeout(90)
def test_task_pipelining_can_be_turned_off(manager, start_worker):
    manager.tune("task-pipelining", 0)
    _tasks, last = _chain(manager, 10)
    start_worker(manager, cores=1)
    done = drain(manager, 60)
    assert len(done) == 10 and all(t.successful() for t in done)
    assert manager.fetch_file(last).strip() == "9"
    assert manager.stats.tasks_prefetched == 0


@pytest.mark.timeout(90)
def test_a_failed_link_ends_the_rest_of_the_chain_without_running_it(manager, start_worker, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    tasks, _last = _chain(manager, 6, fail_at=2, marks=str(marks))
    start_worker(manager, cores=1)
    done = {t.id: t for t in drain(manager, 60)}
    assert len(done) == 6
    results = [done[t.id].result for t in tasks]
    assert results[:2] == ["success", "success"]
    assert results[2] == "output missing"
    assert results[3:] == ["input missing"] * 3, results
    # Link 3 was sent ahead (queued behind link 2) but never started; none after it ran either.
    assert manager.stats.tasks_prefetched >= 1
    assert sorted(os.listdir(marks)) == ["ran.0", "ran.1", "ran.2"]
    # The worker serves the next task as before.
    t = vine.Task("echo fine")
    manager.submit(t)
    (after,) = drain(manager, 30)
    assert after.successful() and after.output.strip() == "fine"


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_chain_loses_no_link(manager, start_worker):
    n = 40
    tasks, last = _chain(manager, n, command="sleep 0.05; " + NEXT)
    first = start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    done = []
    while len(done) < 12:
        t = manager.wait(30)
        assert t is not None, "the chain did not progress"
        done.append(t)
    first.kill(signal.SIGKILL)  # a link runs, the next is queued there: both come back
    start_worker(manager, cores=1)
    done += drain(manager, 90)
    assert sorted(t.id for t in done) == sorted(t.id for t in tasks)
    assert all(t.successful() for t in done), [(t.id, t.result) for t in done if not t.successful()]
    assert manager.fetch_file(last).strip() == str(n - 1)
    assert manager.stats.workers_lost == 1


def _py_first() -> int:
    with open("out", "w") as fh:
        fh.write("0")
    return 0


def _py_next() -> int:
    with open("prev") as fh:
        x = int(fh.read())
    with open("out", "w") as fh:
        fh.write(str(x + 1))
    return x + 1


@pytest.mark.timeout(120)
def test_a_chain_of_python_tasks_is_sent_ahead_too(manager, start_worker):
    """A PythonTask gives its slot to the next queued task when its process ends, before its outputs
    are in the cache: the next link must still wait for them."""
    n = 8
    prev = None
    tasks = []
    for i in range(n):
        t = vine.PythonTask(_py_first if prev is None else _py_next)
        if prev is not None:
            t.add_input(prev, "prev")
        prev = manager.declare_temp()
        t.add_output(prev, "out")
        t.set_cores(1)
        manager.submit(t)
        tasks.append(t)
    start_worker(manager, cores=1)
    done = drain(manager, 90)
    assert len(done) == n and all(t.successful() for t in done), [(t.id, t.result, t.std_output) for t in done if not t.successful()]
    assert sorted(t.output for t in done) == list(range(n))
    assert manager.fetch_file(prev).strip() == str(n - 1)
    assert n - 3 <= manager.stats.tasks_prefetched <= n - 1  # n - 1 unless two ends were read together
    assert manager.stats.tasks_dispatched == n, "a link started before its input existed and was sent again"
