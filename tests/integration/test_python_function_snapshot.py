"""A function pickled by value is pickled once while unchanged, and a changed global reaches the
worker (core.api.python_task.pickled_function), on a real worker."""

from __future__ import annotations

import sys

import cloudpickle
import pytest

import core as vine
from core.api.python_task import FUNCTION_NAME
from tests.conftest import drain

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # as a script's own function is

OFFSET = 100


def shifted(x: int) -> int:
    return x + OFFSET


def _function_names(tasks: list[vine.PythonTask]) -> set[str]:
    return {mnt.file.cache_name for t in tasks for mnt in t.inputs if mnt.remote_name == FUNCTION_NAME}


@pytest.mark.timeout(120)
def test_an_unchanged_function_is_one_file_and_a_rebound_global_reaches_the_worker(manager, start_worker):
    global OFFSET
    start_worker(manager, cores=2)
    first = [vine.PythonTask(shifted, i) for i in range(4)]
    for t in first:
        manager.submit(t)
    drain(manager, 60)
    assert [t.output for t in first] == [100, 101, 102, 103]
    assert len(_function_names(first)) == 1
    OFFSET = 500
    try:
        second = [vine.PythonTask(shifted, i) for i in range(2)]
        for t in second:
            manager.submit(t)
        drain(manager, 60)
    finally:
        OFFSET = 100
    assert [t.output for t in second] == [500, 501]
    assert len(_function_names(second)) == 1 and _function_names(second) != _function_names(first)
