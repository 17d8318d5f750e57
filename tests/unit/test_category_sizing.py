"""Category sizing rules (core/state/categories.py), alone and inside the pure scheduler: no processes.

The integration counterpart, with real tasks using known amounts of memory, is
tests/integration/test_categories.py.
"""

from __future__ import annotations

import pytest

from core import constants as C
from core.api.task import Task
from core.state.categories import (
    CategoryBook,
    Histogram,
    mode_number,
    parse_resources,
    size_max_seen,
    size_max_throughput,
    size_min_waste,
)
from core.state.resources import AllocationPolicy, Resources
from core.state.scheduler import Dispatch, ReturnTask
from tests.unit.test_scheduler import MANUAL, Sim, box, of

# A worker that makes the arithmetic easy to follow: 4 cores, 2000 MB memory, 2000 MB disk.
SMALL = {"cores": 4, "memory": 2000, "disk": 2000}
WHOLE_SMALL = (4, 2000, 1500, 0)  # disk keeps its 25 % margin


# --- modes and arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize("given, number", [
    ("fixed", 0), ("max", 1), ("min waste", 2), ("max throughput", 3), ("max_throughput", 3), ("MIN_WASTE", 2),
    (C.VINE_ALLOCATION_MODE_MAX_THROUGHPUT, 3), ("vine_allocation_mode_max", 1), (0, 0),
])
def test_modes_are_taskvines_names_and_numbers(given: str | int, number: int) -> None:
    assert mode_number(given) == number


