"""Resource boxes and the arithmetic the manager does with them.

Everything here is pure: no I/O, no clocks. It answers three questions:

* How big a box does a task get on a given worker?  (:func:`allocate_resources`, REFERENCE §3.3)
* Does that box fit next to what the worker already runs?  (:func:`fits`, §3.2)
* How many more tasks should the application submit?  (:func:`hungry_count`, §3.5)

Units: cores and gpus are counts, memory and disk are MB. A negative value (``-1``) means "unset".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

__all__ = ["DEFAULT_POLICY", "AllocationPolicy", "Resources", "allocate_resources", "fits", "hungry_count"]

FIELDS: tuple[str, ...] = ("cores", "memory", "disk", "gpus")

# Proportions such as 1/3 are not exact in binary; without this slack floor(12000 * (1/3)) is 3999.
_EPS = 1e-9


def _floor(x: float) -> float:
    return float(math.floor(x + _EPS))


def _ceil(x: float) -> int:
    return math.ceil(x - _EPS)


def _asked(value: float) -> bool:
    """True when a request value actually asks for something; zero asks for nothing, like unset."""
    return value > 0


def _nonneg(value: float) -> float:
    return value if value > 0 else 0.0


def _vals(box: Resources) -> tuple[float, float, float, float]:
    # Not dataclasses.astuple: that deep-copies, and the scheduler calls this per task per worker.
    return (box.cores, box.memory, box.disk, box.gpus)


@dataclass(frozen=True, slots=True)
class Resources:
    """A box of resources: ``cores``, ``memory`` (MB), ``disk`` (MB) and ``gpus``.

    Any field may be ``-1``, meaning unset: a task that did not ask for memory, or a worker that has
    not reported yet. Cores are fractional only in the bookkeeping of libraries and function calls.
    Adding or subtracting boxes treats unset fields as zero and never goes below zero, which is what
    the per-worker tally of committed resources needs.
    """

    cores: float = -1
    memory: float = -1
    disk: float = -1
    gpus: float = -1

    @classmethod
    def zero(cls) -> Resources:
        """A box with every field set to 0, the starting point of a committed-resources tally."""
        return cls(0, 0, 0, 0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Resources:
        """Build a box from a mapping such as ``{"cores": 2, "memory": 1000}``.

        Missing keys and ``None`` values become unset (-1); keys other than the four fields are
        ignored, so a worker's full resource report can be passed as it is.
        """
        if not d:
            return cls()
        values = {name: float(d[name]) for name in FIELDS if d.get(name) is not None}
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        """The four fields as ``{"cores": .., "memory": .., "disk": .., "gpus": ..}``."""
        return {name: float(getattr(self, name)) for name in FIELDS}

    def is_set(self, field: str) -> bool:
        """True when ``field`` (one of cores, memory, disk, gpus) holds a value, zero included."""
        if field not in FIELDS:
            raise ValueError(f"unknown resource {field!r}; use one of {', '.join(FIELDS)}")
        return bool(getattr(self, field) >= 0)

    # The arithmetic below is written out field by field: the scheduler runs it several times per
    # task (placement, the committed tally, prefetching), and a zip of generators with a call per
    # field was most of its cost. Every field reads "unset or negative counts as 0" as before.
    def fits_in(self, free: Resources) -> bool:
        """True when every field of this box is at most that field of ``free`` (unset counts as 0)."""
        a, b = self.cores, free.cores
        if (a if a > 0 else 0.0) > (b if b > 0 else 0.0) + _EPS:
            return False
        a, b = self.memory, free.memory
        if (a if a > 0 else 0.0) > (b if b > 0 else 0.0) + _EPS:
            return False
        a, b = self.disk, free.disk
        if (a if a > 0 else 0.0) > (b if b > 0 else 0.0) + _EPS:
            return False
        a, b = self.gpus, free.gpus
        return not (a if a > 0 else 0.0) > (b if b > 0 else 0.0) + _EPS

    def __add__(self, other: Resources) -> Resources:
        if not isinstance(other, Resources):
            return NotImplemented
        a, b, c, d = self.cores, self.memory, self.disk, self.gpus
        e, f, g, h = other.cores, other.memory, other.disk, other.gpus
        return _box((a if a > 0 else 0.0) + (e if e > 0 else 0.0), (b if b > 0 else 0.0) + (f if f > 0 else 0.0),
                    (c if c > 0 else 0.0) + (g if g > 0 else 0.0), (d if d > 0 else 0.0) + (h if h > 0 else 0.0))

    def __sub__(self, other: Resources) -> Resources:
        if not isinstance(other, Resources):
            return NotImplemented
        # Clamped at zero: float noise from fractional function-call cores must not leave a tally at
        # -1e-17, which would read as "unset".
        a, b, c, d = self.cores, self.memory, self.disk, self.gpus
        e, f, g, h = other.cores, other.memory, other.disk, other.gpus
        return _box(max(0.0, (a if a > 0 else 0.0) - (e if e > 0 else 0.0)), max(0.0, (b if b > 0 else 0.0) - (f if f > 0 else 0.0)),
                    max(0.0, (c if c > 0 else 0.0) - (g if g > 0 else 0.0)), max(0.0, (d if d > 0 else 0.0) - (h if h > 0 else 0.0)))


_NEW = object.__new__
_SET_CORES = Resources.__dict__["cores"].__set__
_SET_MEMORY = Resources.__dict__["memory"].__set__
_SET_DISK = Resources.__dict__["disk"].__set__
_SET_GPUS = Resources.__dict__["gpus"].__set__


def _box(cores: float, memory: float, disk: float, gpus: float) -> Resources:
    """``Resources(cores, memory, disk, gpus)`` through the slots' own setters (the frozen
    dataclass's ``__init__`` goes through ``object.__setattr__`` once per field)."""
    box: Resources = _NEW(Resources)
    _SET_CORES(box, cores)
    _SET_MEMORY(box, memory)
    _SET_DISK(box, disk)
    _SET_GPUS(box, gpus)
    return box


