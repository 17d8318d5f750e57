"""Resource monitoring: measured peaks, and the watchdog killing tasks that exceed their allocation."""

from __future__ import annotations

import sys

import pytest

import core as vine
from tests.conftest import drain, wait_for_workers

# Touches every page, so the resident set really grows; then lingers so the monitor samples it.
HOG = f"{sys.executable} -c \"import time; b = b'x' * ({{mb}} << 20); time.sleep(4)\""


def test_measured_resources_are_reported(manager, start_worker):
    manager.enable_monitoring(watchdog=False)
    start_worker(manager, cores=1, memory=2000)
    t = vine.Task(HOG.format(mb=150))
    t.set_cores(1)
    manager.submit(t)
    (done,) = drain(manager, 60)
    assert done.result == "success", done.std_output
    assert done.resources_measured.memory >= 150
    assert done.limits_exceeded is None


@pytest.mark.timeout(90)
def test_explicit_memory_exceeded_is_not_retried(manager, start_worker):
    manager.enable_monitoring()
    start_worker(manager, cores=1, memory=2000)
    t = vine.Task(HOG.format(mb=300))
    t.set_memory(100)
    manager.submit(t)
    (done,) = drain(manager, 60)
    assert done.result == "resource exhaustion"
    assert done.limits_exceeded.memory > 100
    assert manager.stats.tasks_exhausted_attempts == 0


@pytest.mark.timeout(90)
def test_proportional_share_exceeded_is_retried_on_a_whole_worker(manager, start_worker):
    manager.enable_monitoring()
    start_worker(manager, cores=2, memory=1000)
    wait_for_workers(manager, 1)
    t = vine.Task(HOG.format(mb=700))
    t.set_cores(1)  # proportional share: 1 of 2 cores -> 500 MB
    manager.submit(t)
    (done,) = drain(manager, 60)
    assert done.result == "success", (done.result, done.limits_exceeded)
    assert done.resources_allocated.memory == 1000
    assert manager.stats.tasks_exhausted_attempts == 1


def _hold_memory(mb: int, seconds: float) -> int:
    import time

    block = b"x" * (mb << 20)
    time.sleep(seconds)
    return len(block) >> 20


def test_forked_python_tasks_are_measured(manager, start_worker):
    """PythonTasks run in a fork of the worker's fork server; they are measured like any task."""
    manager.enable_monitoring(watchdog=False)
    start_worker(manager, cores=1, memory=2000)
    t = vine.PythonTask(_hold_memory, 150, 2.5)
    t.set_cores(1)
    manager.submit(t)
    (done,) = drain(manager, 60)
    assert done.output == 150
    assert done.resources_measured.memory >= 150


@pytest.mark.timeout(90)
def test_watchdog_kills_a_forked_python_task_over_its_memory(manager, start_worker):
    manager.enable_monitoring()
    start_worker(manager, cores=1, memory=2000)
    t = vine.PythonTask(_hold_memory, 300, 4)
    t.set_memory(100)
    manager.submit(t)
    (done,) = drain(manager, 60)
    assert done.result == "resource exhaustion"
    assert done.limits_exceeded.memory > 100


# Loads 150 MB, then forks four children that share it (and write none of it) and waits for them.
FORKS_OVER_DATA = (f"{sys.executable} -c \"import os, time; b = b'x' * (150 << 20); "
                   "kids = [os.fork() or (time.sleep(3), os._exit(0)) for _ in range(4)]; "
                   "[os.waitpid(k, 0) for k in kids]\"")


@pytest.mark.timeout(90)
def test_forked_processes_sharing_memory_count_it_once(manager, start_worker):
    """A tree of processes is measured by its proportional set sizes: the 150 MB that a parent and
    its four forks share counts once, not five times (a sum of resident sets said ~750 MB)."""
    manager.enable_monitoring(watchdog=False)
    start_worker(manager, cores=1, memory=2000)
    t = vine.Task(FORKS_OVER_DATA)
    t.set_cores(1)
    manager.submit(t)
    (done,) = drain(manager, 60)
    assert done.result == "success", done.std_output
    assert 150 <= done.resources_measured.memory < 400, done.resources_measured.memory
