"""Unit tests for core.state.resources: allocation (REFERENCE §3.3), fit checks (§3.2) and hungry (§3.5)."""

from __future__ import annotations

import pytest

from core.state.resources import AllocationPolicy, Resources, allocate_resources, fits, hungry_count

R = Resources

# The manual's example worker: 4 cores, 12 GB memory, 36 GB disk.
MANUAL_WORKER = R(cores=4, memory=12000, disk=36000, gpus=0)
# The worker of TaskVine's own allocation tests: 4 cores, 2000 MB, 2000 MB disk, 8 gpus.
PINNED_WORKER = R(cores=4, memory=2000, disk=2000, gpus=8)

PROP_OFF = AllocationPolicy(proportional=False)


def triple(r: Resources) -> tuple[float, float, float]:
    return (r.cores, r.memory, r.disk)


def quad(r: Resources) -> tuple[float, float, float, float]:
    return (r.cores, r.memory, r.disk, r.gpus)


# --- Resources -------------------------------------------------------------------------------------


def test_defaults_are_unset() -> None:
    r = R()
    assert quad(r) == (-1, -1, -1, -1)
    assert not any(r.is_set(f) for f in ("cores", "memory", "disk", "gpus"))
    assert R(cores=0).is_set("cores")


def test_is_set_rejects_unknown_field() -> None:
    with pytest.raises(ValueError, match="unknown resource"):
        R().is_set("wall_time")


def test_dict_round_trip_and_missing_keys() -> None:
    r = R(cores=2, memory=1000, disk=-1, gpus=0)
    assert r.to_dict() == {"cores": 2.0, "memory": 1000.0, "disk": -1.0, "gpus": 0.0}
    assert R.from_dict(r.to_dict()) == r
    assert R.from_dict({"memory": 5}) == R(memory=5)
    assert R.from_dict(None) == R()
    assert R.from_dict({"cores": None, "workers": 1, "tag": "x"}) == R()


def test_from_dict_gives_floats() -> None:
    r = R.from_dict({"cores": 3, "memory": "100"})
    assert isinstance(r.cores, float) and r.memory == 100.0


def test_add_and_sub_treat_unset_as_zero() -> None:
    assert R(1, 100, -1, 0) + R(2, -1, 50, 1) == R(3, 100, 50, 1)
    assert R(3, 100, 50, 1) - R(1, 100, -1, 0) == R(2, 0, 50, 1)
    assert R.zero() + R() == R.zero()


def test_sub_never_goes_negative() -> None:
    # Fractional function-call bookkeeping must not leave a tally that reads as "unset".
    total = R.zero()
    for _ in range(10):
        total = total + R(0.1, 0, 0, 0)
    for _ in range(10):
        total = total - R(0.1, 0, 0, 0)
    assert total.cores >= 0
    assert R(1, 1, 1, 1) - R(2, 2, 2, 2) == R.zero()


def test_arithmetic_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        R() + 1  # type: ignore[operator]


def test_fits_in() -> None:
    assert R(1, 100, 10, -1).fits_in(R(1, 100, 10, 0))
    assert not R(1, 100, 11, -1).fits_in(R(1, 100, 10, 0))
    assert R().fits_in(R())
    assert not R(gpus=1).fits_in(R(4, 1000, 1000, -1))


# --- allocate_resources: the manual's examples ------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        pytest.param(R(cores=1), (1, 3000, 6750), id="1-core"),
        pytest.param(R(cores=1, memory=6000), (2, 6000, 13500), id="1-core-6GB"),
        pytest.param(R(cores=1, memory=6000, disk=27000), (4, 12000, 27000), id="1c-6GB-27GB-whole"),
        pytest.param(R(), (4, 12000, 27000), id="nothing-whole"),
    ],
)
def test_manual_examples(request_: Resources, expected: tuple[float, float, float]) -> None:
    alloc = allocate_resources(request_, MANUAL_WORKER)
    assert triple(alloc) == expected
    assert alloc.gpus == 0
    assert fits(alloc, MANUAL_WORKER, R.zero())


