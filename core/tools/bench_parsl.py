"""Parsl workloads for ``vine_benchmark``: Parsl's own ``parsl-perf`` through parslvine and its peers.

Workloads (``vine_benchmark parsl [--vs PEERS] [--repeat N]``):

  parsl        ``parsl-perf --time 20`` (Parsl's benchmark: a no-op app, as many calls as fit the
               time, iterated until a run takes at least 75 % of it) through each peer in turn
  parsl-quick  the same with ``--time 5``
  parsl-cpu    CPU per call of each parslvine peer, by process (and by thread in the user's
               process): ``-n`` no-op app calls (default 2000; regular mode a third of that)
               submitted at once after a warm-up, CPU times from psutil before and after, and
               how many of the machine's cores were busy meanwhile (``machine_busy_cores``, from
               /proc/stat: everything that ran, ours and anything else); regular mode also
               reports the fork server's and a forked child's minor (copy-on-write) faults per
               call (``minor_faults_per_call``), steadier than CPU on a shared machine

Peers, each a config file written here, all on this machine's cores (2 on the CI machine):

  parslvine-serverless  ``parslvine.TaskVineExecutor(function_exec_mode="serverless")``, one
                        factory worker with 2 cores (one warm library instance per core); its
                        manager runs in a manager process of its own (parslvine.manager_process)
  parslvine-regular     the same executor in regular mode (a task per call, forked on the worker)
  htex                  Parsl's ``HighThroughputExecutor``, one LocalProvider block, 2 workers
  threads               Parsl's ``ThreadPoolExecutor(max_threads=2)``: no workers at all, the
                        ceiling the DFK itself sets

Each row is one peer: its tasks/s in parsl-perf's last iteration, how many tasks that iteration
ran, the machine's 1-minute load average when it ended, and its ratio to ``htex`` measured in the
same run (``vs_htex`` > 1 means faster).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

WORKLOADS = ("parsl", "parsl-quick", "parsl-cpu")
PEERS = ("parslvine-serverless", "parslvine-regular", "htex", "threads")
TIMES = {"parsl": 20, "parsl-quick": 5}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIGS = {
    "parslvine-serverless": """
from parsl.config import Config
from parslvine import TaskVineExecutor, TaskVineFactoryConfig, TaskVineManagerConfig
config = Config(run_dir={run_dir!r}, executors=[TaskVineExecutor(
    label="parslvine", function_exec_mode="serverless", manager_config=TaskVineManagerConfig(port=0),
    factory_config=TaskVineFactoryConfig(min_workers=1, max_workers=1, cores={cores}, memory=4000, disk=8000))])
""",
    "parslvine-regular": """
from parsl.config import Config
from parslvine import TaskVineExecutor, TaskVineFactoryConfig, TaskVineManagerConfig
config = Config(run_dir={run_dir!r}, executors=[TaskVineExecutor(
    label="parslvine", function_exec_mode="regular", manager_config=TaskVineManagerConfig(port=0),
    factory_config=TaskVineFactoryConfig(min_workers=1, max_workers=1, cores={cores}, memory=4000, disk=8000))])
""",
    "htex": """
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider
config = Config(run_dir={run_dir!r}, executors=[HighThroughputExecutor(
    label="htex", address="127.0.0.1", max_workers_per_node={cores},
    provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))])
""",
    "threads": """
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor
config = Config(run_dir={run_dir!r}, executors=[ThreadPoolExecutor(max_threads={cores})])
""",
}

_RATE = re.compile(r"^Tasks per second: ([0-9.]+)", re.MULTILINE)
_COUNT = re.compile(r"^Will run (\d+) tasks", re.MULTILINE)


def _cores() -> int:
    return min(os.cpu_count() or 2, 2)


def perf(peer: str, seconds: float, workdir: str) -> dict[str, Any]:
    """Run ``parsl-perf`` once through ``peer``; its last iteration's rate and size."""
    cfg = os.path.join(workdir, f"{peer}.py")
    with open(cfg, "w") as fh:
        fh.write(_CONFIGS[peer].format(run_dir=os.path.join(workdir, f"runinfo-{peer}"), cores=_cores()))
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    cmd = [sys.executable, "-m", "parsl.benchmark.perf", "--config", cfg, "--time", str(seconds)]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=seconds * 12 + 120, check=False)
    rates, counts = _RATE.findall(proc.stdout), _COUNT.findall(proc.stdout)
    if proc.returncode != 0 or not rates:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"parsl-perf through {peer} failed (exit {proc.returncode}):\n{tail}")
    # The 1-minute load average after the run: on a shared machine a rate means little without it.
    return {"tasks_per_s": float(rates[-1]), "tasks": int(counts[-1]), "iterations": len(rates), "load_1min": round(os.getloadavg()[0], 2)}


