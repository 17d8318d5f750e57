"""Run-info directories and the four TaskVine logs: debug, transactions, performance, taskgraph.

Layout: ``<run_info_path>/<timestamp>/vine-logs/{debug,transactions,performance,taskgraph}`` with a
``most-recent`` link to the latest run. Sizes in the transactions log are bytes, and its header says so.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from typing import Any, TextIO

PERFORMANCE_COLUMNS = (
    "timestamp workers_connected workers_init workers_idle workers_busy workers_able workers_joined workers_removed "
    "workers_released workers_idled_out workers_blocked workers_slow workers_lost "
    "tasks_waiting tasks_on_workers tasks_running tasks_with_results tasks_submitted tasks_dispatched tasks_done "
    "tasks_failed tasks_successful tasks_cancelled tasks_exhausted_attempts tasks_recovery "
    "time_send time_receive time_send_good time_receive_good time_status_msgs time_internal time_polling "
    "time_application time_scheduling time_execute time_execute_good time_execute_exhaustion "
    "bytes_sent bytes_received bandwidth "
    "capacity_tasks capacity_cores capacity_memory capacity_disk capacity_instantaneous capacity_weighted "
    "total_cores total_memory total_disk committed_cores committed_memory committed_disk "
    "max_cores max_memory max_disk min_cores min_memory min_disk inuse_cache"
).split()


UNITS = {"cores": "cores", "memory": "MB", "disk": "MB", "gpus": "gpus", "wall_time": "s", "cpu_time": "s", "max_concurrent_processes": "procs"}


def _res_json(res: dict[str, float]) -> str:
    return _res_json_items(tuple((k, v) for k, v in res.items() if v is not None and v >= 0))


@functools.lru_cache(maxsize=1024)
def _res_json_items(items: tuple[tuple[str, float], ...]) -> str:
    # Most tasks of a run ask for the same few shapes: format each shape once.
    return json.dumps({k: [v, UNITS.get(k, "")] for k, v in items}, separators=(",", ":"))


class RunLogs:
    """Open log files of one manager run.

    Writes are buffered and flushed by the manager's ticker (every 0.5 s) and at close: a
    line-buffered log costs a write system call per record, a third of a tiny task's manager time.
    """

    def __init__(self, run_info_path: str, template: str | None = None) -> None:
        stamp = time.strftime(template or "%Y-%m-%dT%H%M%S")
        base = os.path.abspath(run_info_path)
        run_dir = os.path.join(base, stamp)
        n = 1
        while os.path.exists(run_dir):  # two managers started within one second
            n += 1
            run_dir = os.path.join(base, f"{stamp}.{n}")
        self.run_dir = run_dir
        self.log_dir = os.path.join(run_dir, "vine-logs")
        self.staging_dir = os.path.join(run_dir, "staging")
        os.makedirs(self.log_dir)
        for sub in ("outputs", "arguments", "functions"):
            os.makedirs(os.path.join(self.staging_dir, sub), exist_ok=True)
        link = os.path.join(base, "most-recent")
        try:
            tmp = f"{link}.{os.getpid()}"
            os.symlink(os.path.basename(run_dir), tmp)
            os.replace(tmp, link)
        except OSError:
            pass
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self.start_us = _now_us()
        self._debug = self._open("debug")
        self._tx = self._open("transactions")
        self._perf = self._open("performance")
        self._graph = self._open("taskgraph")
        self._tx.write(
            "# time manager_pid MANAGER manager_pid START|END time_from_origin\n"
            "# time manager_pid WORKER worker_id CONNECTION host:port\n"
            "# time manager_pid WORKER worker_id DISCONNECTION (UNKNOWN|IDLE_OUT|FAST_ABORT|FAILURE|STATUS_WORKER|EXPLICIT|XFER_ERRORS)\n"
            "# time manager_pid WORKER worker_id RESOURCES {resources}\n"
            "# time manager_pid WORKER worker_id CACHE_UPDATE filename size_in_bytes wall_time_us start_time_us\n"
            "# time manager_pid WORKER worker_id TRANSFER (INPUT|OUTPUT) filename size_in_bytes wall_time_us start_time_us\n"
            "# time manager_pid TASK task_id READY category FIRST_RESOURCES|MAX_RESOURCES attempt {resources_requested}\n"
            "# time manager_pid TASK task_id RUNNING worker_id FIRST_RESOURCES|MAX_RESOURCES {resources_allocated}\n"
            "# time manager_pid TASK task_id WAITING_RETRIEVAL worker_id\n"
            "# time manager_pid TASK task_id RETRIEVED RESULT exit_code {limits_exceeded} {resources_measured}\n"
            "# time manager_pid TASK task_id DONE RESULT exit_code\n"
            "# time manager_pid APPLICATION text\n"
        )
        self._perf.write("# " + " ".join(PERFORMANCE_COLUMNS) + "\n")
        self._graph.write("# taskvine taskgraph version 2\n")
        self.transaction(f"MANAGER {self.pid} START 0")
        self._last_perf = 0.0
        self._last_perf_row: tuple[Any, ...] | None = None

    def _open(self, name: str) -> TextIO:
        return open(os.path.join(self.log_dir, name), "a", buffering=1 << 16)

    def _write(self, fh: TextIO, text: str) -> None:
        # The I/O thread and the user's threads (declarations, log_*_app) both write: one lock.
        with self._lock:
            if not fh.closed:
                fh.write(text)

    def flush(self) -> None:
        with self._lock:
            for fh in (self._debug, self._tx, self._perf, self._graph):
                if not fh.closed:
                    fh.flush()

    def debug(self, msg: str, flag: str = "vine") -> None:
        t = time.time()
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(t)) + f".{int(t * 100) % 100:02d}"
        self._write(self._debug, f"{stamp} vine_manager[{self.pid}]{flag}: {msg}\n")

    def transaction(self, record: str) -> None:
        self._write(self._tx, f"{_now_us()} {self.pid} {record}\n")

    def worker_connected(self, wid: str, addr: str, resources: dict[str, float]) -> None:
        self.transaction(f"WORKER {wid} CONNECTION {addr}")
        self.transaction(f"WORKER {wid} RESOURCES {_res_json(resources)}")

    def worker_disconnected(self, wid: str, reason: str) -> None:
        self.transaction(f"WORKER {wid} DISCONNECTION {reason}")

    def cache_update(self, wid: str, name: str, size: int, wall_us: int = 0, start_us: int = 0) -> None:
        self.transaction(f"WORKER {wid} CACHE_UPDATE {name} {size} {wall_us} {start_us}")

    def transfer(self, wid: str, direction: str, name: str, size: int, wall_us: int, start_us: int) -> None:
        self.transaction(f"WORKER {wid} TRANSFER {direction} {name} {size} {wall_us} {start_us}")

    def task_ready(self, tid: int, category: str, attempt: int, requested: dict[str, float]) -> None:
        self.transaction(f"TASK {tid} READY {category} FIRST_RESOURCES {attempt} {_res_json(requested)}")

    def task_running(self, tid: int, wid: str, alloc: dict[str, float]) -> None:
        self.transaction(f"TASK {tid} RUNNING {wid} FIRST_RESOURCES {_res_json(alloc)}")

    def task_retrieved(self, tid: int, result: str, exit_code: int, measured: dict[str, float], wid: str = "",
                       limits: dict[str, float] | None = None) -> None:
        self.transaction(f"TASK {tid} WAITING_RETRIEVAL {wid}" if wid else f"TASK {tid} WAITING_RETRIEVAL")
        exceeded = _res_json(limits) if limits else "{}"
        self.transaction(f"TASK {tid} RETRIEVED {result} {exit_code} {exceeded} {_res_json(measured)}")

    def task_done(self, tid: int, result: str, exit_code: int) -> None:
        self.transaction(f"TASK {tid} DONE {result} {exit_code}")

    def graph_file(self, name: str, source: str, size: int) -> None:
        self._write(self._graph, f'FILE {name} "{source}" {size}\n')

    def graph_task(self, tid: int, command: str, inputs: list[str], outputs: list[str]) -> None:
        first = command.split()[0] if command.split() else ""
        # No empty fields: a task without inputs reads `INPUTS OUTPUTS x`, never a double space.
        self._write(self._graph, " ".join([f'TASK T{tid} "{first}" INPUTS', *inputs, "OUTPUTS", *outputs]) + "\n")

    def performance(self, stats: dict[str, float], now: float, interval: float, force: bool = False) -> None:
        if not force and now - self._last_perf < interval:
            return
        row = tuple(stats.get(c, 0) for c in PERFORMANCE_COLUMNS[1:])
        if row == self._last_perf_row and not force:
            return
        self._last_perf = now
        self._last_perf_row = row
        self._write(self._perf, f"{_now_us()} " + " ".join(_fmt(v) for v in row) + "\n")

    def close(self, stats: dict[str, float]) -> None:
        self.performance(stats, time.time(), 0, force=True)
        self.transaction(f"MANAGER {self.pid} END {_now_us() - self.start_us}")
        self._write(self._graph, "# end\n")
        with self._lock:
            for fh in (self._debug, self._tx, self._perf, self._graph):
                fh.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _now_us() -> int:
    return int(time.time() * 1e6)