@pytest.mark.parametrize("given, message", [
    ("greedy bucketing", "not provided"), (C.VINE_ALLOCATION_MODE_QUANTIZED_BUCKETING, "not provided"),
    ("fastest", "unknown category mode"), (17, "unknown category mode"),
])
def test_unknown_and_bucketing_modes_are_refused(given: str | int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mode_number(given)
    with pytest.raises(TypeError, match="name or a VINE_ALLOCATION_MODE"):
        mode_number(1.5)  # type: ignore[arg-type]


def test_resource_dicts_are_checked() -> None:
    assert parse_resources("x", {"cores": 2, "memory": 1024, "gpus": -1}) == Resources(2, 1024, -1, -1)
    assert parse_resources("x", None) == Resources()
    with pytest.raises(ValueError, match="unknown resource.*cpus"):
        parse_resources("set_category_resources_max", {"cpus": 2})
    with pytest.raises(ValueError, match="memory must be >= 0"):
        parse_resources("x", {"memory": -5})
    with pytest.raises(TypeError, match="cores must be a number"):
        parse_resources("x", {"cores": "2"})
    with pytest.raises(TypeError, match="takes a dict"):
        parse_resources("x", [("cores", 1)])  # type: ignore[arg-type]


# --- the sizing formulas ------------------------------------------------------------------------------


def _hist(bucket: float, *samples: tuple[float, float]) -> Histogram:
    h = Histogram(bucket)
    for value, wall in samples:
        h.add(value, wall)
    return h


def test_buckets_are_keyed_by_their_upper_end() -> None:
    h = Histogram(250)
    assert [h.round_up(v) for v in (0, 1, 250, 251, 999)] == [0, 250, 250, 500, 1000]


def test_max_mode_adds_a_third_of_a_bucket_and_rounds_up() -> None:
    assert size_max_seen(_hist(250, (120, 1))) == 250
    assert size_max_seen(_hist(250, (120, 1), (200, 1))) == 500  # 200 + 83 falls in (250, 500]
    assert size_max_seen(_hist(250, (200, 1)), cap=300) == 300
    assert size_max_seen(_hist(1, (0.2, 1))) == 1  # a mostly idle task still gets a core
    assert size_max_seen(Histogram(250)) == -1  # nothing measured: unset


def test_min_waste_takes_the_small_bucket_when_few_tasks_need_more() -> None:
    # 9 tasks of 100 MB and one of 900 MB, 10 s each, retried at 1000 MB:
    # a=250: 250 x 10 s + 1000 x (10 s / 10 tasks) = 3500; a=1000: 1000 x 10 s = 10000.
    h = _hist(250, *([(100, 10)] * 9), (900, 10))
    assert size_min_waste(h, 1000) == 250


def test_min_waste_takes_the_large_bucket_when_the_large_tasks_run_long() -> None:
    # One 1 s task of 100 MB and one 100 s task of 900 MB: retrying the long one costs too much.
    # a=250: 250 x 50.5 + 1000 x 50 = 62625; a=1000: 1000 x 50.5 = 50500.
    h = _hist(250, (100, 1), (900, 100))
    assert size_min_waste(h, 1000) == 1000


def test_max_throughput_packs_small_tasks_when_most_are_small() -> None:
    # a=250: (9 x 1000/250 + 1) / (10 + 1) = 3.36 tasks per unit; a=1000: 10 / 10 = 1.
    h = _hist(250, *([(100, 10)] * 9), (900, 10))
    assert size_max_throughput(h, 1000) == 250


def test_max_throughput_takes_the_large_bucket_when_most_are_large() -> None:
    # One 100 MB task (1 s), nine 900 MB tasks (10 s): a=250 gives 13 / 18.1 = 0.72, a=1000 gives 10 / 9.1 = 1.1.
    h = _hist(250, (100, 1), *([(900, 10)] * 9))
    assert size_max_throughput(h, 1000) == 1000


def test_sized_values_never_exceed_the_category_maximum() -> None:
    book = CategoryBook()
    cat = book.ensure("c")
    cat.maximum = Resources(-1, 400, -1, -1)
    for _ in range(3):
        cat.record(Resources(0.5, 600, 10, -1), 5)
    for mode in (C.VINE_ALLOCATION_MODE_MAX, C.VINE_ALLOCATION_MODE_MIN_WASTE, C.VINE_ALLOCATION_MODE_MAX_THROUGHPUT):
        assert cat.sized(mode).memory == 400
        assert cat.sized(mode).cores == 1


# --- inside the scheduler -----------------------------------------------------------------------------


def _sim(mode: str = "max", steady: int = 2, **tuning: float) -> Sim:
    sim = Sim({"category-steady-n-tasks": steady, **tuning})
    if mode:
        sim.state.categories.set_mode("c", mode_number(mode))
    sim.join("w1", **SMALL)
    return sim


def _measured(memory: float, cores: float = 0.5, disk: float = 10) -> Resources:
    return Resources(cores, memory, disk, -1)


def _run_to_end(sim: Sim, task: Task, memory: float, runtime: float = 2.0) -> list[Dispatch]:
    """Submit ``task``, let it succeed having used ``memory`` MB; returns its dispatches."""
    out = sim.submit(task)
    dispatched = of(out, Dispatch)
    done = sim.finish("w1", task, measured=_measured(memory), runtime=runtime)
    assert of(done, ReturnTask) == [ReturnTask(task.id, C.VINE_RESULT_SUCCESS, 0)]
    return dispatched


def test_first_tasks_run_on_whole_workers_then_at_the_measured_size() -> None:
    sim = _sim("max", steady=2)
    for _ in range(2):
        (d,) = _run_to_end(sim, Task("learn", category="c"), memory=100)
        assert box(d.allocation) == WHOLE_SMALL
    t = Task("sized", category="c")
    (d,) = of(sim.submit(t), Dispatch)
    # Sized: 1 core (0.5 measured), 250 MB (100 + 83 rounded up), 250 MB disk; the proportional rule
    # then gives a quarter of the worker: 1 core, 500 MB, 375 MB disk.
    assert box(d.allocation) == (1, 500, 375, 0)
    assert sim.state.categories.categories["c"].samples == 2


def test_an_exhausted_task_is_retried_at_the_largest_box_and_then_fails() -> None:
    sim = _sim("max", steady=1)
    _run_to_end(sim, Task("learn", category="c"), memory=100)
    t = Task("grows", category="c")
    (first,) = of(sim.submit(t), Dispatch)
    assert box(first.allocation) == (1, 500, 375, 0)
    out = sim.finish("w1", t, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1, exceeded=("memory",), measured=_measured(510))
    (retry,) = of(out, Dispatch)
    assert box(retry.allocation) == WHOLE_SMALL
    assert not of(out, ReturnTask)
    assert sim.state.stats["tasks_exhausted_attempts"] == 1
    out = sim.finish("w1", t, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1, exceeded=("memory",), measured=_measured(2010))
    assert of(out, ReturnTask) == [ReturnTask(t.id, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1)]
    assert not of(out, Dispatch)


def test_a_task_over_the_category_maximum_fails_at_once() -> None:
    sim = _sim("max", steady=5)
    sim.state.categories.ensure("c").maximum = Resources(-1, 800, -1, -1)
    t = Task("hog", category="c")
    (d,) = of(sim.submit(t), Dispatch)
    assert box(d.allocation) == (4, 800, 1500, 0)  # learning: the whole worker, memory held to the maximum
    out = sim.finish("w1", t, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1, exceeded=("memory",))
    assert of(out, ReturnTask) == [ReturnTask(t.id, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1)]
    assert sim.state.stats["tasks_exhausted_attempts"] == 0


def test_a_whole_worker_task_is_not_retried_when_no_worker_is_larger() -> None:
    sim = _sim("max", steady=5)
    t = Task("hog", category="c")
    sim.submit(t)
    out = sim.finish("w1", t, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1, exceeded=("memory",))
    assert of(out, ReturnTask) == [ReturnTask(t.id, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1)]


def test_a_value_set_on_the_task_wins_and_is_final() -> None:
    sim = _sim("max", steady=1)
    _run_to_end(sim, Task("learn", category="c"), memory=100)
    t = Task("own", category="c", memory=1000)
    (d,) = of(sim.submit(t), Dispatch)
    assert box(d.allocation) == (2, 1000, 750, 0)  # 1000 of 2000 MB: half the worker
    out = sim.finish("w1", t, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1, exceeded=("memory",))
    assert of(out, ReturnTask) == [ReturnTask(t.id, C.VINE_RESULT_RESOURCE_EXHAUSTION, -1)]


def test_the_first_allocation_guess_replaces_whole_workers_while_learning() -> None:
    sim = _sim("max throughput", steady=3)
    sim.state.categories.ensure("c").guess = Resources(1, 200, -1, -1)
    (d,) = _run_to_end(sim, Task("guess", category="c"), memory=100)
    assert box(d.allocation) == (1, 500, 375, 0)


def test_the_category_minimum_is_a_floor_in_every_phase() -> None:
    sim = _sim("max", steady=1)
    sim.state.categories.ensure("c").minimum = Resources(-1, 600, -1, -1)
    (d,) = _run_to_end(sim, Task("learn", category="c"), memory=100)
    assert box(d.allocation) == WHOLE_SMALL
    (d,) = of(sim.submit(Task("sized", category="c")), Dispatch)
    # The minimum (600 of 2000 MB) outweighs the sized 250 MB: a third of the worker.
    assert box(d.allocation) == (1, 666, 499, 0)


def test_min_waste_sizes_from_the_histogram() -> None:
    sim = _sim("min waste", steady=4)
    for memory in (100, 120, 90, 110):
        _run_to_end(sim, Task("learn", category="c"), memory=memory)
    cat = sim.state.categories.categories["c"]
    assert cat.sized(C.VINE_ALLOCATION_MODE_MIN_WASTE) == Resources(1, 250, 250, -1)
    (d,) = of(sim.submit(Task("sized", category="c")), Dispatch)
    assert box(d.allocation) == (1, 500, 375, 0)


def test_fixed_mode_asks_for_the_category_maximum() -> None:
    sim = Sim()
    sim.join("w1", **MANUAL)
    sim.state.categories.ensure("c").maximum = Resources(1, 6000, -1, -1)
    (d,) = of(sim.submit(Task("a", category="c")), Dispatch)
    assert box(d.allocation) == (2, 6000, 13500, 0)  # the manual's 1 core + 6 GB example


def test_unconfigured_categories_keep_the_plain_path() -> None:
    sim = Sim({"category-steady-n-tasks": 1})
    sim.join("w1", **SMALL)
    for _ in range(2):
        t = Task("plain", category="never-configured")
        (d,) = of(sim.submit(t), Dispatch)
        assert box(d.allocation) == WHOLE_SMALL
        sim.finish("w1", t, measured=_measured(100), runtime=1)
    assert sim.state.categories.categories == {}


def test_the_default_mode_sizes_every_category_without_its_own() -> None:
    sim = Sim({"category-steady-n-tasks": 1})
    sim.join("w1", **SMALL)
    sim.state.categories.set_mode(None, C.VINE_ALLOCATION_MODE_MAX)
    sim.state.categories.set_mode("stays-fixed", C.VINE_ALLOCATION_MODE_FIXED)
    a = Task("a", category="any")
    sim.submit(a)
    sim.finish("w1", a, measured=_measured(100), runtime=1)
    a2 = Task("a2", category="any")
    (d,) = of(sim.submit(a2), Dispatch)
    assert box(d.allocation) == (1, 500, 375, 0)
    sim.finish("w1", a2, measured=_measured(100), runtime=1)
    b = Task("b", category="stays-fixed")
    sim.submit(b)
    sim.finish("w1", b, measured=_measured(100), runtime=1)
    assert box(of(sim.submit(Task("b2", category="stays-fixed")), Dispatch)[0].allocation) == WHOLE_SMALL


def test_a_gpu_task_learning_on_a_whole_worker_takes_no_cores() -> None:
    book = CategoryBook()
    book.set_mode("g", C.VINE_ALLOCATION_MODE_MAX)
    cat = book.ensure("g")
    got = book.allocation(cat, {"cores": -1, "memory": -1, "disk": -1, "gpus": 1}, False, Resources(4, 2000, 2000, 2),
                          AllocationPolicy(), steady_n=3)
    assert box(got) == (0, 2000, 1500, 1)
