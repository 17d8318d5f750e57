"""Manager metrics: the derived performance-log columns, and ``/metrics`` for Prometheus.

:func:`performance_columns` fills the columns of the performance log (REFERENCE §5) that are not
plain counters of the scheduler: worker counts by condition, time spent by the manager on each kind
of work, bandwidth, the capacity estimates and the largest/smallest worker. :class:`PrometheusExporter`
serves every numeric stat as a ``vine_<stat>`` gauge (``Manager(prometheus_port=N)``), using the
``prometheus_client`` library (``pip install 'core-vine[metrics]'``).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import constants as C
from ..errors import ManagerError
from .logs import PERFORMANCE_COLUMNS

if TYPE_CHECKING:
    from ..api.task import Task
    from ..state.scheduler import SchedulerState
    from .logs import RunLogs

# Weight of the newest task in capacity_weighted (an exponential moving average, as TaskVine keeps).
CAPACITY_WEIGHT = 0.05


class TaskTimes:
    """What finished tasks cost, for time_execute* and the capacity estimates.

    Updated by the I/O thread once per returned task; read by the stats collector on the same thread.
    """

    def __init__(self) -> None:
        self.execute = 0.0  # µs of task execution on workers, every attempt
        self.execute_good = 0.0  # µs of attempts that succeeded
        self.execute_exhaustion = 0.0  # µs of attempts killed for exceeding their allocation
        self.tasks = 0
        self.transfer_us = 0.0  # µs moving the tasks' inputs and outputs
        self.cores = 0.0
        self.memory = 0.0
        self.disk = 0.0
        self.instantaneous = 0.0
        self.weighted = 0.0

    def add(self, task: Task, result: int, transfer_us: float) -> None:
        last = float(task.metrics.get("time_workers_execute_last", 0) or 0)
        total = float(task.metrics.get("time_workers_execute_all", last) or 0)
        self.execute += total
        if result == C.VINE_RESULT_SUCCESS:
            self.execute_good += last
        elif result == C.VINE_RESULT_RESOURCE_EXHAUSTION:
            self.execute_exhaustion += last
        self.tasks += 1
        self.transfer_us += transfer_us
        alloc = task.resources_allocated
        self.cores += max(float(getattr(alloc, "cores", 0) or 0), 0) or 1
        self.memory += max(float(getattr(alloc, "memory", 0) or 0), 0)
        self.disk += max(float(getattr(alloc, "disk", 0) or 0), 0)
        # How many tasks like this one the manager could keep running at once: its execution time
        # over the manager's time spent on it (its transfers, or a millisecond of dispatch at least).
        overhead = max(transfer_us, 1000.0)
        inst = last / overhead if last > 0 else 0.0
        self.instantaneous = inst
        self.weighted = inst if self.tasks == 1 else (1 - CAPACITY_WEIGHT) * self.weighted + CAPACITY_WEIGHT * inst


def waiting_minimum(shapes: Iterable[Any]) -> dict[str, float] | None:
    """The smallest cores/memory/disk/gpus a waiting task asks for (None: no task waits).

    ``shapes``: the distinct requests of the ready and waiting tasks, which the scheduler keeps
    (``SchedulerState.waiting_shapes``; a run's tasks ask for a few): no walk of the tasks.
    """
    need: dict[str, float] | None = None
    for req in shapes:
        row = {k: float(getattr(req, k) or 0) for k in ("cores", "memory", "disk", "gpus")}
        need = row if need is None else {k: min(need[k], v) for k, v in row.items()}
    return need


def performance_columns(s: dict[str, float], state: Any, metrics: ManagerMetrics, started_us: float,
                        pending_links: int) -> None:
    """Add the derived columns to ``s`` (the manager's counters, already holding transfer times).

    ``state``: the scheduler's state (workers, tasks, blocked hosts); ``metrics``: the manager's
    task times and the µs it spent scheduling, polling in ``wait`` and on its I/O thread's CPU.
    """
    workers, blocked_hosts = state.workers, state.blocked_hosts
    waiting_min = waiting_minimum(state.waiting_shapes)
    times, busy = metrics.times, metrics.busy
    ws = list(workers.values())
    s["workers_init"] = pending_links
    s["workers_blocked"] = sum(1 for w in ws if w.hostname in blocked_hosts)
    s["workers_able"] = sum(1 for w in ws if state.placement.takes_work(w) and (waiting_min is None or _fits(w.total, waiting_min)))
    for f in ("cores", "memory", "disk"):
        values = [max(getattr(w.total, f), 0) for w in ws]
        s[f"max_{f}"] = max(values) if values else 0
        s[f"min_{f}"] = min(values) if values else 0
    s["time_execute"] = times.execute
    s["time_execute_good"] = times.execute_good
    s["time_execute_exhaustion"] = times.execute_exhaustion
    s["time_scheduling"] = busy.get("scheduling", 0)
    s["time_polling"] = metrics.polling_us()
    # The manager's own thread (its CPU time), less the scheduling and message handling counted on
    # their own (wall-clock times). A difference of two clocks' totals can fall between two rows
    # (the thread descheduled inside a timed section), and a total never goes back: so the largest
    # value so far.
    internal = max(busy.get("io_cpu", 0) - s["time_scheduling"] - s.get("time_status_msgs", 0), 0)
    busy["internal"] = max(busy["internal"], internal)
    s["time_internal"] = busy["internal"]
    elapsed = max(time.time() * 1e6 - started_us, 0)
    s["time_application"] = max(elapsed - s["time_polling"], 0)
    moved = s.get("bytes_sent_files", 0) + s.get("bytes_received_files", 0)
    moving = s.get("time_send", 0) + s.get("time_receive", 0)
    s["bandwidth"] = moved / (moving / 1e6) / 1e6 if moving > 0 else 0  # MB/s
    for key in ("time_status_msgs", "time_internal", "time_polling", "time_application", "time_scheduling",
                "time_execute", "time_execute_good", "time_execute_exhaustion"):
        s[key] = int(s.get(key, 0))  # µs, as the other time columns
    s["bandwidth"] = round(s["bandwidth"], 3)
    if times.tasks:
        per_task_overhead = max(times.transfer_us / times.tasks, 1000.0)
        capacity = (times.execute / times.tasks) / per_task_overhead
        s["capacity_tasks"] = max(int(capacity), 1)
        s["capacity_cores"] = s["capacity_tasks"] * times.cores / times.tasks
        s["capacity_memory"] = s["capacity_tasks"] * times.memory / times.tasks
        s["capacity_disk"] = s["capacity_tasks"] * times.disk / times.tasks
        s["capacity_instantaneous"] = round(times.instantaneous, 3)
        s["capacity_weighted"] = max(int(times.weighted), 1)


def _fits(total: Any, need: Mapping[str, float]) -> bool:
    return all(getattr(total, k, 0) >= v for k, v in need.items() if v and v > 0)


def manager_stats(state: SchedulerState, counters: Mapping[str, float], links: Mapping[str, Any], tasks_with_results: int,
                  logs: RunLogs, metrics: ManagerMetrics, io_thread: threading.Thread) -> dict[str, float]:
    """The manager's stats under TaskVine's names: the scheduler's counters and counts, the manager's
    own ``counters``, what the connected ``links`` sent and received, the logs' transfer totals,
    and the computed columns (:func:`performance_columns`)."""
    s = dict(state.stats)
    counts = state.counts()
    s.update(counters)
    s["workers_connected"] = len(state.workers)
    busy = sum(1 for w in state.workers.values() if w.tasks)
    s["workers_busy"] = busy
    s["workers_idle"] = len(state.workers) - busy
    s["tasks_waiting"] = counts["ready"] + counts["waiting"]
    s["tasks_on_workers"] = s["tasks_running"] = counts["dispatched"]
    s["tasks_with_results"] = tasks_with_results
    s["tasks_successful"] = s.get("tasks_succeeded", 0)
    for f in ("cores", "memory", "disk", "gpus"):
        s[f"total_{f}"] = sum(max(getattr(w.total, f), 0) for w in state.workers.values())
        s[f"committed_{f}"] = sum(max(getattr(w.committed, f), 0) for w in state.workers.values())
    s["inuse_cache"] = sum(w.cache_bytes for w in state.workers.values())
    s["time_when_started"] = logs.start_us
    s["bytes_sent"] = counters["bytes_sent"] + sum(lk.conn.bytes_sent for lk in links.values())
    s["bytes_received"] = counters["bytes_received"] + sum(lk.conn.bytes_received for lk in links.values())
    s.update(logs.transfer_totals)
    s["time_send_good"], s["time_receive_good"] = s["time_send"], s["time_receive"]  # only finished transfers are timed
    metrics.busy["io_cpu"] = max(metrics.busy["io_cpu"], io_thread_cpu_us(io_thread))  # 0 once it ended
    performance_columns(s, state, metrics, logs.start_us, int(counters["workers_init"]))
    return s


def io_thread_cpu_us(thread: threading.Thread) -> float:
    """CPU time (µs) the manager's I/O thread has used (0 where the platform cannot tell)."""
    ident = thread.ident
    if ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident)) * 1e6
    except (OSError, OverflowError):  # the thread has ended
        return 0.0