# Run in a process of its own (parsl.load once per process): prints one JSON object, ms of CPU per call by role.
_CPU_PROGRAM = r"""
import importlib.util, json, os, threading, time
import parsl, psutil
spec = importlib.util.spec_from_file_location("peer_config", {config!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
parsl.load(mod.config)

@parsl.python_app
def noop(x=0):
    return x

def role(cmd):
    for key, name in (("parslvine.manager_process", "manager process"), ("core.worker.forkserver", "fork server"),
                      ("core.deploy.factory", "factory"), (".vine_library_runner.py", "library"),
                      ("-m core.worker", "worker")):
        if key in cmd:
            return name
    return "other process"

def thread_role(name):
    if name == "MainThread":
        return "user: DFK submit (main thread)"
    if name.startswith("Task-Launch"):
        return "user: DFK launch + executor.submit"
    if name.startswith("parslvine-mp-reader"):
        return "user: results + DFK callbacks"
    return "user: other threads"

me = psutil.Process()
faults = {{}}
def snapshot():
    out = {{}}
    faults.clear()
    names = {{t.native_id: t.name for t in threading.enumerate()}}
    for t in me.threads():
        key = thread_role(names.get(t.id, ""))
        out[key] = out.get(key, 0.0) + t.user_time + t.system_time
    for p in me.children(recursive=True):
        try:
            cmd, c = " ".join(p.cmdline()), p.cpu_times()
        except psutil.Error:
            continue
        key = role(cmd)
        out[key] = out.get(key, 0.0) + c.user + c.system
        if key == "fork server":
            out["forked children"] = out.get("forked children", 0.0) + c.children_user + c.children_system
            try:  # minor (copy-on-write) faults: the server's own, and those of the children it reaped
                with open(f"/proc/{{p.pid}}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                faults["fork server"] = faults.get("fork server", 0) + int(fields[7])
                faults["child"] = faults.get("child", 0) + int(fields[8])
            except OSError:
                pass
    return out

def machine():
    # (all CPUs' time since boot, of it idle + iowait) from /proc/stat: how busy the whole machine was
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return sum(v), v[3] + v[4]

[noop(i).result() for i in range(200)]
before = snapshot()
faults0 = dict(faults)
m0 = machine()
t0 = time.perf_counter()
futures = [noop(i) for i in range({calls})]
[f.result() for f in futures]
wall = time.perf_counter() - t0
m1 = machine()
after = snapshot()
rows = {{k: round(1000 * (after[k] - before.get(k, 0.0)) / {calls}, 3) for k in after}}
rows = {{k: v for k, v in sorted(rows.items()) if v > 0.0005}}
rows["total"] = round(sum(rows.values()), 3)
ticks = m1[0] - m0[0]
busy = round((os.cpu_count() or 1) * (ticks - (m1[1] - m0[1])) / ticks, 2) if ticks else None
extra = {{}}
if faults0 and faults:
    extra["minor_faults_per_call"] = {{k: round((faults[k] - faults0.get(k, 0)) / {calls}, 1) for k in faults}}
print(json.dumps({{"calls": {calls}, "tasks_per_s": round({calls} / wall, 1), "machine_busy_cores": busy,
                  "cpu_ms_per_call": rows, **extra}}), flush=True)
parsl.dfk().cleanup()
"""


def cpu_per_call(peer: str, calls: int, workdir: str) -> dict[str, Any]:
    """CPU per call of ``peer`` (a parslvine peer), by process role, from one run of ``calls`` no-op apps."""
    import json

    cfg = os.path.join(workdir, f"{peer}.py")
    with open(cfg, "w") as fh:
        fh.write(_CONFIGS[peer].format(run_dir=os.path.join(workdir, f"runinfo-{peer}"), cores=_cores()))
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    program = _CPU_PROGRAM.format(config=cfg, calls=calls)
    proc = subprocess.run([sys.executable, "-c", program], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"parsl-cpu through {peer} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {**json.loads(lines[-1]), "load_1min": round(os.getloadavg()[0], 2)}


def run(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``vine_benchmark``'s entry point: one row per peer, with ratios to htex from the same run."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown parsl workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if name == "parsl-cpu":
        peers = [p for p in (getattr(args, "vs", "") or "").split(",") if p] or ["parslvine-serverless", "parslvine-regular"]
        wrong = sorted(set(peers) - {"parslvine-serverless", "parslvine-regular"})
        if wrong:
            raise ValueError(f"parsl-cpu measures parslvine peers only, not {wrong}")
        calls = max(100, int(getattr(args, "tasks", 2000) or 2000))
        with tempfile.TemporaryDirectory(prefix="vine-bench-parsl-") as workdir:
            return [{"workload": name, "peer": peer, "cores": _cores(),
                     **cpu_per_call(peer, calls if peer == "parslvine-serverless" else max(100, calls // 3), workdir)}
                    for peer in peers]
    wanted = [p for p in (getattr(args, "vs", "") or "").split(",") if p] or list(PEERS)
    unknown = sorted(set(wanted) - set(PEERS))
    if unknown:
        raise ValueError(f"unknown parsl peers {unknown}; choose from {', '.join(PEERS)}")
    if "htex" not in wanted:
        wanted.append("htex")  # every ratio is to htex in the same run
    repeat = max(1, int(getattr(args, "repeat", 1) or 1))
    seconds = TIMES[name]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vine-bench-parsl-") as workdir:
        for peer in wanted:
            best: dict[str, Any] | None = None
            for _ in range(repeat):
                r = perf(peer, seconds, workdir)
                if best is None or r["tasks_per_s"] > best["tasks_per_s"]:
                    best = r
            assert best is not None
            rows[peer] = {"workload": name, "peer": peer, "cores": _cores(), "perf_time_s": seconds, **best}
    htex = rows["htex"]["tasks_per_s"]
    for row in rows.values():
        row["vs_htex"] = round(row["tasks_per_s"] / htex, 3) if htex else None
    return [rows[p] for p in wanted]


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(prog="python -m core.tools.bench_parsl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", nargs="?", default="parsl", choices=WORKLOADS)
    p.add_argument("--vs", default="", help=f"comma-separated peers (default all: {', '.join(PEERS)})")
    p.add_argument("--repeat", type=int, default=1, help="best of this many parsl-perf runs per peer")
    p.add_argument("-n", "--tasks", type=int, default=2000, help="parsl-cpu: calls per peer (regular mode runs a third)")
    args = p.parse_args(argv)
    for row in run(args.workload, args):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
