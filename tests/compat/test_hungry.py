"""Where we follow TaskVine's manual rather than its C code, and the tune settings that give the C code's
allocations back (issue 14, point 7): ``proportional-whole-tasks 0`` and ``exact-task-resources 1``.

The last test walks through TaskVine's ``vine_python_hungry.py`` (12-core worker, ``hungry()`` after
each step) with those settings; under the defaults its 11-core task would take the whole worker and
wait behind the 1-core one, and its 1-core + 1 MB tasks would get a proportional 100 MB each.
"""

from __future__ import annotations

import time

import pytest

import core as vine
from core.state.resources import AllocationPolicy, Resources, allocate_resources

C_CODE = AllocationPolicy(whole_tasks=False, exact_task_values=True)  # the two tunes below
TWELVE = Resources(12, 1200, 1200, 0)
MANUAL_WORKER = Resources(4, 12000, 36000, 0)


@pytest.mark.parametrize(("request_box", "manual", "c_code"), [
    # the README's/manual's examples on a 4-core, 12 GB, 36 GB worker (disk after the 0.75 margin)
    (Resources(1), (1, 3000, 6750, 0), (1, 3000, 6750, 0)),
    (Resources(1, 6000), (2, 6000, 13500, 0), (1, 6000, 13500, 0)),
    (Resources(1, 6000, 27000), (4, 12000, 27000, 0), (1, 6000, 27000, 0)),
])
def test_manual_and_c_code_allocations(request_box, manual, c_code):
    assert allocate_resources(request_box, MANUAL_WORKER).to_dict() == dict(zip(("cores", "memory", "disk", "gpus"), map(float, manual)))
    assert allocate_resources(request_box, MANUAL_WORKER, policy=C_CODE).to_dict() == dict(zip(("cores", "memory", "disk", "gpus"), map(float, c_code)))


def test_the_hungry_programs_tasks_on_a_twelve_core_worker():
    eleven = Resources(11)
    assert allocate_resources(eleven, TWELVE).cores == 12  # 11/12 rounds to one task per worker
    assert allocate_resources(eleven, TWELVE, policy=C_CODE).cores == 11
    tiny = Resources(1, 1, 1)
    assert (allocate_resources(tiny, TWELVE).memory, allocate_resources(tiny, TWELVE, policy=C_CODE).memory) == (100, 1)
    memory_bound = Resources(1, 200)
    assert (allocate_resources(memory_bound, TWELVE).cores, allocate_resources(memory_bound, TWELVE, policy=C_CODE).cores) == (2, 1)
    # exact values alone keep whole-task rounding for a task that set only cores, as the C code does
    exact_only = AllocationPolicy(exact_task_values=True)
    assert allocate_resources(Resources(5), TWELVE, policy=exact_only).memory == 600  # 5/12 -> 1/2 of the worker
    assert allocate_resources(Resources(5, 10), TWELVE, policy=exact_only).memory == 10


def _wait_running(m, condition, what, timeout=30.0):
    """Collect finished (cancelled) tasks until ``condition(tasks_running)`` holds."""
    deadline = time.monotonic() + timeout
    while not condition(m.stats.tasks_running):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        m.wait(0.2)


@pytest.mark.timeout(90)
def test_vine_hungry_logic_with_the_c_code_settings(manager, start_worker):
    m = manager
    m.tune("proportional-whole-tasks", 0)
    m.tune("exact-task-resources", 1)
    m.tune("hungry-minimum", 11)
    assert m.hungry() == 11
    m.tune("hungry-minimum", 2)
    assert m.hungry() == 2
    ids = [m.submit(vine.Task("sleep 120"))]
    assert m.hungry() == 1
    ids.append(m.submit(vine.Task("sleep 120")))
    assert m.hungry() == 0

    cores, memory, disk = 12, 1200, 1200
    start_worker(m, cores=cores, memory=memory, disk=disk)
    _wait_running(m, lambda n: n >= 1, "the first task to start")
    assert m.hungry() == 1  # minimum 2, one task waiting
    m.tune("hungry-minimum", 5)
    assert m.hungry() == 4
    for i in ids:
        m.cancel_by_task_id(i)
    _wait_running(m, lambda n: n == 0, "the cancelled tasks to end")
    while m.wait(0) is not None:
        pass
    assert m.hungry() == 2 * cores  # idle: twice the worker's cores

    def submit(c, mem=None, dsk=None):
        t = vine.Task("sleep 120")
        t.set_cores(c)
        if mem is not None:
            t.set_memory(mem)
        if dsk is not None:
            t.set_disk(dsk)
        return m.submit(t)

    i3 = submit(1)
    _wait_running(m, lambda n: n >= 1, "the 1-core task")
    assert m.hungry() == 2 * cores - 1
    factor = 3
    m.tune("hungry-minimum-factor", factor)
    assert m.hungry() == factor * cores - 1

    i4 = submit(cores - 1)  # the manual's rule would give it the whole worker: it would never start here
    _wait_running(m, lambda n: n >= 2, "the 11-core task next to the 1-core one")
    assert m.hungry() == 5  # every core in use: the minimum
    m.cancel_by_task_id(i3)
    m.cancel_by_task_id(i4)
    _wait_running(m, lambda n: n == 0, "the cancelled tasks to end")

    mem_task = 2 * memory // cores
    i5 = submit(1, mem_task)
    _wait_running(m, lambda n: n >= 1, "the memory-bound task")
    assert m.hungry() == (factor * memory - mem_task) // mem_task  # memory is the limit
    m.cancel_by_task_id(i5)
    _wait_running(m, lambda n: n == 0, "the memory-bound task to end")

    i6 = submit(1, 1, 1)
    i7 = submit(11, 1, 1)
    _wait_running(m, lambda n: n >= 2, "the 1-core and 11-core tasks of 1 MB each")
    i8 = submit(2)
    factor = 10
    m.tune("hungry-minimum-factor", factor)
    # the waiting 2-core task's cores are the limit, less that task itself
    assert m.hungry() == (factor * cores - 1 - 11) // 2 - 1
    for i in (i6, i7, i8):
        m.cancel_by_task_id(i)
    _wait_running(m, lambda n: n == 0, "the last tasks to end")
    while not m.empty():
        assert m.wait(10) is not None
