"""Two ``vine_benchmark`` rows, each measured next to its floor in the same run.

``chain_rate(length)``: ``length`` command tasks on one single-core worker, each reading the
previous task's temp output and writing its own (``read x < prev; echo $((x+1)) > out``: shell
builtins only, so every task is one ``/bin/sh`` and nothing else). Its floor is the same commands
run one after another by ``sh -c`` in one directory: a chain cannot run two links at once, so
the floor is sequential. The last temp is fetched and checked.

``queue_memory(n)``: ``n`` ``Task("true")`` (1 core each) created and submitted to a manager with
no workers, in a fresh interpreter: manager memory per queued task (RSS growth, and what
``tracemalloc`` counts when asked) and submits per second (the user's loop: ``Task()``,
``set_cores``, ``submit``). Its floor is the same loop appending ``(id, "true", 1.0)`` tuples to a
dict: what holding a command and a number per task costs in Python at all. The row also gives
the CPU each task cost the submitting thread and the manager's I/O thread (``submit_cpu_us``,
``io_cpu_us``: on a shared machine the rates follow the load, these much less) and the time the
cyclic garbage collector took in both (``gc_us``).

Run ``python -m core.tools.bench_core chain|queue-mem [-n N]``; ``vine_benchmark`` runs them too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import core as vine

CHAIN_COMMAND = "read x < prev; echo $((x+1)) > out"
CHAIN_FIRST = "echo 0 > out"


def _chain_floor(length: int) -> float:
    """Links per second of the same commands, ``sh -c`` one at a time in one directory."""
    tmp = tempfile.mkdtemp(prefix="vine-chain-floor-")
    try:
        start = time.perf_counter()
        for i in range(length):
            if i:
                os.replace(os.path.join(tmp, "out"), os.path.join(tmp, "prev"))
            subprocess.run(["sh", "-c", CHAIN_FIRST if i == 0 else CHAIN_COMMAND], cwd=tmp, check=True)
        elapsed = time.perf_counter() - start
        with open(os.path.join(tmp, "out")) as fh:
            if fh.read().strip() != str(length - 1):
                raise RuntimeError("chain floor produced a wrong result")
        return length / elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def chain_rate(length: int = 300) -> dict[str, Any]:
    """A chain of ``length`` temp-linked command tasks against its sequential ``sh -c`` floor."""
    from core.tools.bench_cluster import drain as _drain
    from core.tools.bench_cluster import local_cluster

    with local_cluster(1, cores=1) as m:
        start = time.perf_counter()
        prev = None
        for i in range(length):
            out = m.declare_temp()
            t = vine.Task(CHAIN_FIRST if prev is None else CHAIN_COMMAND)
            if prev is not None:
                t.add_input(prev, "prev")
            t.add_output(out, "out")
            t.set_cores(1)
            m.submit(t)
            prev = out
        _drain(m)
        elapsed = time.perf_counter() - start
        assert prev is not None
        last = m.fetch_file(prev).strip()
        if last != str(length - 1):
            raise RuntimeError(f"chain produced {last!r}, expected {length - 1}")
        sent = m.stats.bytes_sent
    rate = length / elapsed
    floor = _chain_floor(length)
    return {"workload": "chain", "length": length, "tasks_per_s": round(rate, 1), "manager_bytes_sent": sent,
            "floor": "the same commands, sh -c one at a time", "floor_tasks_per_s": round(floor, 1),
            "ratio": round(rate / floor, 3)}


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _queue_child(n: int, trace: bool) -> dict[str, Any]:
    """In a fresh interpreter: the floor loop, then ``n`` queued tasks; memory and rates of each."""
    import tracemalloc

    # Floor: the same loop holding only what a task must (id, command, cores) in a dict.
    gc.collect()
    base = _rss()
    start = time.perf_counter()
    plain: dict[int, tuple[int, str, float]] = {}
    for i in range(1, n + 1):
        plain[i] = (i, "true", 1.0)
    floor_rate = n / (time.perf_counter() - start)
    gc.collect()
    floor_bytes = (_rss() - base) / n
    del plain
    gc.collect()

    tmp = tempfile.mkdtemp(prefix="vine-queue-")
    m = vine.Manager(port=0, run_info_path=os.path.join(tmp, "vine-run-info"))
    try:
        m._call(lambda: None)  # the I/O thread is up and idle
        gc.collect()
        base = _rss()
        if trace:
            tracemalloc.start()
        io_cpu = m._call(time.thread_time)  # the I/O thread's CPU clock, read in that thread
        collections = {"n": 0, "s": 0.0, "at": 0.0}

        def collector(phase: str, info: dict[str, Any]) -> None:  # the cyclic collector's time, in both threads
            if phase == "start":
                collections["at"] = time.perf_counter()
            else:
                collections["n"] += 1
                collections["s"] += time.perf_counter() - collections["at"]

        gc.callbacks.append(collector)
        start, cpu = time.perf_counter(), time.thread_time()
        for _ in range(n):
            t = vine.Task("true")
            t.set_cores(1)
            m.submit(t)
        submit_s, submit_cpu = time.perf_counter() - start, time.thread_time() - cpu
        io_cpu = m._call(time.thread_time, timeout=600) - io_cpu  # after every TaskSubmitted was applied
        absorbed_s = time.perf_counter() - start
        gc.callbacks.remove(collector)
        traced = tracemalloc.get_traced_memory()[0] / n if trace else None
        if trace:
            tracemalloc.stop()
        gc.collect()
        per_task = (_rss() - base) / n
        queued = m.stats.tasks_waiting
        if queued != n:
            raise RuntimeError(f"{queued} tasks waiting, expected {n}")
    finally:
        m.close()
        shutil.rmtree(tmp, ignore_errors=True)
    row: dict[str, Any] = {
        "workload": "queue-mem", "tasks": n, "bytes_per_task": round(per_task), "submits_per_s": round(n / submit_s),
        "queued_per_s": round(n / absorbed_s),
        # CPU per task, which a busy machine does not inflate as it does the rates: the submitting
        # thread (Task, set_cores, submit), the I/O thread (applying TaskSubmitted), and the wall
        # time the cyclic collector took in both (included in the two).
        "submit_cpu_us": round(submit_cpu / n * 1e6, 2), "io_cpu_us": round(io_cpu / n * 1e6, 2),
        "gc_us": round(collections["s"] / n * 1e6, 2), "gc_runs": collections["n"],
        "floor": "dict of (id, command, cores) tuples", "floor_bytes_per_task": round(floor_bytes),
        "floor_per_s": round(floor_rate),
    }
    if traced is not None:
        row["traced_bytes_per_task"] = round(traced)
    return row


def queue_memory(n: int = 200_000, trace: bool = False) -> dict[str, Any]:
    """Manager memory per queued task and submits/s, measured in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-m", "core.tools.bench_core", "_queue_child", "-n", str(n)]
                         + (["--trace"] if trace else []), capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"queue-mem child failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", default=["chain", "queue-mem"], help="chain, queue-mem")
    p.add_argument("-n", type=int, default=0, help="chain length (default 300) or queued tasks (default 200,000)")
    p.add_argument("--trace", action="store_true", help="queue-mem: also count memory with tracemalloc (slower)")
    args = p.parse_args(argv)
    for w in args.workloads:
        if w == "chain":
            row = chain_rate(args.n or 300)
        elif w == "queue-mem":
            row = queue_memory(args.n or 200_000, args.trace)
        elif w == "_queue_child":
            row = _queue_child(args.n or 200_000, args.trace)
        else:
            p.error(f"unknown workload {w!r}; choose from chain, queue-mem")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
