"""Prefetch: short tasks queued on workers beyond their free cores, started there in order."""

from __future__ import annotations

import signal

import core as vine
from tests.conftest import drain, wait_for_workers, wait_until


def _submit(m, n, command="true"):
    tasks = []
    for _ in range(n):
        t = vine.Task(command)
        t.set_cores(1)
        m.submit(t)
        tasks.append(t)
    return tasks


def test_short_tasks_are_prefetched_and_all_complete(manager, start_worker):
    start_worker(manager, cores=1)
    tasks = _submit(manager, 150, "echo $CORES")
    done = drain(manager, 60)
    assert sorted(t.id for t in done) == sorted(t.id for t in tasks)
    assert all(t.result == "success" and t.output.strip() == "1" for t in done)
    assert manager.stats.tasks_prefetched > 0


def test_prefetched_tasks_survive_a_killed_worker(manager, start_worker):
    first = start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    drain_warm = _submit(manager, 6)  # measure the category short
    drain(manager, 30)
    assert len(drain_warm) == 6
    tasks = _submit(manager, 20, "sleep 0.2")
    wait_until(lambda: manager.stats.tasks_prefetched > 0, 30, "a prefetched task")
    first.kill(signal.SIGKILL)
    start_worker(manager, cores=1)
    done = drain(manager, 60)
    assert sorted(t.id for t in done) == sorted(t.id for t in tasks)
    assert all(t.result == "success" for t in done)


def test_cancelling_prefetched_tasks(manager, start_worker):
    start_worker(manager, cores=1)
    _submit(manager, 6)
    drain(manager, 30)
    tasks = _submit(manager, 10, "sleep 0.3")
    wait_until(lambda: manager.stats.tasks_prefetched > 0, 30, "a prefetched task")
    cancelled = manager.cancel_all()
    assert cancelled >= 1
    done = drain(manager, 60)
    assert len(done) == len(tasks)
    assert {t.result for t in done} <= {"success", "cancelled"}
    assert any(t.result == "cancelled" for t in done)
    # the worker still serves new work afterwards
    (after,) = _submit(manager, 1, "echo ok")
    (t,) = drain(manager, 30)
    assert t.id == after.id and t.output.strip() == "ok"