def test_whole_tasks_off_keeps_the_raw_proportion() -> None:
    policy = AllocationPolicy(whole_tasks=False)
    alloc = allocate_resources(R(cores=1, memory=6000, disk=27000), MANUAL_WORKER, policy=policy)
    assert triple(alloc) == (3, 9000, 27000)


# --- allocate_resources: REFERENCE's pinned table ------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "request_", "minimum", "expected"),
    [
        pytest.param(PROP_OFF, R(1, 2, 3, 4), None, (1, 2, 3, 4), id="off-c1m2d3g4"),
        pytest.param(PROP_OFF, R(1, 2, 3, -1), None, (1, 2, 3, 0), id="off-c1m2d3"),
        pytest.param(PROP_OFF, R(-1, 2, 3, 4), None, (0, 2, 3, 4), id="off-m2d3g4"),
        pytest.param(PROP_OFF, R(0, 0, 0, 0), None, (4, 2000, 1500, 0), id="off-all-0"),
        pytest.param(AllocationPolicy(), R(memory=1000), None, (2, 1000, 750, 0), id="on-m1000"),
        pytest.param(AllocationPolicy(), R(memory=1000), R(cores=3, gpus=2), (4, 2000, 1500, 2), id="on-m1000-min-c3g2"),
        pytest.param(AllocationPolicy(), R(cores=4), None, (4, 2000, 1500, 0), id="on-c4"),
        pytest.param(AllocationPolicy(), R(cores=1), None, (1, 500, 375, 0), id="on-c1"),
        pytest.param(AllocationPolicy(), R(), None, (4, 2000, 1500, 0), id="on-nothing"),
    ],
)
def test_pinned_table(
    policy: AllocationPolicy,
    request_: Resources,
    minimum: Resources | None,
    expected: tuple[float, float, float, float],
) -> None:
    alloc = allocate_resources(request_, PINNED_WORKER, minimum=minimum, policy=policy)
    assert quad(alloc) == expected
    assert fits(alloc, PINNED_WORKER, R.zero())


# --- allocate_resources: other rules ---------------------------------------------------------------


def test_function_call_gets_nothing() -> None:
    alloc = allocate_resources(R(cores=2, memory=100), MANUAL_WORKER, function_call=True)
    assert quad(alloc) == (0, 0, 0, 0)


def test_request_bigger_than_worker_does_not_fit() -> None:
    alloc = allocate_resources(R(cores=8), MANUAL_WORKER)
    assert alloc.cores == 8
    assert not fits(alloc, MANUAL_WORKER, R.zero())


def test_memory_bigger_than_worker_does_not_fit() -> None:
    alloc = allocate_resources(R(cores=1, memory=20000), MANUAL_WORKER)
    assert alloc.memory == 20000
    assert not fits(alloc, MANUAL_WORKER, R.zero())


def test_gpus_on_a_gpuless_worker_do_not_fit() -> None:
    alloc = allocate_resources(R(gpus=1), MANUAL_WORKER)
    assert (alloc.cores, alloc.gpus) == (0, 1)
    assert not fits(alloc, MANUAL_WORKER, R.zero())


def test_disk_beyond_available_disk_does_not_fit() -> None:
    alloc = allocate_resources(R(disk=30000), MANUAL_WORKER, available_disk=20000)
    assert alloc.disk == 30000
    assert not fits(alloc, MANUAL_WORKER, R(disk=16000))


def test_available_disk_scales_the_disk_share() -> None:
    # The cache and the task's inputs take disk away from what the task's share is computed on.
    alloc = allocate_resources(R(cores=1), MANUAL_WORKER, available_disk=16000)
    assert triple(alloc) == (1, 3000, 3000)  # 16000 / 4 * 0.75


