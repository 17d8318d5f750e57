"""The ``Manager`` methods that configure categories (TaskVine's names); the rules live in core/state/categories.py.

A category groups tasks with similar needs (``Task.set_category``, default ``"default"``)::

    m.enable_monitoring()
    m.set_category_resources_max("analysis", {"memory": 4000})   # never more than 4 GB
    m.set_category_mode("analysis", "max throughput")             # learn, then size from peaks
    m.tune("category-steady-n-tasks", 10)                         # how many tasks to learn from
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from .. import constants as C
from ..state.categories import Category, mode_name, mode_number, parse_resources
from ..state.events import CategoryBoxSet, CategoryModeSet
from ..state.resources import Resources
from .logs import resources_json

if TYPE_CHECKING:
    from ..state.scheduler import SchedulerState
    from .logs import RunLogs


class CategorySettings:
    """The Manager's category methods, as a member of :class:`core.Manager` (which delegates to it).

    Every setter applies to tasks not yet dispatched, too. The manager lends it the scheduler state,
    its logs, its ``call`` (into the I/O thread), and two views of its monitoring setting: whether
    monitoring is on, and how to turn it on (the automatic modes need measurements).
    """

    def __init__(self, state: SchedulerState, logs: RunLogs, call: Callable[..., Any],
                 monitoring_on: Callable[[], bool], enable_monitoring: Callable[[], None],
                 *, apply: Callable[..., None]) -> None:
        self._state = state
        self._apply = apply  # the manager's: events into the state (the only way to change it)
        self._logs = logs
        self._call = call
        self._monitoring_on = monitoring_on
        self.enable_monitoring = enable_monitoring

    def set_category_resources_max(self, category: str, rmd: Mapping[str, float] | None) -> None:
        """The most a task of ``category`` may use, e.g. ``{"cores": 2, "memory": 1024}`` (MB).

        In ``fixed`` mode a task asks for these values (its own values win); in the automatic modes
        they cap the sized box, and a task going over one of them fails as "resource exhaustion".
        ``{}`` (or None) removes the maximum.
        """
        box = parse_resources("set_category_resources_max", rmd)
        self._with_category(category, "maximum", box, "MAX", box.to_dict())

    def set_category_resources_min(self, category: str, rmd: Mapping[str, float] | None) -> None:
        """The least a task of ``category`` is given, whatever it asks for or was measured at."""
        box = parse_resources("set_category_resources_min", rmd)
        self._with_category(category, "minimum", box, "MIN", box.to_dict())

    def set_resources_max(self, rmd: Mapping[str, float] | None) -> None:
        """:meth:`set_category_resources_max` of the ``"default"`` category."""
        self.set_category_resources_max("default", rmd)

    def set_resources_min(self, rmd: Mapping[str, float] | None) -> None:
        """:meth:`set_category_resources_min` of the ``"default"`` category."""
        self.set_category_resources_min("default", rmd)

    def set_category_first_allocation_guess(self, category: str, rmd: Mapping[str, float] | None) -> None:
        """In an automatic mode, run the category's first tasks with this box instead of whole
        workers, until ``category-steady-n-tasks`` were measured. None removes the guess."""
        box = parse_resources("set_category_first_allocation_guess", rmd) if rmd is not None else None
        self._with_category(category, "guess", box, "FIRST", {} if box is None else box.to_dict())

    def set_category_mode(self, category: str | None, mode: str | int) -> int:
        """How ``category``'s tasks are sized: ``"fixed"`` (the default), ``"max"``, ``"min waste"``
        or ``"max throughput"`` (or TaskVine's ``VINE_ALLOCATION_MODE_*`` numbers 0-3).

        ``category=None`` sets the mode of every category not given one of its own. The automatic
        modes need measurements: monitoring (with the watchdog) is turned on if it is off. The
        bucketing modes are not provided and raise ValueError, as unknown modes do. Returns 1.
        """
        number = mode_number(mode)
        if category is not None and not isinstance(category, str):
            raise TypeError(f"set_category_mode: category must be a name (str) or None for the default, not {category!r}")
        if number != C.VINE_ALLOCATION_MODE_FIXED and not self._monitoring_on():
            self.enable_monitoring()
            self._logs.debug(f"category mode {mode_name(number)!r} measures tasks: monitoring turned on")

        self._call(lambda: self._apply(CategoryModeSet(time.time(), category, number)))
        if category is not None:  # as TaskVine: the default mode itself is no category's record
            self._logs.transaction(f"CATEGORY {category} FIRST {mode_name(number).upper().replace(' ', '_')} {{}}")
        return 1

    def category_resources(self, category: str) -> dict[str, Any]:
        """What the manager knows of ``category``: its mode, maximum, minimum, guess, how many tasks it
        has measured, the largest peaks seen, whether it is still learning, and the sized box."""
        def describe() -> dict[str, Any]:
            book = self._state.categories
            cat = book.categories.get(category) or Category(category)  # an unconfigured one is not stored
            return cat.describe(book.mode_of(cat), int(self._state.tuning["category-steady-n-tasks"]))
        return dict(self._call(describe))

    def status(self) -> list[dict[str, Any]]:
        """``status("categories")``: every configured category and every category of a task the
        manager holds, with its running and waiting counts (runs in the I/O thread)."""
        book = self._state.categories
        steady_n = int(self._state.tuning["category-steady-n-tasks"])
        counts: dict[str, dict[str, int]] = {name: {"tasks_running": 0, "tasks_waiting": 0} for name in book.categories}
        for rec in self._state.tasks.values():
            if rec.recovery or rec.state == "done":
                continue
            c = counts.setdefault(rec.spec.category, {"tasks_running": 0, "tasks_waiting": 0})
            c["tasks_running" if rec.state == "dispatched" else "tasks_waiting"] += 1
        out = []
        for name in sorted(counts):
            cat = book.categories.get(name) or Category(name)
            out.append({**cat.describe(book.mode_of(cat), steady_n), **counts[name]})
        return out

    def _with_category(self, category: str, which: Literal["maximum", "minimum", "guess"], resources: Resources | None,
                       what: str, box: dict[str, float]) -> None:
        if not isinstance(category, str):
            raise TypeError(f"category must be a name (str), not {category!r}")

        def apply() -> str:
            self._apply(CategoryBoxSet(time.time(), category, which, resources))
            book = self._state.categories
            return mode_name(book.mode_of(book.categories.get(category) or Category(category)))
        mode = self._call(apply)
        if what == "FIRST":  # TaskVine's record: CATEGORY name FIRST (FIXED|MAX|MIN_WASTE|MAX_THROUGHPUT) {resources}
            what = f"FIRST {mode.upper().replace(' ', '_')}"
        self._logs.transaction(f"CATEGORY {category} {what} {resources_json(box)}")
