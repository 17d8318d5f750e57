"""PythonTask and FunctionCall throughput, each next to its ProcessPoolExecutor peer on the same cores.

``python_rate(n, workers)``: ``n`` PythonTasks of a trivial function (1 core each) on ``workers``
local workers sharing this machine's cores, against ``ProcessPoolExecutor(max_workers=cores,
max_tasks_per_child=1)``, which also gives every call a fresh process (TaskVine starts a new
interpreter per PythonTask).

``funcall_rate(n, workers)``: ``n`` FunctionCalls to a library with one single-slot ``direct``
instance per core (``exec_mode="fork"`` is available too), against a warm
``ProcessPoolExecutor(max_workers=cores)``: the same number of processes, already started.

Both return a dict with the two rates and their ratio. ``python_cpu(n)`` (``vine_benchmark
python-cpu``) is CPU per PythonTask by process and the fork server's and a child's minor faults. Run ``python -m core.tools.bench_python``.
Figures from a shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import cloudpickle

import core as vine
from core.tools import bench_functions
from core.tools.bench_functions import noop

cloudpickle.register_pickle_by_value(bench_functions)  # see core/tools/bench_functions.py


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cluster(workers: int, cores_each: int) -> Any:
    from core.tools.bench_cluster import local_cluster

    return local_cluster(workers, cores=cores_each)


def _drain(m: vine.Manager, expect: int) -> None:
    got = 0
    while got < expect:
        t = m.wait(60)
        if t is None:
            raise RuntimeError(f"benchmark stalled after {got} of {expect} tasks")
        if t.result != "success" or isinstance(t.output, BaseException):
            raise RuntimeError(f"benchmark task {t.id} failed: {t.result}: {t.output!r}")
        got += 1


# The peer runs in its own interpreter whose main module is this string, calling a builtin: its
# processes import nothing of ours, which is the pool's best case (a spawned child re-imports the
# parent's main module, and ours imports core).
_PEER = """
import concurrent.futures, multiprocessing, sys, time
n, cores, fresh, context = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
kw = {"max_tasks_per_child": 1} if fresh else {}
if context != "default":
    kw["mp_context"] = multiprocessing.get_context(context)
if __name__ == "__main__":
    with concurrent.futures.ProcessPoolExecutor(cores, **kw) as pool:
        if not fresh:
            list(pool.map(abs, range(cores * 4)))
        start = time.perf_counter()
        futs = [pool.submit(abs, -i) for i in range(n)]
        for f in futs:
            f.result()
        print(n / (time.perf_counter() - start))
"""


# The floor for a process per task: a warm interpreter (cloudpickle and core's runner loaded, as
# our fork server has) forking one child per call, ``cores`` at a time; each child runs the call
# and sends its pickled result back through a pipe. Nothing else: no sandbox, no messages.
_FORK_FLOOR = """
import os, sys, time, selectors, pickle
import cloudpickle, core.wire.remote
n, cores = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
running, done, started = {}, 0, 0
start = time.perf_counter()
while done < n:
    while started < n and len(running) < cores:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, pickle.dumps(abs(-started)))
            os._exit(0)
        os.close(w)
        running[r] = pid
        sel.register(r, selectors.EVENT_READ)
        started += 1
    for key, _ in sel.select():
        r = key.fd
        while os.read(r, 65536):
            pass
        sel.unregister(r)
        os.close(r)
        os.waitpid(running.pop(r), 0)
        done += 1
