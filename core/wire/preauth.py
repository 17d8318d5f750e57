"""Strangers: connections a listener has accepted that have not finished their handshake.

Each holds a file descriptor and some memory, and anyone who can reach the port can make them.
:class:`PreAuthGate` bounds how many a listener keeps (used by :class:`core.wire.tls.GatedListener`, so
by the manager's port and every worker's transfer port); :class:`RateLimitedLog` keeps a failure
that repeats (accepting at the descriptor limit) to one log line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any


def default_preauth_limit() -> int:
    """How many not-yet-authenticated connections a listener keeps: an eighth of the file descriptors
    this process may open (``ulimit -n``), between 8 and 512, so strangers never take the descriptors
    the manager needs for its workers, their outputs and its logs."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 16
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(8, min(512, soft // 8))


class PreAuthGate:
    """Bounds the connections a listener holds that have not authenticated yet.

    Each accepted connection is admitted with the asyncio task serving it. When ``limit`` are
    already waiting, the one waiting longest is cancelled (its task closes it): a real peer finishes
    its handshake in milliseconds, so it is idle strangers that go. A connection leaves the gate when
    its handler admits it (:func:`leave_preauth_gate`: the manager once a worker's ``ready`` is in,
    a transfer port at a peer's first request; without a password the handshake alone proves
    nothing) or ends. ``evicted`` counts the cancelled.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = default_preauth_limit() if limit is None else int(limit)
        if self.limit < 1:
            raise ValueError(f"pre-authentication connection limit must be at least 1, not {limit!r}")
        self._waiting: dict[asyncio.Task[Any], None] = {}  # insertion order = age
        self.evicted = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def admit(self, task: asyncio.Task[Any]) -> None:
        while len(self._waiting) >= self.limit:
            self.evict_oldest()
        self._waiting[task] = None
        task.add_done_callback(self.release)
        _gates[task] = self

    def evict_oldest(self) -> bool:
        """Close the stranger waiting longest (to free a descriptor); False when none is waiting."""
        if not self._waiting:
            return False
        oldest = next(iter(self._waiting))
        del self._waiting[oldest]
        self.evicted += 1
        oldest.cancel()
        return True

    def release(self, task: asyncio.Task[Any]) -> None:
        self._waiting.pop(task, None)
        _gates.pop(task, None)


# The gate of each admitted task, so the Connection made inside that task can leave it on authenticating.
_gates: dict[asyncio.Task[Any], PreAuthGate] = {}


def leave_preauth_gate() -> None:
    """Called by a listener's handler once the peer it serves (in the current task) is admitted:
    its listener's gate stops counting it as a stranger."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return
    gate = _gates.get(task) if task is not None else None
    if gate is not None and task is not None:
        gate.release(task)


class RateLimitedLog:
    """At most one line per ``interval`` seconds for a repeating failure, with the count in between
    (accept failures at the descriptor limit repeat thousands of times a minute)."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def warning(self, message: str) -> bool:
        """Log ``message`` unless one was logged less than ``interval`` ago; True when it was logged."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return False
        more = f" ({self._suppressed} more like it in the last {now - self._last:.0f}s)" if self._suppressed else ""
        self.logger.warning("%s%s", message, more)
        self._last, self._suppressed = now, 0
        return True