@dataclass
class AllocationPolicy:
    """The manager's tunables that shape :func:`allocate_resources`.

    ``proportional`` is tune ``proportional-resources``; ``whole_tasks`` is tune
    ``proportional-whole-tasks`` (on by default here, as the TaskVine manual documents);
    ``disk_proportion`` is tune ``disk-proportion-available-to-task``, the share of the computed disk
    a task may use, leaving a safety margin on the worker.

    ``exact_task_values`` is tune ``exact-task-resources`` (off by default): TaskVine's C code rather
    than its manual. A value the task asked for is then allocated exactly as asked, the proportional
    share only filling the values it left unset (1 core + 6 GB on a 4-core, 12 GB worker gets 1 core,
    not 2), and a task that asked for memory or disk is not rounded to a whole number per worker.
    """

    proportional: bool = True
    whole_tasks: bool = True
    disk_proportion: float = 0.75
    exact_task_values: bool = False


# The manager's defaults. Shared, so treat it as read-only: tune a copy (dataclasses.replace) instead.
DEFAULT_POLICY = AllocationPolicy()


def _proportion(box: Resources, denominators: tuple[float, ...]) -> float:
    """The largest share of the worker that ``box`` asks for, over fields the worker has."""
    best = 0.0
    found = False
    for v, d in zip(_vals(box), denominators):
        if v > 0 and d > 0:
            share = v / d
            if not found or share > best:
                best, found = share, True
    return best


def allocate_resources(
    request: Resources,
    worker_total: Resources,
    *,
    available_disk: float | None = None,
    minimum: Resources | None = None,
    policy: AllocationPolicy = DEFAULT_POLICY,
    function_call: bool = False,
) -> Resources:
    """The box a task gets on a worker, following the TaskVine manual's rule (REFERENCE §3.3).

    ``request`` holds what the task asked for (its own values, else its category's maximum; -1 or 0
    for "not asked"). ``minimum`` is the category minimum. ``available_disk`` is the worker's disk
    minus its cache in use minus the task's inputs; it defaults to ``worker_total.disk``.

    With proportional allocation the task gets the same share of every resource as the largest share
    it asked for, rounded up so a whole number of such tasks fits (1 core + 6 GB on a 4-core, 12 GB
    worker gets 2 cores and 6 GB). Asking for nothing, or for a whole worker's worth of anything,
    gets the whole worker. Requested values are never reduced. A request larger than the worker
    yields a box that does not :func:`fits`, so the scheduler can report the task as too big.
    Function calls run inside a library's box and get all zeros.
    """
    if function_call:
        return Resources.zero()
    req = request
    floor_box = minimum if minimum is not None else Resources()
    disk_room = _nonneg(worker_total.disk if available_disk is None else available_disk)
    w_cores, w_memory, w_gpus = worker_total.cores, worker_total.memory, worker_total.gpus
    w_cores, w_memory, w_gpus = (w_cores if w_cores > 0 else 0.0), (w_memory if w_memory > 0 else 0.0), (w_gpus if w_gpus > 0 else 0.0)
    # The margin applies to disk we compute; a value the user asked for is kept as asked.
    whole_disk = _floor(disk_room * policy.disk_proportion)

    if not policy.proportional:
        cores = req.cores if _asked(req.cores) else (0.0 if _asked(req.gpus) else w_cores)
        memory = req.memory if _asked(req.memory) else w_memory
        disk = req.disk if _asked(req.disk) else whole_disk
        gpus = _nonneg(req.gpus)
    else:
        denominators = (w_cores, w_memory, disk_room, w_gpus)
        p = max(_proportion(req, denominators), _proportion(floor_box, denominators))
        # TaskVine's C code skips whole-task rounding for a task that set its own memory or disk.
        whole_tasks = policy.whole_tasks and not (policy.exact_task_values and (_asked(req.memory) or _asked(req.disk)))
        if 0 < p <= 1 and whole_tasks:
            p = 1 / math.floor(1 / p + _EPS)
        # A request at or above a total the worker lacks (gpus on a gpu-less worker) never shows in p.
        oversized = any(_asked(v) and v >= d for v, d in zip(_vals(req), denominators))
        if p <= 0 or p >= 1 or oversized:
            cores = max(0.0 if _asked(req.gpus) else w_cores, _nonneg(req.cores))
            memory = max(w_memory, req.memory)
            disk = max(whole_disk, req.disk)
        else:
            if not _asked(req.cores) and _asked(req.gpus):
                cores = 0.0
            else:
                cores = max(1.0, req.cores, _floor(w_cores * p))
            memory = max(1.0, req.memory, _floor(w_memory * p))
            disk = max(1.0, req.disk, _floor(_floor(disk_room * p) * policy.disk_proportion))
        gpus = _nonneg(req.gpus)

    cores, memory = max(cores, floor_box.cores), max(memory, floor_box.memory)
    disk, gpus = max(disk, floor_box.disk), max(gpus, floor_box.gpus)
    if policy.exact_task_values:
        # As TaskVine's C code does last: what the task asked for replaces the computed value.
        r = req.cores
        cores = r if r > 0 else cores
        r = req.memory
        memory = r if r > 0 else memory
        r = req.disk
        disk = r if r > 0 else disk
        r = req.gpus
        gpus = r if r > 0 else gpus
    return _box(cores, memory, disk, gpus)