_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")


class PrometheusExporter:
    """An HTTP server answering ``/metrics`` with the manager's stats as ``vine_<stat>`` gauges.

    ``collect`` returns the stats (called on each scrape, from the server's thread). ``port`` 0
    picks a free port; :attr:`port` tells which. :meth:`stop` shuts the server down.
    """

    def __init__(self, port: int, collect: Callable[[], Mapping[str, Any]], address: str = "0.0.0.0") -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.core import GaugeMetricFamily
        except ImportError as exc:
            raise ManagerError(
                "Manager(prometheus_port=...) needs the prometheus_client package: "
                "pip install 'core-vine[metrics]' (or pip install prometheus_client)") from exc
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"prometheus_port must be a TCP port number 0..65535 (0: any free port), not {port!r}")
        gauge = GaugeMetricFamily

        class _StatsCollector:
            # A custom collector: every scrape reads the stats afresh, nothing to keep in sync.
            def collect(self) -> Iterator[Any]:
                # Every performance-log column is a gauge from the first scrape on, 0 until it counts.
                stats = dict.fromkeys(PERFORMANCE_COLUMNS[1:], 0)
                stats.update(collect())
                for name, value in sorted(stats.items()):
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                        continue
                    metric = "vine_" + _METRIC_NAME.sub("_", name)
                    yield gauge(metric, f"TaskVine manager stat {name}", value=float(value))

        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_StatsCollector())
        try:
            self._server, self._thread = start_http_server(port, addr=address, registry=self._registry)
        except OSError as exc:
            raise ManagerError(f"cannot serve Prometheus metrics on port {port}: {exc}; "
                               "choose another prometheus_port, or 0 for any free one") from exc

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class ManagerMetrics:
    """The manager's measurements beyond the scheduler's counters (one per manager, I/O thread).

    Holds the finished tasks' times (:class:`TaskTimes`), per-category mean execution times for the
    slow-worker check, when each running task was first seen on its worker, the time spent
    scheduling and in ``wait``, and the Prometheus exporter if one was asked for.
    """

    def __init__(self) -> None:
        self.times = TaskTimes()
        self.busy: dict[str, float] = {"scheduling": 0.0, "polling": 0.0, "io_cpu": 0.0, "internal": 0.0}
        self._category_runs: dict[str, list[float]] = {}  # category -> [successful runs, total seconds]
        self._seen_running: dict[int, dict[str, float]] = {}  # task id -> worker id -> first seen running there
        self._waiting: dict[int, float] = {}  # thread id -> perf_counter() when its wait began
        self.exporter: PrometheusExporter | None = None

    def polling_began(self) -> int:
        """Before one of the program's waits in ``wait()``: time_polling, counted while it lasts too.
        Returns the key to give :meth:`polling_ended` after it (in a ``finally``). Two plain calls,
        not a context manager: a generator-based one cost a few µs per wait, once per finished task."""
        key = threading.get_ident()
        self._waiting[key] = time.perf_counter()
        return key

    def polling_ended(self, key: int) -> None:
        began = self._waiting.pop(key, None)
        if began is not None:
            self.busy["polling"] += (time.perf_counter() - began) * 1e6

    def polling_us(self) -> float:
        """µs spent in ``wait()`` so far, including waits still going on."""
        now = time.perf_counter()
        return self.busy["polling"] + sum((now - began) * 1e6 for began in list(self._waiting.values()))

    def task_returned(self, task: Task, result: int, transfer_us: float) -> None:
        self.times.add(task, result, transfer_us)
        if result == C.VINE_RESULT_SUCCESS:
            last = float(task.metrics.get("time_workers_execute_last", 0) or 0) / 1e6
            if last > 0:
                runs = self._category_runs.setdefault(task.category, [0, 0.0])
                runs[0] += 1
                runs[1] += last
        self._seen_running.pop(task.id, None)  # by id: a scan of every running task per return cost O(running)

    def category_means(self, min_samples: int) -> dict[str, float]:
        """Mean execution time (s) of each category with at least ``min_samples`` successful tasks."""
        return {c: total / n for c, (n, total) in self._category_runs.items() if n >= min_samples}

    def started_at(self, tid: int, wid: str, now: float) -> float:
        """When task ``tid`` was first seen running on ``wid`` (at the ticker's resolution)."""
        return self._seen_running.setdefault(tid, {}).setdefault(wid, now)

    def start_exporter(self, port: int, collect: Callable[[], Mapping[str, Any]]) -> None:
        self.exporter = PrometheusExporter(port, collect)

    def stop(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