def test_explicit_values_are_floors() -> None:
    # The manual's rule, not TaskVine's C shortcut that would hand this task 1 core.
    alloc = allocate_resources(R(cores=1, memory=6000), MANUAL_WORKER)
    assert alloc.cores == 2
    # p = 10000/36000 rounds to 1/3; the computed disk share (12000 * 0.75) is below the request,
    # so the request is kept exactly.
    alloc = allocate_resources(R(cores=1, disk=10000), MANUAL_WORKER)
    assert triple(alloc) == (1, 4000, 10000)


def test_whole_tasks_rounding_is_exact_for_thirds() -> None:
    worker = R(cores=12, memory=12000, disk=12000, gpus=0)
    alloc = allocate_resources(R(memory=4000), worker)
    assert triple(alloc) == (4, 4000, 3000)


def test_gpu_task_gets_no_cores_unless_asked() -> None:
    alloc = allocate_resources(R(gpus=2), PINNED_WORKER)
    assert quad(alloc) == (0, 500, 375, 2)
    alloc = allocate_resources(R(cores=1, gpus=2), PINNED_WORKER)
    assert quad(alloc) == (1, 500, 375, 2)


def test_minimum_alone_sets_the_proportion() -> None:
    alloc = allocate_resources(R(), PINNED_WORKER, minimum=R(cores=1))
    assert quad(alloc) == (1, 500, 375, 0)


def test_minimum_raises_each_field() -> None:
    alloc = allocate_resources(R(cores=1), MANUAL_WORKER, minimum=R(memory=5000))
    # q = 5000/12000 -> whole tasks round to 1/2 of the worker.
    assert triple(alloc) == (2, 6000, 13500)


def test_proportional_off_fills_unset_with_the_worker() -> None:
    alloc = allocate_resources(R(cores=1), MANUAL_WORKER, policy=PROP_OFF)
    assert triple(alloc) == (1, 12000, 27000)
    alloc = allocate_resources(R(cores=1), MANUAL_WORKER, policy=PROP_OFF, minimum=R(cores=2))
    assert alloc.cores == 2


def test_disk_proportion_is_tunable() -> None:
    policy = AllocationPolicy(disk_proportion=0.5)
    assert allocate_resources(R(), MANUAL_WORKER, policy=policy).disk == 18000
    assert allocate_resources(R(cores=1), MANUAL_WORKER, policy=policy).disk == 4500


def test_worker_that_has_not_reported() -> None:
    alloc = allocate_resources(R(cores=1), R())
    assert not fits(alloc, R(), R.zero())


# --- fits -----------------------------------------------------------------------------------------


def test_fits_respects_committed() -> None:
    total = R(4, 12000, 36000, 0)
    box = R(2, 6000, 13500, 0)
    assert fits(box, total, R.zero())
    assert fits(box, total, box)
    assert not fits(box, total, box + R(1, 0, 0, 0))


def test_multiplier_overcommits_cores_memory_gpus_but_not_disk() -> None:
    total = R(4, 1000, 1000, 2)
    box = R(4, 1000, 100, 2)
    assert not fits(box, total, box)
    assert fits(box, total, box, multiplier=2.0)
    assert not fits(box, total, box + box, multiplier=2.0)
    # Disk: committed + allocation must stay within the total whatever the multiplier.
    assert not fits(R(1, 1, 600, 0), total, R(0, 0, 500, 0), multiplier=10.0)
    assert fits(R(1, 1, 500, 0), total, R(0, 0, 500, 0))


def test_multiplier_never_lets_one_task_exceed_the_worker() -> None:
    total = R(4, 1000, 1000, 0)
    assert not fits(R(5, 1, 1, 0), total, R.zero(), multiplier=2.0)