print(n / (time.perf_counter() - start))
"""


def _fork_floor_rate(n: int, cores: int) -> float:
    """Calls per second of the bare fork-per-call floor (``_FORK_FLOOR``) in a clean interpreter."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    out = subprocess.run([sys.executable, "-c", _FORK_FLOOR, str(n), str(cores)], capture_output=True, text=True,
                         timeout=600, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def _pool_rate(n: int, cores: int, fresh: bool, context: str = "default") -> float:
    """Calls per second of a ProcessPoolExecutor (fresh: a new process per call) in a clean interpreter."""
    out = subprocess.run([sys.executable, "-c", _PEER, str(n), str(cores), "1" if fresh else "0", context],
                         capture_output=True, text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def python_rate(n: int = 300, workers: int = 1) -> dict[str, Any]:
    """PythonTasks per second vs ProcessPoolExecutor(max_tasks_per_child=1) on the same cores."""
    cores = _cores()
    with _cluster(workers, max(1, cores // workers)) as m:
        warm = [vine.PythonTask(noop, i) for i in range(workers * 2)]  # starts each worker's fork server
        for t in warm:
            t.set_cores(1)
            m.submit(t)
        _drain(m, len(warm))
        start = time.perf_counter()
        for i in range(n):
            t = vine.PythonTask(noop, i)
            t.set_cores(1)
            m.submit(t)
        _drain(m, n)
        rate = n / (time.perf_counter() - start)
    peer = _pool_rate(max(50, n // 4), cores, fresh=True)
    # Also the pool's best case for fresh processes: forked from its own fork server, as ours are.
    forkserver_peer = _pool_rate(max(50, n // 2), cores, fresh=True, context="forkserver")
    floor = _fork_floor_rate(max(200, n), cores)
    return {"workload": "python", "tasks": n, "workers": workers, "cores": cores, "tasks_per_s": round(rate, 1),
            "peer": f"ProcessPoolExecutor({cores}, max_tasks_per_child=1)", "peer_tasks_per_s": round(peer, 1),
            "ratio": round(rate / peer, 3), "forkserver_peer_tasks_per_s": round(forkserver_peer, 1),
            "forkserver_ratio": round(rate / forkserver_peer, 3),
            "fork_floor_tasks_per_s": round(floor, 1), "fork_floor_ratio": round(rate / floor, 3)}


def _proc_totals(worker: Any) -> dict[str, float]:
    """CPU seconds and minor faults of a worker, its fork server(s) and what they reaped (psutil, /proc)."""
    import psutil

    c = worker.cpu_times()
    out = {"worker": c.user + c.system, "fork server": 0.0, "forked children": 0.0, "server_faults": 0.0, "child_faults": 0.0}
    for ch in worker.children():
        try:
            if "core.worker.forkserver" not in " ".join(ch.cmdline()):
                continue
            cc = ch.cpu_times()
            with open(f"/proc/{ch.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (psutil.Error, OSError):
            continue
        out["fork server"] += cc.user + cc.system
        out["forked children"] += cc.children_user + cc.children_system
        out["server_faults"] += int(fields[7])  # minflt: this process's own minor faults
        out["child_faults"] += int(fields[8])  # cminflt: its reaped children's
    return out


def python_cpu(n: int = 600) -> dict[str, Any]:
    """CPU per PythonTask by process (manager, worker, fork server, forked children) and the minor
    (copy-on-write) faults per task of the fork server and of a child, on one worker x all cores.

    CPU per task is steadier than a rate on a shared machine; the faults are what a fork costs on
    top of its page tables (each page the child or the server writes after a fork is copied).
    """
    import resource

    import psutil

    def own_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    with _cluster(1, _cores()) as m:
        warm = [vine.PythonTask(noop, i) for i in range(4)]  # starts the fork server
        for t in warm:
            m.submit(t)
        _drain(m, len(warm))
        workers = [p for p in psutil.Process().children() if "core.worker" in " ".join(p.cmdline())]
        if len(workers) != 1:
            raise RuntimeError(f"expected one worker process, found {len(workers)}")
        before, mgr0, start = _proc_totals(workers[0]), own_cpu(), time.perf_counter()
        for i in range(n):
            m.submit(vine.PythonTask(noop, i))
        _drain(m, n)
        elapsed = time.perf_counter() - start
        after, mgr1 = _proc_totals(workers[0]), own_cpu()
    per = {k: (after[k] - before[k]) / n for k in before}
    ms = {"manager process": round((mgr1 - mgr0) / n * 1e3, 3)}
    ms.update({k: round(per[k] * 1e3, 3) for k in ("worker", "fork server", "forked children")})
    ms["total"] = round(sum(ms.values()), 3)
    return {"workload": "python-cpu", "tasks": n, "tasks_per_s": round(n / elapsed, 1), "cpu_ms_per_task": ms,
            "minor_faults_per_task": {"fork server": round(per["server_faults"], 1), "child": round(per["child_faults"], 1)},
            "load_1min": round(os.getloadavg()[0], 2)}


def funcall_rate(n: int = 3000, workers: int = 1, exec_mode: str = "direct") -> dict[str, Any]:
    """FunctionCalls per second vs a warm ProcessPoolExecutor with as many processes as library slots."""
    cores = _cores()
    per_worker = max(1, cores // workers)
    with _cluster(workers, per_worker) as m:
        lib = m.create_library_from_functions("bench", noop, exec_mode=exec_mode)
        lib.set_cores(1)
        lib.set_function_slots(1)
        m.install_library(lib)
        warm = workers * per_worker * 2  # starts one instance per core
        for i in range(warm):
            m.submit(vine.FunctionCall("bench", "noop", i))
        _drain(m, warm)
        start = time.perf_counter()
        for i in range(n):
            m.submit(vine.FunctionCall("bench", "noop", i))
        _drain(m, n)
        rate = n / (time.perf_counter() - start)
        instances = m._call(lambda: len(m._state.libs.instances))
    peer = _pool_rate(max(n, 2000), cores, fresh=False)
    row = {"workload": "funcall", "exec_mode": exec_mode, "calls": n, "workers": workers, "library_instances": instances,
           "calls_per_s": round(rate, 1), "peer": f"warm ProcessPoolExecutor({cores})", "peer_calls_per_s": round(peer, 1),
           "ratio": round(rate / peer, 3)}
    if exec_mode == "fork":
        # A fork-mode call forks a child per call, so its floor is the bare fork-per-call loop.
        floor = _fork_floor_rate(max(200, n), cores)
        row.update(fork_floor_calls_per_s=round(floor, 1), fork_floor_ratio=round(rate / floor, 3))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_python", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", default=["python", "funcall"], help="python, python-cpu, funcall, funcall-fork")
    p.add_argument("-n", type=int, default=0, help="tasks or calls (default 300 python, 3000 funcall)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    for w in args.workloads:
        if w == "python":
            out = python_rate(args.n or 300, args.workers)
        elif w == "funcall":
            out = funcall_rate(args.n or 3000, args.workers)
        elif w == "funcall-fork":
            out = funcall_rate(args.n or 1000, args.workers, exec_mode="fork")
        elif w == "python-cpu":
            out = python_cpu(args.n or 600)
        else:
            p.error(f"unknown workload {w!r}")
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
