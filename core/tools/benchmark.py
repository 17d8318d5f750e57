"""``vine_benchmark``: named workloads on local workers, printed as JSON with peer ratios.

Workloads:
  std      N x Task("true") on one worker, next to a plain loop spawning ``sh -c true`` two at a time.
  queue    per-task scheduling cost with 1,000 .. 100,000 tasks queued (pure scheduler, and end to end).
  fanout   one 32 MiB input used by tasks on 4 workers: bytes the manager sent vs bytes moved peer to peer.
  chain    --chain-length (300) command tasks linked by temp files, next to the same commands run by
           sh -c one at a time (core/tools/bench_core.py).
  chain-append  the older chain row: 200 tasks appending to the previous output (checks the content).
  python   PythonTasks (fork server) next to ProcessPoolExecutor(max_tasks_per_child=1) and the bare
           fork-per-call floor.
  python-cpu  600 PythonTasks: CPU ms per task by process (manager, worker, fork server, forked
           children) and the minor (copy-on-write) faults per task of the fork server and of a child.
  funcall  FunctionCalls to a warm direct-mode library next to a warm ProcessPoolExecutor
           (funcall-fork: fork mode, also next to the fork-per-call floor).
  queue-mem  --queue-tasks (200,000) Task("true") queued with no worker: manager bytes per task and
           submits/s, next to a dict of (id, command, cores) tuples filled by the same loop.

Benchmarks never run inside the tests: a timed assertion on a shared 2-core machine is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import core as vine
from core.api.specs import task_spec
from core.state.resources import Resources
from core.state.scheduler import Dispatch, SchedulerState, TaskFinished, TasksRetrieved, TaskSubmitted, WorkerJoined
from core.tools.bench_cluster import drain as _drain
from core.tools.bench_cluster import local_cluster


def bench_std(n: int) -> dict[str, Any]:
    with local_cluster(1, cores=2) as m:
        start = time.perf_counter()
        for _ in range(n):
            t = vine.Task("true")
            t.set_cores(1)
            m.submit(t)
        _drain(m)
        vine_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda _i: subprocess.run(["sh", "-c", "true"], check=True), range(n)))
    loop_rate = n / (time.perf_counter() - start)
    return {"workload": "std", "tasks": n, "tasks_per_s": round(vine_rate, 1),
            "peer": "loop spawning sh -c true two at a time", "peer_tasks_per_s": round(loop_rate, 1),
            "ratio": round(vine_rate / loop_rate, 3)}


def _scheduler_cost(queued: int, cycles: int = 2000) -> float:
    """Microseconds per dispatch+completion with ``queued`` tasks waiting, in the pure scheduler."""
    state = SchedulerState()
    state.handle(WorkerJoined(0.0, "w1", "h", "h:1", Resources(2, 4000, 8000, 0)))
    for i in range(1, queued + 1):
        t = vine.Task("true")
        t.set_cores(1)
        t._id = i
        state.handle(TaskSubmitted(0.0, task_spec(t)))
    running = [tid for tid, rec in state.tasks.items() if rec.state == "dispatched"]
    cycles = min(cycles, queued - len(running))
    start = time.perf_counter()
    for _ in range(cycles):
        tid = running.pop(0)
        for ins in state.handle(TaskFinished(0.0, "w1", tid, 0, 0)):
            if isinstance(ins, Dispatch):
                running.append(ins.task_id)
        state.handle(TasksRetrieved(0.0, (tid,)))
    return (time.perf_counter() - start) / cycles * 1e6


def bench_queue(sizes: list[int], sample: int = 1000) -> dict[str, Any]:
    rows = []
    for size in sizes:
        us = _scheduler_cost(size)
        measured = min(sample, size - 100)
        with local_cluster(0) as m:
            for _ in range(size):
                t = vine.Task("true")
                t.set_cores(1)
                m.submit(t)
            proc = subprocess.Popen([sys.executable, "-m", "core.worker", "--cores", "2", "--memory", "4000", "--disk", "8000",
                                     "--single-shot", "--parent-death", "localhost", str(m.port)], stdout=subprocess.DEVNULL)
            try:
                done = 0
                start = None
                while done < measured + 50:
                    t = m.wait(30)
                    if t is None:
                        raise RuntimeError("queue benchmark stalled")
                    done += 1
                    if done == 50:  # skip worker start-up
                        start = time.perf_counter()
                rate = measured / (time.perf_counter() - start)  # type: ignore[operator]
                m.cancel_all()
            finally:
                proc.kill()
                proc.wait()
        rows.append({"queued": size, "scheduler_us_per_task": round(us, 1), "end_to_end_tasks_per_s": round(rate, 1)})
    flat = rows[-1]["scheduler_us_per_task"] / max(rows[0]["scheduler_us_per_task"], 1e-9)
    return {"workload": "queue", "rows": rows, "cost_ratio_largest_vs_smallest_queue": round(flat, 2)}


def bench_fanout(size_mb: int = 32, workers: int = 4, tasks: int = 8) -> dict[str, Any]:
    """One shared input used by tasks on every worker: how many copies did the manager send?"""
    tmp = tempfile.mkdtemp(prefix="vine-fanout-")
    path = os.path.join(tmp, "shared.bin")
    with open(path, "wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(1 << 20))
    try:
        with local_cluster(workers, cores=1) as m:
            f = m.declare_file(path, cache="workflow")
            start = time.perf_counter()
            for _ in range(tasks):
                t = vine.Task("wc -c < shared.bin")
                t.add_input(f, "shared.bin")
                t.set_cores(1)
                m.submit(t)
            _drain(m)
            elapsed = time.perf_counter() - start
            s = m.stats
            size = os.path.getsize(path)
            return {"workload": "fanout", "input_mb": size_mb, "workers": workers, "tasks": tasks,
                    "manager_copies_sent": round(s.bytes_sent_files / size, 2),
                    "peer_copies": round(s.bytes_peer / size, 2), "peer_transfers": s.peer_transfers,
                    "seconds": round(elapsed, 2)}
    finally:
        subprocess.run(["rm", "-rf", tmp], check=False)


def bench_chain(length: int = 200, workers: int = 1) -> dict[str, Any]:
    """Tasks linked by temp files: each appends to the previous one's output, which never leaves the workers."""
    with local_cluster(workers, cores=1) as m:
        start = time.perf_counter()
        prev = None
        for i in range(length):
            out = m.declare_temp()
            t = vine.Task(f"{{ cat prev 2>/dev/null; echo {i}; }} > out")
            if prev is not None:
                t.add_input(prev, "prev")
            t.add_output(out, "out")
            m.submit(t)
            prev = out
        _drain(m)
        elapsed = time.perf_counter() - start
        last = m.fetch_file(prev).split()
        assert last == [str(i) for i in range(length)], "chain produced a wrong result"
        return {"workload": "chain", "length": length, "seconds": round(elapsed, 2), "tasks_per_s": round(length / elapsed, 1),
                "manager_bytes_sent": m.stats.bytes_sent}


