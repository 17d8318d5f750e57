"""PythonTask functions whose class promises a fixed pickle (``vine_pickle_once``) are pickled once.

Every other function is pickled at every submit (its pickle may change between submits); these
tests check both sides on a real worker, and that the shared bytes still run every task.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

import core as vine
from core.api.python_task import FUNCTION_NAME
from tests.conftest import drain

cloudpickle.register_pickle_by_value(sys.modules[__name__])

PICKLED: list[int] = []  # the manager's record of every pickling of an Adder


class Adder:
    """Adds ``k``; its pickle is ``k`` alone, so it may say so."""

    vine_pickle_once = True

    def __init__(self, k: int) -> None:
        self.k = k

    def __reduce__(self):
        PICKLED.append(self.k)
        return (type(self), (self.k,))

    def __call__(self, x: int) -> int:
        return x + self.k


class PlainAdder(Adder):
    """The same without the promise: pickled per task."""

    vine_pickle_once = False


class UnhashableAdder(Adder):
    """Promises, but cannot be remembered (no hash): pickled per task, and still runs."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Adder) and other.k == self.k

    __hash__ = None  # type: ignore[assignment]


def _run_three(m, func) -> list[vine.PythonTask]:
    tasks = [vine.PythonTask(func, i) for i in range(3)]
    for t in tasks:
        m.submit(t)
    done = drain(m, 60)
    assert sorted(t.output for t in done) == [func.k, func.k + 1, func.k + 2]
    return tasks


def _function_names(tasks: list[vine.PythonTask]) -> set[str]:
    return {mnt.file.cache_name for t in tasks for mnt in t.inputs if mnt.remote_name == FUNCTION_NAME}


@pytest.mark.timeout(120)
def test_a_callable_that_promises_a_fixed_pickle_is_pickled_once(manager, start_worker):
    start_worker(manager, cores=2)
    PICKLED.clear()
    adder = Adder(10)
    tasks = _run_three(manager, adder)
    assert PICKLED == [10]  # three tasks, one pickling
    assert len(_function_names(tasks)) == 1
    more = _run_three(manager, adder)  # later tasks reuse it too, and name the same bytes
    assert PICKLED == [10] and _function_names(more) == _function_names(tasks)
    # Another object of the class is pickled (once) for its own tasks.
    _run_three(manager, Adder(20))
    assert PICKLED == [10, 20]


@pytest.mark.timeout(120)
def test_other_callables_are_pickled_at_every_submit(manager, start_worker):
    start_worker(manager, cores=2)
    PICKLED.clear()
    tasks = _run_three(manager, PlainAdder(5))
    assert PICKLED == [5, 5, 5]
    # Why that is the default: this class is pickled by value, with the global list its __reduce__
    # appends to, so each task's pickle differs (and so does the content-named file).
    assert len(_function_names(tasks)) == 3
    PICKLED.clear()
    _run_three(manager, UnhashableAdder(7))
    assert PICKLED == [7, 7, 7]
