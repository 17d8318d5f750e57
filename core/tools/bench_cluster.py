"""The local cluster every ``vine_benchmark`` workload runs on: a manager and real worker processes.

Shared by ``benchmark`` and the workload modules (``bench_core``, ``bench_python``, ``bench_dask``,
``bench_sandbox``), which import it rather than each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

import core as vine


@contextmanager
def local_cluster(n_workers: int = 1, cores: int = 2, manager_class: type[vine.Manager] = vine.Manager,
                  **manager_kw: Any) -> Iterator[vine.Manager]:
    """A manager (of ``manager_class``, e.g. DaskVine) plus ``n_workers`` real worker processes, reaped on exit."""
    tmp = tempfile.mkdtemp(prefix="vine-bench-")
    m = manager_class(port=0, run_info_path=os.path.join(tmp, "vine-run-info"), **manager_kw)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "core.worker", "--cores", str(cores), "--memory", "4000", "--disk", "8000",
             "--workdir", os.path.join(tmp, f"w{i}"), "--single-shot", "--parent-death", "localhost", str(m.port)],
            stdout=subprocess.DEVNULL,
        )
        for i in range(n_workers)
    ]
    try:
        deadline = time.monotonic() + 30
        while m.stats.workers_connected < n_workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark workers did not connect within 30 s ({m.stats.workers_connected} of {n_workers})")
            time.sleep(0.02)
        yield m
    finally:
        m.close()
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", tmp], check=False)


def drain(m: vine.Manager) -> int:
    """Wait for every task of ``m``; the number that finished. A task that did not succeed is a RuntimeError."""
    n = 0
    while not m.empty():
        t = m.wait(10)
        if t is not None:
            n += 1
            if t.result != "success":
                raise RuntimeError(f"benchmark task {t.id} ended with {t.result}")
    return n
