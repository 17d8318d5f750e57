"""Categories: tasks that share a resource description, sized from what their tasks measured.

Pure: no I/O, no clocks. The scheduler asks a :class:`CategoryBook` how big a box a task gets on a
worker, tells it what each finished task measured, and asks it whether a task that went over its
box may run again larger.

A category has a **mode** (TaskVine's names and numbers)::

    fixed (0)           the task's own values, else the category maximum, by the proportional rule
    max (1)             learn, then the largest peak seen (rounded up, with a margin)
    min waste (2)       learn, then the size that wastes the least resource-time
    max throughput (3)  learn, then the size that finishes the most tasks per unit of time

In the three automatic modes a category first *learns*: until ``category-steady-n-tasks`` of its
tasks have succeeded with their peaks measured (``Manager.enable_monitoring``), its tasks run at
the category's **largest box**: the category maximum when it sets cores, memory and disk, otherwise
a whole worker, each resource held to the maximum where one is set. A first-allocation guess, when
given, replaces that largest box while learning. Afterwards each task asks for the **sized box**
computed from the measured peaks (cores, memory and disk; gpus are never sized, as in TaskVine),
which then goes through the proportional rule of :func:`core.state.resources.allocate_resources` like
any request. Values set on the task itself always win; the category minimum is a floor throughout.

A task killed for going over its box (``resource exhaustion``) runs once more at the largest box.
It fails for the user when the resource it exceeded was set on the task itself, when it already
had the category maximum of that resource, when no connected worker offers more of it, or when it
goes over again on that larger attempt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import constants as C
from .resources import FIELDS, AllocationPolicy, Resources, allocate_resources

__all__ = [
    "BUCKET_SIZES",
    "Category",
    "CategoryBook",
    "Histogram",
    "mode_name",
    "mode_number",
    "parse_resources",
    "size_max_seen",
    "size_max_throughput",
    "size_min_waste",
]

MODE_NAMES: dict[int, str] = {
    C.VINE_ALLOCATION_MODE_FIXED: "fixed",
    C.VINE_ALLOCATION_MODE_MAX: "max",
    C.VINE_ALLOCATION_MODE_MIN_WASTE: "min waste",
    C.VINE_ALLOCATION_MODE_MAX_THROUGHPUT: "max throughput",
}
_NOT_PROVIDED: dict[int, str] = {
    C.VINE_ALLOCATION_MODE_GREEDY_BUCKETING: "greedy bucketing",
    C.VINE_ALLOCATION_MODE_EXHAUSTIVE_BUCKETING: "exhaustive bucketing",
    C.VINE_ALLOCATION_MODE_DET_GREEDY_BUCKETING: "det greedy bucketing",
    C.VINE_ALLOCATION_MODE_DET_EXHAUSTIVE_BUCKETING: "det exhaustive bucketing",
    C.VINE_ALLOCATION_MODE_QUANTIZED_BUCKETING: "quantized bucketing",
}

# Peaks are grouped in buckets of this width (TaskVine's sizes): 1 core, 250 MB of memory or disk.
BUCKET_SIZES: dict[str, float] = {"cores": 1, "memory": 250, "disk": 250, "gpus": 1}
SIZED: tuple[str, ...] = ("cores", "memory", "disk")  # gpus are left to the task or the category maximum

_EPS = 1e-9


def mode_number(mode: str | int) -> int:
    """TaskVine's allocation mode as its number: ``"max throughput"``, ``"max_throughput"``, 3 or
    ``VINE_ALLOCATION_MODE_MAX_THROUGHPUT`` all give 3. Unknown modes and the bucketing modes,
    which this project does not provide, raise ValueError naming the ones it does."""
    known = ", ".join(repr(n) for n in MODE_NAMES.values())
    if isinstance(mode, bool) or not isinstance(mode, (int, str)):
        raise TypeError(f"category mode must be a name or a VINE_ALLOCATION_MODE_* number, not {mode!r}; use one of {known}")
    if isinstance(mode, str):
        words = mode.strip().lower().replace("_", " ")
        words = words.removeprefix("vine allocation mode ").removeprefix("allocation mode ")
        by_name = {name: number for number, name in {**MODE_NAMES, **_NOT_PROVIDED}.items()}
        if words not in by_name:
            raise ValueError(f"unknown category mode {mode!r}; use one of {known}")
        number = by_name[words]
    else:
        number = mode
    if number in _NOT_PROVIDED:
        raise ValueError(f"category mode {_NOT_PROVIDED[number]!r} (bucketing) is not provided; use one of {known}")
    if number not in MODE_NAMES:
        raise ValueError(f"unknown category mode {mode!r}; use one of {known} (numbers 0-3)")
    return number


def mode_name(mode: int) -> str:
    """``"fixed"``, ``"max"``, ``"min waste"`` or ``"max throughput"``."""
    return MODE_NAMES[mode]


def parse_resources(what: str, values: Mapping[str, Any] | None) -> Resources:
    """A box from a user's ``{"cores": 2, "memory": 1024}``; ``what`` names the call in errors.

    Keys other than cores, memory, disk and gpus, and values that are not non-negative numbers,
    raise ValueError. Missing keys (and ``None``, or -1, TaskVine's "unset") stay unset.
    """
    if values is None:
        return Resources()
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} takes a dict such as {{'cores': 1, 'memory': 1024}}, not {type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in FIELDS)
    if unknown:
        raise ValueError(f"{what}: unknown resource(s) {', '.join(unknown)}; use cores, memory (MB), disk (MB), gpus")
    box: dict[str, float] = {}
    for name, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{what}: {name} must be a number, not {v!r}")
        if not math.isfinite(v):  # infinity too: it would reach the scheduler's rounding and the wire
            raise ValueError(f"{what}: {name} must be a finite number, not {v}")
        if v < 0 and v != -1:
            raise ValueError(f"{what}: {name} must be >= 0 (or -1 for unset), not {v}")
        if v >= 0:
            box[name] = float(v)
    return Resources.from_dict(box)


def _get(box: Resources, name: str) -> float:
    return float(getattr(box, name))


def _override(base: Resources, top: Resources) -> Resources:
    """``base`` with every value that ``top`` sets (> 0) replaced by ``top``'s."""
    return Resources(*(_get(top, f) if _get(top, f) > 0 else _get(base, f) for f in FIELDS))


# --- measured peaks ----------------------------------------------------------------------------------


@dataclass
class Histogram:
    """Measured peaks of one resource, in buckets of ``bucket`` (a bucket is keyed by its upper end),
    with the number of tasks and their summed wall time per bucket."""

    bucket: float
    counts: dict[float, int] = field(default_factory=dict)
    times: dict[float, float] = field(default_factory=dict)
    peak: float = -1.0

    def round_up(self, value: float) -> float:
        """The upper end of the bucket ``value`` falls in: 0 stays 0, (0, 250] gives 250, and so on."""
        return math.ceil(value / self.bucket - _EPS) * self.bucket if value > 0 else 0.0

    def add(self, value: float, wall_time: float) -> None:
        key = self.round_up(value)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.times[key] = self.times.get(key, 0.0) + max(wall_time, 0.0)
        self.peak = max(self.peak, value)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _table(self) -> tuple[list[float], list[int], float, list[float]]:
        """Sorted bucket ends, counts, mean wall time, and for each bucket the wall time of the tasks
        in larger buckets, divided by the number of tasks (the expected retry time above it)."""
        keys = sorted(self.counts)
        counts = [self.counts[k] for k in keys]
        n = sum(counts)
        above = [0.0] * len(keys)
        for i in range(len(keys) - 2, -1, -1):
            above[i] = above[i + 1] + self.times[keys[i + 1]] / n
        mean = (sum(self.times.values()) / n) if n else 0.0
        return keys, counts, mean, above


def size_max_seen(h: Histogram, cap: float = -1) -> float:
    """``max`` mode: the largest peak plus a third of a bucket, rounded up to its bucket (a 120 MB
    peak gives 250 MB, 200 MB gives 500 MB, 0.3 cores gives 1), never above ``cap`` when set."""
    if h.peak < 0:
        return -1.0
    sized = h.round_up(h.peak + math.floor(h.bucket / 3))
    return min(sized, cap) if cap > 0 else sized


def size_min_waste(h: Histogram, top: float) -> float:
    """``min waste`` mode: the bucket ``a`` (at least 1) that minimises the expected resource-time
    a task holds, ``a x mean wall time + top x (wall time of the tasks above a) / tasks``: every task
    first runs with ``a``, and those that needed more run again with ``top``. At most ``top``."""
    keys, _counts, mean, above = h._table()
    best, best_cost = top, math.inf
    for a, retry_time in zip(keys, above):
        if a < 1:
            continue
        cost = a * mean + top * retry_time
        if cost < best_cost:
            best, best_cost = a, cost
    return min(best, top)


def size_max_throughput(h: Histogram, top: float) -> float:
    """``max throughput`` mode: the bucket ``a`` (at least 1) that maximises the tasks finished per
    unit of time on a ``top``-sized share: ``top / a`` tasks fit where one ``top``-sized task would,
    those within ``a`` finish, those above it run again; each costs the mean wall time plus the
    retry time of the tasks above ``a``. At most ``top``."""
    keys, counts, mean, above = h._table()
    n = sum(counts)
    best, best_rate = top, 0.0
    within = 0
    for a, count, retry_time in zip(keys, counts, above):
        within += count
        if a < 1:
            continue
        rate = (within * top / a + (n - within)) / max(mean + retry_time, _EPS)
        if rate > best_rate:
            best, best_rate = a, rate
    return min(best, top)


# --- categories --------------------------------------------------------------------------------------


@dataclass
class Category:
    """One category's settings and what its tasks measured.

    ``mode`` is None until set for this category; it then follows the book's default mode.
    ``samples`` counts the successful tasks whose peaks were recorded.
    """

    name: str
    mode: int | None = None
    maximum: Resources = field(default_factory=Resources)
    minimum: Resources = field(default_factory=Resources)
    guess: Resources | None = None
    samples: int = 0
    histograms: dict[str, Histogram] = field(default_factory=lambda: {f: Histogram(BUCKET_SIZES[f]) for f in SIZED})
    _sized: dict[int, Resources] = field(default_factory=dict)  # per mode, dropped when a sample arrives

    def record(self, measured: Resources, wall_time: float) -> None:
        """Add one successful task's peaks (fields it did not measure are skipped)."""
        for f in SIZED:
            v = _get(measured, f)
            if v >= 0:
                self.histograms[f].add(v, wall_time)
        self.samples += 1
        self._sized.clear()

    def sized(self, mode: int) -> Resources:
        """The box computed from the peaks in ``mode`` (unset fields where nothing was measured)."""
        box = self._sized.get(mode)
        if box is None:
            values = []
            for f in FIELDS:
                h = self.histograms.get(f)
                if h is None or h.peak < 0:
                    values.append(-1.0)
                    continue
                cap = _get(self.maximum, f)
                if mode == C.VINE_ALLOCATION_MODE_MAX:
                    values.append(size_max_seen(h, cap))
                    continue
                # The retry size: the category maximum, else the largest bucket seen, so the sized
                # value keeps a bucket's margin over the peaks rather than equalling the largest one.
                top = cap if cap > 0 else max(h.round_up(h.peak), h.bucket if f != "cores" else 1.0)
                pick = size_min_waste if mode == C.VINE_ALLOCATION_MODE_MIN_WASTE else size_max_throughput
                values.append(pick(h, top))
            box = self._sized[mode] = Resources(*values)
        return box

    def describe(self, mode: int, steady_n: int) -> dict[str, Any]:
        """What the category holds now, for users and logs."""
        learning = mode != C.VINE_ALLOCATION_MODE_FIXED and self.samples < steady_n
        info: dict[str, Any] = {
            "category": self.name, "mode": mode_name(mode), "samples": self.samples,
            "max": {k: v for k, v in self.maximum.to_dict().items() if v >= 0},
            "min": {k: v for k, v in self.minimum.to_dict().items() if v >= 0},
            "max_seen": {f: round(h.peak, 3) for f, h in self.histograms.items() if h.peak >= 0},
            "learning": learning,
        }
        if self.guess is not None:
            info["first_allocation_guess"] = {k: v for k, v in self.guess.to_dict().items() if v >= 0}
        if mode != C.VINE_ALLOCATION_MODE_FIXED and not learning:
            info["sized"] = {k: v for k, v in self.sized(mode).to_dict().items() if v >= 0}
        return info


class CategoryBook:
    """Every category the user configured, the default mode, and the sizing decisions.

    Categories nobody configured, while the default mode is ``fixed``, are not stored at all: their
    tasks take the scheduler's plain path, so a workflow that never uses categories pays nothing.
    """

    def __init__(self) -> None:
        self.categories: dict[str, Category] = {}
        self.default_mode = C.VINE_ALLOCATION_MODE_FIXED

    def ensure(self, name: str | None) -> Category:
        name = "default" if name is None else str(name)
        cat = self.categories.get(name)
        if cat is None:
            cat = self.categories[name] = Category(name)
        return cat

    def active(self, name: str) -> Category | None:
        """The category to consult for a task in ``name``, or None for the plain fixed path."""
        cat = self.categories.get(name)
        if cat is None and self.default_mode != C.VINE_ALLOCATION_MODE_FIXED:
            cat = self.ensure(name)  # the default mode sizes every category, so each needs its peaks
        return cat

    def mode_of(self, cat: Category) -> int:
        return self.default_mode if cat.mode is None else cat.mode

    def set_mode(self, name: str | None, mode: int) -> None:
        """``name`` None sets the default, followed by every category not given a mode of its own."""
        if name is None:
            self.default_mode = mode
        else:
            self.ensure(name).mode = mode

    # -- sizing ---------------------------------------------------------------------------------------
    def allocation(self, cat: Category, requested: Resources | Mapping[str, float], at_max: bool, worker_total: Resources,
                   policy: AllocationPolicy, steady_n: int) -> Resources:
        """The box a task of ``cat`` gets on a worker of ``worker_total``.

        ``requested`` is the task's own values; ``at_max`` is true for the attempt after an
        exhaustion. See the module docstring for the rules.
        """
        own = requested if isinstance(requested, Resources) else Resources.from_dict(requested)
        limits = _override(cat.maximum, own)  # the task's own values win over the category's
        mode = self.mode_of(cat)
        if mode == C.VINE_ALLOCATION_MODE_FIXED:
            if at_max:
                return self._largest_box(limits, own, cat, worker_total, policy)
            return allocate_resources(limits, worker_total, minimum=cat.minimum, policy=policy)
        learning = cat.samples < max(steady_n, 1)
        if at_max or (learning and cat.guess is None):
            return self._largest_box(limits, own, cat, worker_total, policy)
        base = cat.guess if learning and cat.guess is not None else cat.sized(mode)
        capped = Resources(*(min(_get(base, f), _get(cat.maximum, f)) if _get(cat.maximum, f) > 0 and _get(base, f) > 0
                             else _get(base, f) for f in FIELDS))
        request = _override(_override(cat.maximum, capped), own)
        return allocate_resources(request, worker_total, minimum=cat.minimum, policy=policy)

    @staticmethod
    def _largest_box(limits: Resources, own: Resources, cat: Category, worker_total: Resources,
                     policy: AllocationPolicy) -> Resources:
        """The category maximum when it sets cores, memory and disk (by the proportional rule, as in
        fixed mode); otherwise the whole worker with each resource held to the maximum where one is
        set. The task's own values are kept as asked; the category minimum is a floor."""
        if all(_get(limits, f) > 0 for f in ("cores", "memory", "disk")):
            return allocate_resources(limits, worker_total, minimum=cat.minimum, policy=policy)
        whole = allocate_resources(Resources(), worker_total, policy=policy)
        values = []
        for f in FIELDS:
            mine, cap, all_of_it = _get(own, f), _get(cat.maximum, f), _get(whole, f)
            if mine > 0:
                v = mine
            elif cap > 0:
                v = min(cap, all_of_it) if f != "gpus" else cap
            elif f == "cores" and _get(limits, "gpus") > 0:
                v = 0.0  # a gpu task that did not ask for cores gets none, as in the whole-worker rule
            else:
                v = all_of_it
            values.append(max(v, _get(cat.minimum, f)))
        return Resources(*values)

    # -- outcomes -------------------------------------------------------------------------------------
    def record(self, name: str, measured: Resources | None, wall_time: float) -> None:
        """A task of category ``name`` succeeded having used ``measured`` (None: not monitored)."""
        if measured is None or all(_get(measured, f) < 0 for f in SIZED):
            return
        cat = self.active(name)
        if cat is not None:
            cat.record(measured, wall_time)

    def may_grow(self, name: str, requested: Resources | Mapping[str, float], exhaustions: int, exceeded: tuple[str, ...],
                 allocated: Resources, largest: Resources, disk_proportion: float) -> bool:
        """Whether a task that went over ``exceeded`` (resource names) on a box of ``allocated`` runs
        again at the largest box. ``exhaustions`` counts its earlier larger retries; ``largest`` holds,
        per resource, the most any connected worker has."""
        if exhaustions >= 1:
            return False  # it already had the largest box
        if not isinstance(requested, Resources):
            requested = Resources.from_dict(requested)
        cat = self.categories.get(name)
        for r in exceeded:
            if r not in FIELDS:
                continue
            if _get(requested, r) > 0:
                return False  # the task set it: the user's number is final
            if cat is not None and _get(cat.maximum, r) > 0 and _get(allocated, r) >= _get(cat.maximum, r) - _EPS:
                return False  # it went over the category maximum
            room = _get(largest, r)
            if r == "disk":
                room = math.floor(room * disk_proportion)
            if _get(allocated, r) >= room - _EPS:
                return False  # no connected worker offers more of it
        return True
