"""Manager controls over connected workers: draining a host, disconnecting slow workers.

``set_draining_by_hostname(host)``: workers on ``host`` get no new tasks; each is released (told to
exit, DISCONNECTION EXPLICIT, counted in ``workers_released``) once its running tasks are done.
``enable_disconnect_slow_workers(multiplier)``: a worker whose running task has taken more than
``multiplier`` times the mean execution time of that task's category (once
:data:`SLOW_MIN_SAMPLES` tasks of the category succeeded) is disconnected (DISCONNECTION FAST_ABORT,
``workers_slow``), and its tasks go to other workers. With the tune
``option-blocklist-slow-workers-timeout`` > 0 its host is also blocked for that many seconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ManagerError
from ..state.events import HostBlocked, HostDraining, HostUnblocked
from ..wire import messages as M

if TYPE_CHECKING:
    from ..state.scheduler import SchedulerState
    from .links import WorkerLink
    from .logs import RunLogs
    from .metrics import ManagerMetrics

SLOW_MIN_SAMPLES = 3  # successful tasks of a category before its mean is trusted


class WorkerControls:
    """A member of :class:`core.Manager`; every method runs its changes on the I/O thread.

    It holds the per-category slow-worker factors; the rest it is lent at construction by the
    manager: the scheduler state, the links to workers, the counters and tune values it shares,
    the logs, metrics and event loop, and the manager's ``call`` (into the I/O thread) and ``apply``.
    """

    def __init__(self, state: SchedulerState, links: dict[str, WorkerLink], counters: dict[str, float],
                 tune_values: dict[str, float], logs: RunLogs, metrics: ManagerMetrics,
                 loop: asyncio.AbstractEventLoop, call: Callable[..., Any], apply: Callable[..., None]) -> None:
        self.slow_category_factors: dict[str, float] = {}  # category -> its enable_disconnect_slow_workers_category
        self._state = state
        self._links = links
        self._counters = counters
        self._tune_values = tune_values
        self._logs = logs
        self._metrics = metrics
        self._loop = loop
        self._call = call
        self._apply = apply

    def set_draining_by_hostname(self, hostname: str, drain: bool = True) -> int:
        """Drain (``drain=True``) or stop draining the workers connected from ``hostname``.

        A draining worker is sent no new task and is released when the tasks it runs are done.
        Returns how many connected workers were on that host (0: none, as TaskVine returns).
        """
        if not isinstance(hostname, str) or not hostname:
            raise ValueError(f"set_draining_by_hostname needs a host name, not {hostname!r}")

        def apply() -> int:
            n = sum(1 for w in self._state.workers.values() if w.hostname == hostname)
            self._apply(HostDraining(time.time(), hostname, bool(drain)))
            self._release_drained_workers()
            self._apply()
            return n
        return int(self._call(apply))

    def enable_disconnect_slow_workers(self, multiplier: float) -> int:
        """Disconnect a worker whose task runs over ``multiplier`` × its category's mean time.

        TaskVine's meaning: a multiplier below 1 turns the check off. Applies to every category
        without one of its own (:meth:`enable_disconnect_slow_workers_category`).
        """
        self._tune_values["disconnect-slow-worker-factor"] = _multiplier(multiplier)
        return 0

    def enable_disconnect_slow_workers_category(self, category: str, multiplier: float) -> int:
        """As :meth:`enable_disconnect_slow_workers` for the tasks of ``category`` only."""
        if not isinstance(category, str) or not category:
            raise ValueError(f"a category name is needed, not {category!r}")
        self.slow_category_factors[category] = _multiplier(multiplier)
        return 0

    # -- I/O thread --------------------------------------------------------------------------------
    def check_workers(self, now: float) -> None:
        """From the manager's ticker: release drained workers, disconnect slow ones."""
        self._release_drained_workers()
        default = self._tune_values.get("disconnect-slow-worker-factor", 0)
        factors = self.slow_category_factors
        if default < 1 and not factors:
            return
        means = self._metrics.category_means(SLOW_MIN_SAMPLES)
        for rec in list(self._state.tasks.values()):
            if rec.state != "dispatched" or rec.worker is None or rec.queued:
                continue
            category = rec.spec.category
            factor = factors.get(category, default)
            mean = means.get(category)
            started = self._metrics.started_at(rec.id, rec.worker, now)
            if factor < 1 or mean is None or now - started <= factor * mean:
                continue
            self._disconnect_slow(rec.worker, rec.id, now - started, factor * mean)

    def _disconnect_slow(self, wid: str, tid: int, ran: float, limit: float) -> None:
        link = self._links.get(wid)
        if link is None or link.disconnect_reason is not None:
            return
        link.disconnect_reason = "FAST_ABORT"
        self._counters["workers_slow"] += 1
        self._logs.debug(f"worker {wid} ({link.addrport}) is slow: task {tid} ran {ran:.1f}s, over {limit:.1f}s; disconnecting it")
        block = self._tune_values.get("option-blocklist-slow-workers-timeout", 0)
        if block > 0:
            self._apply(HostBlocked(time.time(), link.hostname))
            self._loop.call_later(block, self._unblock_now, link.hostname)
        link.conn.writer.transport.abort()

    def _unblock_now(self, host: str) -> None:
        self._apply(HostUnblocked(time.time(), host))

    def _release_drained_workers(self) -> None:
        for w in list(self._state.workers.values()):
            if not w.draining or w.tasks or w.queue:
                continue
            link = self._links.get(w.id)
            if link is None or link.disconnect_reason is not None:
                continue
            link.disconnect_reason = "EXPLICIT"
            self._counters["workers_released"] += 1
            self._logs.debug(f"releasing drained worker {w.id} ({link.addrport})")
            link.conn.send(M.Exit())


def _multiplier(value: Any) -> float:
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise ManagerError(f"the slow-worker multiplier must be a number, not {value!r}") from None
    if math.isnan(m):
        raise ManagerError("the slow-worker multiplier must be a number, not NaN")
    return m if m >= 1 else 0.0