def fits(
    allocation: Resources,
    worker_total: Resources,
    committed: Resources,
    *,
    multiplier: float = 1.0,
) -> bool:
    """True when ``allocation`` can start on a worker that already has ``committed`` in use.

    Disk is never overcommitted: committed + allocation <= total. Cores, memory and gpus must each
    be at most the worker's total, and committed + allocation at most ceil(total * ``multiplier``)
    (tune ``resource-submit-multiplier``). Unset fields count as zero.
    """
    ceil = math.ceil
    w, h, u = allocation.cores, worker_total.cores, committed.cores
    w, h, u = (w if w > 0 else 0.0), (h if h > 0 else 0.0), (u if u > 0 else 0.0)
    if w > h + _EPS or u + w > ceil(h * multiplier) + _EPS:
        return False
    w, h, u = allocation.memory, worker_total.memory, committed.memory
    w, h, u = (w if w > 0 else 0.0), (h if h > 0 else 0.0), (u if u > 0 else 0.0)
    if w > h + _EPS or u + w > ceil(h * multiplier) + _EPS:
        return False
    w, h, u = allocation.disk, worker_total.disk, committed.disk
    w, h, u = (w if w > 0 else 0.0), (h if h > 0 else 0.0), (u if u > 0 else 0.0)
    if u + w > h + _EPS:  # disk is never overcommitted
        return False
    w, h, u = allocation.gpus, worker_total.gpus, committed.gpus
    w, h, u = (w if w > 0 else 0.0), (h if h > 0 else 0.0), (u if u > 0 else 0.0)
    return not (w > h + _EPS or u + w > ceil(h * multiplier) + _EPS)


def _tasks_that_fit(avail: Sequence[float], per_task: Sequence[float]) -> int:
    """min over resources of ceil(avail / per_task); cores always count, others only when used."""
    return min(
        _ceil(a / t) for i, (a, t) in enumerate(zip(avail, per_task)) if FIELDS[i] == "cores" or t > 0
    )


def hungry_count(
    *,
    workers: int,
    waiting: int,
    running: int,
    total: Resources,
    committed: Resources,
    waiting_requests: Sequence[Resources],
    minimum: int = 10,
    factor: float = 2,
) -> int:
    """How many more tasks the manager wants submitted (REFERENCE §3.5); never negative.

    ``total`` and ``committed`` are summed over connected workers. ``waiting_requests`` is a sample
    (at most 100 are read) of waiting tasks' requests; their unset fields are taken to be the
    average box of the running tasks. ``minimum`` is tune ``hungry-minimum`` and ``factor`` tune
    ``hungry-minimum-factor``: the manager stays hungry until ``factor`` times the pool's capacity
    is spoken for, and always wants at least max(``minimum``, workers x ``factor``) tasks queued.
    """
    floor_count = max(minimum, math.floor(workers * factor))
    per_running = max(running, 1)
    used = [_nonneg(v) for v in _vals(committed)]
    avg = [float(_ceil(u / per_running)) for u in used]
    avg[0] = max(avg[0], 1.0)  # so an idle pool still counts its cores
    avail = [factor * _nonneg(t) - u for t, u in zip(_vals(total), used)]

    if waiting <= 0:
        return max(0, _tasks_that_fit(avail, avg), floor_count)

    sample = list(islice(waiting_requests, 100))
    if sample:
        sums = [0.0] * len(FIELDS)
        for req in sample:
            for i, v in enumerate(_vals(req)):
                sums[i] += v if _asked(v) else avg[i]
        per_task = [float(_ceil(s / len(sample))) for s in sums]
        # GPU tasks may ask for 0 cores; the floor of 1 keeps cores a usable bound, as above.
        per_task[0] = max(per_task[0], 1.0)
    else:
        per_task = avg
    need = _tasks_that_fit(avail, per_task)
    return max(0, max(need, floor_count) - waiting)