def test_multiplier_total_is_rounded_up() -> None:
    total = R(3, 1000, 1000, 0)
    # ceil(3 * 1.5) = 5 cores may be committed.
    assert fits(R(2, 1, 1, 0), total, R(3, 0, 0, 0), multiplier=1.5)
    assert not fits(R(3, 1, 1, 0), total, R(3, 0, 0, 0), multiplier=1.5)


def test_fits_with_fractional_cores() -> None:
    total = R(1, 100, 100, 0)
    committed = R.zero()
    for _ in range(3):
        committed = committed + R(0.1, 0, 0, 0)
    assert fits(R(0.7, 0, 0, 0), total, committed)


# --- hungry_count ----------------------------------------------------------------------------------

WORKER12 = R(cores=12, memory=1200, disk=1200, gpus=0)


def hungry(**kw: object) -> int:
    args: dict[str, object] = {
        "workers": 0,
        "waiting": 0,
        "running": 0,
        "total": R.zero(),
        "committed": R.zero(),
        "waiting_requests": [],
    }
    args.update(kw)
    return hungry_count(**args)  # type: ignore[arg-type]


def test_hungry_no_workers_is_the_minimum() -> None:
    assert hungry(minimum=11) == 11
    assert hungry(minimum=2) == 2


def test_hungry_counts_waiting_tasks_against_the_minimum() -> None:
    assert hungry(minimum=2, waiting=1, waiting_requests=[R()]) == 1
    assert hungry(minimum=2, waiting=2, waiting_requests=[R(), R()]) == 0


def test_hungry_idle_worker() -> None:
    assert hungry(workers=1, total=WORKER12) == 24
    assert hungry(workers=1, total=WORKER12, minimum=30) == 30


def test_hungry_one_core_running() -> None:
    one_core = allocate_resources(R(cores=1), WORKER12)
    args = {"workers": 1, "running": 1, "total": WORKER12, "committed": one_core, "minimum": 5}
    assert hungry(**args) == 23
    assert hungry(**args, factor=3) == 35


def test_hungry_whole_worker_busy_one_waiting() -> None:
    whole = allocate_resources(R(), WORKER12)
    args = {"workers": 1, "running": 1, "total": WORKER12, "committed": whole}
    assert hungry(**args, minimum=2, waiting=1, waiting_requests=[R()]) == 1
    assert hungry(**args, minimum=5, waiting=1, waiting_requests=[R()]) == 4


def test_hungry_all_cores_busy_falls_back_to_the_minimum() -> None:
    committed = R(12, 1200, 900, 0)
    assert hungry(workers=1, running=2, total=WORKER12, committed=committed, minimum=5, factor=3) == 5


def test_hungry_memory_can_be_the_limit() -> None:
    box = allocate_resources(R(cores=1, memory=200), WORKER12)
    assert triple(box) == (2, 200, 150)
    assert hungry(workers=1, running=1, total=WORKER12, committed=box, minimum=5, factor=3) == 17


def test_hungry_uses_the_waiting_sample() -> None:
    committed = R(12, 2, 2, 0)
    got = hungry(
        workers=1, running=2, waiting=1, total=WORKER12, committed=committed,
        waiting_requests=[R(cores=2)], minimum=5, factor=10,
    )
    assert got == (10 * 12 - 12) // 2 - 1


def test_hungry_reads_at_most_100_sampled_requests() -> None:
    sample = [R(cores=1)] * 100 + [R(cores=1000)] * 50
    got = hungry(workers=1, waiting=150, total=WORKER12, waiting_requests=sample, minimum=0, factor=100)
    assert got == 1200 - 150


def test_hungry_is_never_negative() -> None:
    overcommitted = R(40, 0, 0, 0)
    args = {"workers": 1, "running": 4, "total": WORKER12, "committed": overcommitted, "factor": 1}
    assert hungry(**args, minimum=0) == 1  # workers x factor still asks for one
    assert hungry(**args, minimum=0, waiting=3, waiting_requests=[R()] * 3) == 0
