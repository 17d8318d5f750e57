"""Categories that size themselves, with real workers and tasks that use known amounts of memory.

Each task is a Python process that allocates and touches N MB, then sleeps so the worker's monitor
samples it. The worker has 4 cores, 1000 MB of memory and 2000 MB of disk, so a whole worker is
(4, 1000, 1500, 0) (disk keeps its 25 % margin) and a quarter of it (1, 250, 375, 0).
"""

from __future__ import annotations

import sys

import pytest

import core as vine
from core.state.resources import Resources
from tests.conftest import run, wait_for_workers
from tests.integration.conftest import records

HOG = f"{sys.executable} -c \"import time; b = b'x' * ({{mb}} << 20); time.sleep({{sleep}})\""
WORKER = {"cores": 4, "memory": 1000, "disk": 2000}
WHOLE = Resources(4, 1000, 1500, 0)
QUARTER = Resources(1, 250, 375, 0)


def _hog(mb: int, category: str, sleep: float = 1.5) -> vine.Task:
    return vine.Task(HOG.format(mb=mb, sleep=sleep), category=category)


def _ready(manager, start_worker, steady: int) -> None:
    manager.enable_monitoring()
    manager.tune("category-steady-n-tasks", steady)
    start_worker(manager, **WORKER)
    wait_for_workers(manager, 1)


@pytest.mark.timeout(90)
def test_a_category_learns_on_whole_workers_then_runs_at_the_measured_size(manager, start_worker):
    _ready(manager, start_worker, steady=2)
    assert manager.set_category_mode("hog", "max") == 1
    for _ in range(2):
        t = run(manager, _hog(60, "hog"))
        assert t.result == "success", t.std_output
        assert t.resources_allocated == WHOLE
        assert t.resources_measured.memory >= 60
    info = manager.category_resources("hog")
    assert info["samples"] == 2 and not info["learning"]
    assert info["sized"]["memory"] == 250  # ~70 MB peak + 83, rounded up to the 250 MB bucket
    assert info["sized"]["cores"] == 1

    sized = run(manager, _hog(60, "hog"))
    assert sized.result == "success", sized.std_output
    assert sized.resources_allocated == QUARTER

    # This one needs 400 MB: killed at its 250 MB, it runs again on the whole worker and succeeds.
    grows = run(manager, _hog(400, "hog"), timeout=60)
    assert grows.result == "success", (grows.result, grows.limits_exceeded)
    assert grows.resources_allocated == WHOLE
    assert grows.resources_measured.memory >= 400
    assert manager.stats.tasks_exhausted_attempts == 1
    # Its peak is now the largest seen: later tasks of the category are sized for it.
    assert manager.category_resources("hog")["sized"]["memory"] == 500
    (status,) = [c for c in manager.status("categories") if c["category"] == "hog"]
    assert status["mode"] == "max" and status["samples"] == 4 and status["tasks_waiting"] == 0
    assert status["max_seen"]["memory"] >= 400


@pytest.mark.timeout(90)
def test_a_task_over_the_category_maximum_fails_with_resource_exhaustion(manager, start_worker):
    _ready(manager, start_worker, steady=1)
    manager.set_category_resources_max("capped", {"memory": 300})
    manager.set_category_mode("capped", "max")
    learn = run(manager, _hog(60, "capped"))
    assert learn.resources_allocated == Resources(4, 300, 1500, 0)  # learning: the whole worker, memory held to 300

    # Needs 500 MB: over its sized 250 MB, retried at the 300 MB maximum, over that too: it fails.
    hog = run(manager, _hog(500, "capped", sleep=3), timeout=60)
    assert hog.result == "resource exhaustion"
    assert hog.limits_exceeded.memory > 300
    assert hog.resources_allocated == Resources(4, 300, 1500, 0)
    assert manager.stats.tasks_exhausted_attempts == 1


@pytest.mark.timeout(90)
def test_a_first_allocation_guess_replaces_whole_workers(manager, start_worker):
    _ready(manager, start_worker, steady=3)
    manager.set_category_mode("guessed", "min waste")
    manager.set_category_first_allocation_guess("guessed", {"cores": 1, "memory": 200})
    t = run(manager, _hog(60, "guessed", sleep=1))
    assert t.result == "success", t.std_output
    assert t.resources_allocated == QUARTER  # 1 core of 4 outweighs 200 of 1000 MB
    assert manager.category_resources("guessed")["learning"]


def test_category_settings_are_checked(manager):
    with pytest.raises(ValueError, match="unknown category mode"):
        manager.set_category_mode("c", "fastest")
    with pytest.raises(ValueError, match="not provided"):
        manager.set_category_mode("c", "greedy bucketing")
    with pytest.raises(ValueError, match="unknown resource.*cpus"):
        manager.set_category_resources_max("c", {"cpus": 2})
    with pytest.raises(ValueError, match="category-steady-n-tasks"):
        manager.tune("category-steady-n-tasks", 0)
    assert manager._monitoring is None
    manager.set_category_mode(None, vine.VINE_ALLOCATION_MODE_MAX_THROUGHPUT)
    assert manager._monitoring is not None  # the automatic modes need measurements
    assert manager.category_resources("anything")["mode"] == "max throughput"
    manager.set_resources_max({"cores": 2})
    assert manager.category_resources("default")["max"] == {"cores": 2}
    manager.set_category_first_allocation_guess("default", {"memory": 100})
    # The transactions log has TaskVine's CATEGORY records.
    assert records(manager, "CATEGORY", "default", "MAX") == [["CATEGORY", "default", "MAX", '{"cores":[2.0,"cores"]}']]
    assert records(manager, "CATEGORY", "default", "FIRST") == [["CATEGORY", "default", "FIRST", "MAX_THROUGHPUT", '{"memory":[100.0,"MB"]}']]