WORKLOADS = ("std", "queue", "queue-mem", "fanout", "chain", "chain-append", "python", "python-cpu", "funcall", "funcall-fork")
# Adapter workloads live next to their peers: core/tools/bench_dask.py and bench_parsl.py each define
# WORKLOADS (names starting "dask" / "parsl") and run(name, args) -> list of JSON-able dicts.
ADAPTER_MODULES = {"dask": "core.tools.bench_dask", "parsl": "core.tools.bench_parsl"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vine_benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", default=["std"], help=f"any of {', '.join(WORKLOADS)} (default std)")
    p.add_argument("-n", "--tasks", type=int, default=2000)
    p.add_argument("--sizes", default="1000,10000,100000", help="queue lengths for the queue workload")
    p.add_argument("--chain-length", type=int, default=300, help="links of the chain workload")
    p.add_argument("--queue-tasks", type=int, default=200_000, help="tasks queued by queue-mem (1000000 works)")
    p.add_argument("--trace", action="store_true", help="queue-mem: also count the bytes tracemalloc sees (slower)")
    p.add_argument("--repeat", type=int, default=1, help="core workloads: run each this many times (its floor right after it each time) and print the run of median ratio, with every run's ratio (run_figures); adapter workloads: best time of this many runs per peer")
    p.add_argument("--vs", default="", help="adapter workloads: comma-separated peers to run too (default: all the workload knows)")
    p.add_argument("--table", action="store_true",
                   help="after the JSON rows, the speed rows as one Markdown table next to their goals (core/tools/bench_table.py)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, not {args.repeat}")
    out = []
    for w in args.workloads:
        adapter = next((mod for prefix, mod in ADAPTER_MODULES.items() if w.startswith(prefix)), None)
        if adapter is not None:
            import importlib

            for row in importlib.import_module(adapter).run(w, args):
                out.append(row)
                print(json.dumps(row), flush=True)
            continue
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
        out.append(median_run([_core_row(w, args) for _ in range(args.repeat)]))
        print(json.dumps(out[-1]), flush=True)
    if args.table:
        from core.tools.bench_table import table

        print(table(out) or "(none of these workloads has a goal row)", flush=True)
    return 0


def _core_row(w: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run of core workload ``w`` (its own rate and, where it has one, its floor's)."""
    if w == "std":
        return bench_std(args.tasks)
    if w in ("python", "python-cpu", "funcall", "funcall-fork"):
        from core.tools import bench_python

        if w == "python":
            return bench_python.python_rate(300)
        if w == "python-cpu":
            return bench_python.python_cpu(600)
        return bench_python.funcall_rate(4000 if w == "funcall" else 1000, exec_mode="fork" if w == "funcall-fork" else "direct")
    if w == "fanout":
        return bench_fanout()
    if w == "chain":
        from core.tools import bench_core

        return bench_core.chain_rate(args.chain_length)
    if w == "chain-append":
        return bench_chain()
    if w == "queue-mem":
        from core.tools import bench_core

        return bench_core.queue_memory(args.queue_tasks, args.trace)
    return bench_queue([int(x) for x in args.sizes.split(",")])


def _median_key(row: dict[str, Any]) -> float:
    """The figure a row's runs are ranked by: python-cpu's CPU a task (what that row is for), else
    the ratio to its floor (the fork floor's where it has one), else queue-mem's submits/s, a rate,
    queue's cost growth, or a time (fanout)."""
    cpu = row.get("cpu_ms_per_task")
    if isinstance(cpu, dict) and isinstance(cpu.get("total"), (int, float)):
        return float(cpu["total"])
    for field in ("fork_floor_ratio", "ratio", "submits_per_s", "tasks_per_s", "cost_ratio_largest_vs_smallest_queue", "seconds"):
        if isinstance(row.get(field), (int, float)):
            return float(row[field])
    return 0.0


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Of ``runs`` (each one run of a row, its floor measured right after it), the run whose figure
    is the median, whole, plus every run's figure (``runs``, ``run_figures``, sorted). A single
    run's ratio on a shared machine is as much the machine's speed at that minute as ours (the
    floor of ``std`` moved between 690 and 2,400/s within a session): the median of several
    back-to-back pairs is the figure to compare with a goal."""
    if len(runs) == 1:
        return runs[0]
    ranked = sorted(runs, key=_median_key)
    row = dict(ranked[(len(ranked) - 1) // 2])  # the lower median: an even count does not round up
    row["runs"] = len(runs)
    row["run_figures"] = [round(_median_key(r), 3) for r in ranked]
    return row


if __name__ == "__main__":
    sys.exit(main())
