"""autolabel=True: every category is sized from what monitoring measured, as in Parsl's executor."""

from __future__ import annotations

import glob
import json
import os

import pytest

import core as vine
from parslvine import TaskVineManagerConfig
from parslvine.manager_process import configure_manager

from .conftest import make_executor


@pytest.mark.parametrize("algorithm, mode", [("max-xput", "max throughput"), ("max", "max")])
def test_configure_manager_sets_every_categorys_mode(algorithm, mode):
    m = vine.Manager(port=0)
    try:
        configure_manager(m, TaskVineManagerConfig(port=0, autolabel=True, autolabel_algorithm=algorithm, autolabel_window=3))
        described = m.category_resources("any-app")  # a category no task has used yet
        assert described["mode"] == mode
        assert m._state.tuning["category-steady-n-tasks"] == 3
        assert m._settings.monitoring  # the measurements the modes size from
    finally:
        m.close()


def test_without_autolabel_categories_stay_fixed():
    m = vine.Manager(port=0)
    try:
        configure_manager(m, TaskVineManagerConfig(port=0))
        assert m.category_resources("any-app")["mode"] == "fixed"
        assert not m._settings.monitoring
    finally:
        m.close()


def _allocations(log_dir: str) -> list[dict[str, float]]:
    """The FIRST_RESOURCES of each task's RUNNING record, in the order they were sent."""
    boxes = []
    for path in glob.glob(os.path.join(log_dir, "**", "transactions"), recursive=True):
        with open(path) as fh:
            for line in fh:
                if not line.startswith("#") and " RUNNING " in line and "FIRST_RESOURCES" in line:
                    box = json.loads(line.split("FIRST_RESOURCES", 1)[1])  # {"cores": [2.0, "cores"], ...}
                    boxes.append({key: value[0] for key, value in box.items()})
    return boxes


@pytest.mark.timeout(120)
def test_autolabel_apps_learn_then_run_sized(tmp_path):
    """Regular mode: the window's first calls run with the whole worker while their category learns;
    the calls after it get a box sized from the measured peaks (smaller than the worker), and every
    result is right."""
    import parsl
    from parsl import python_app
    from parsl.config import Config

    @python_app
    def square(x):
        return x * x

    log_dir = str(tmp_path / "vine-logs")
    ex = make_executor("regular", manager_config=TaskVineManagerConfig(port=0, autolabel=True, autolabel_window=2,
                                                                        vine_log_dir=log_dir))
    dfk = parsl.load(Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), initialize_logging=False))
    try:
        learning = [square(i).result(timeout=60) for i in range(2)]  # one at a time: each is measured
        sized = [f.result(timeout=60) for f in [square(i) for i in range(2, 8)]]
    finally:
        dfk.cleanup()
    assert learning + sized == [i * i for i in range(8)]
    boxes = _allocations(log_dir)
    assert len(boxes) >= 8, boxes
    whole = boxes[0]
    assert whole["cores"] == 2, boxes  # the factory's worker has 2 cores: learning takes it all
    assert any(b["cores"] < whole["cores"] or b["memory"] < whole["memory"] for b in boxes[2:]), boxes
