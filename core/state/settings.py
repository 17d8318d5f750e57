"""The manager's settings as events: tunes, the placement policy, blocked and draining hosts, categories.

``Manager.tune``, ``set_scheduler``, ``block_host``, ``set_draining_by_hostname`` and the category
methods used to write the scheduler's fields from the manager's thread; now each posts one of these
events and only :meth:`core.state.scheduler.SchedulerState.handle` changes anything. Each handler
asks for a scheduling pass, since any of them may let a waiting task go somewhere. Mixed into
:class:`core.state.scheduler.SchedulerState`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import (
    CategoryBoxSet,
    CategoryModeSet,
    HostBlocked,
    HostDraining,
    HostUnblocked,
    Instruction,
    PolicyChanged,
    TuneChanged,
)
from .libraries import DEFAULT_QUEUE_DEPTH

if TYPE_CHECKING:
    from .categories import CategoryBook
    from .libraries import LibraryBook
    from .records import WorkerRecord

CANONICAL_POLICIES = frozenset({"files", "time", "rand", "worst", "disk"})  # policy_name() gives one of these


class SettingsHandlers:
    """The handlers of the settings events."""

    if TYPE_CHECKING:  # state owned by SchedulerState, declared for the type checker
        tuning: dict[str, float]
        policy: str
        blocked_hosts: set[str]
        workers: dict[str, WorkerRecord]
        libs: LibraryBook
        categories: CategoryBook
        _schedule_needed: bool

    def settings_handlers(self) -> dict[type, Callable[[Any, list[Instruction]], None]]:
        return {
            TuneChanged: self._on_tune_changed,
            PolicyChanged: self._on_policy_changed,
            HostBlocked: self._on_host_blocked,
            HostUnblocked: self._on_host_unblocked,
            HostDraining: self._on_host_draining,
            CategoryModeSet: self._on_category_mode_set,
            CategoryBoxSet: self._on_category_box_set,
        }

    def _on_tune_changed(self, ev: TuneChanged, out: list[Instruction]) -> None:
        self.tuning[ev.key] = ev.value
        if ev.key == "library-queue-depth":  # the one place the book learns its depth
            self.libs.depth = int(self.tuning.get("library-queue-depth", DEFAULT_QUEUE_DEPTH))
        self._schedule_needed = True

    def _on_policy_changed(self, ev: PolicyChanged, out: list[Instruction]) -> None:
        if ev.policy not in CANONICAL_POLICIES:
            raise ValueError(f"unknown scheduler {ev.policy!r}; use one of {', '.join(sorted(CANONICAL_POLICIES))}")
        self.policy = ev.policy

    def _on_host_blocked(self, ev: HostBlocked, out: list[Instruction]) -> None:
        self.blocked_hosts.add(ev.host)

    def _on_host_unblocked(self, ev: HostUnblocked, out: list[Instruction]) -> None:
        self.blocked_hosts.discard(ev.host)
        self._schedule_needed = True

    def _on_host_draining(self, ev: HostDraining, out: list[Instruction]) -> None:
        for w in self.workers.values():
            if w.hostname == ev.host:
                w.draining = ev.drain
        self._schedule_needed = True

    def _on_category_mode_set(self, ev: CategoryModeSet, out: list[Instruction]) -> None:
        self.categories.set_mode(ev.category, ev.mode)
        self._schedule_needed = True

    def _on_category_box_set(self, ev: CategoryBoxSet, out: list[Instruction]) -> None:
        cat = self.categories.ensure(ev.category)
        if ev.which == "maximum":
            if ev.box is None:
                raise ValueError(f"category {ev.category!r}: a maximum box is needed (an empty one removes it)")
            cat.maximum = ev.box
        elif ev.which == "minimum":
            if ev.box is None:
                raise ValueError(f"category {ev.category!r}: a minimum box is needed (an empty one removes it)")
            cat.minimum = ev.box
        elif ev.which == "guess":
            cat.guess = ev.box
        else:
            raise ValueError(f"category box {ev.which!r}; use maximum, minimum or guess")
        self._schedule_needed = True
