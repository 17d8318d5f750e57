"""What keeping the cache intact costs: per-input operations, and tasks/s with inputs.

    python -m core.tools.bench_sandbox [--tasks N] [--dir DIR]

Prints one JSON line per measurement:

- ``op``: microseconds per call (median of many) of what the worker does per input, by size: a hard
  link, a copy (``shutil.copyfile``), stamping an entry when it arrives (``seal``) and checking it
  after a task (``entry_stamp``); for a directory of 1,000 files, rebuilding it as links
  (``link_tree``) against one symlink, and its stamp.
- ``tasks``: tasks/s for N tasks on one 2-core worker, each reading one cached input (small and
  copied, or large and linked). Run it with ``PYTHONPATH`` pointing at another checkout to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable


def _median_us(fn: Callable[[], None], n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return round(statistics.median(samples) * 1e6, 1)


def bench_ops(base: str) -> list[dict[str, Any]]:
    from core.worker.sandbox import entry_stamp, link_tree, seal

    rows = []
    for size in (4 << 10, 64 << 10, 1 << 20, 2 << 20, 64 << 20):
        src = os.path.join(base, f"src-{size}")
        with open(src, "wb") as fh:
            fh.write(os.urandom(size))
        dst = os.path.join(base, "dst")
        n = 200 if size <= 2 << 20 else 20

        def link() -> None:
            os.link(src, dst)
            os.unlink(dst)

        def copy() -> None:
            shutil.copyfile(src, dst)
            os.unlink(dst)

        rows.append({"op": "per input", "bytes": size, "link_us": _median_us(link, n), "copy_us": _median_us(copy, n),
                     "seal_us": _median_us(lambda: (seal(src), None)[1], n),
                     "check_us": _median_us(lambda: (entry_stamp(src), None)[1], n)})
    tree = os.path.join(base, "tree")
    for i in range(1000):
        sub = os.path.join(tree, f"d{i // 100}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i}"), "wb") as fh:
            fh.write(b"x" * 100)
    farm = os.path.join(base, "farm")

    def hard_links() -> None:
        link_tree(tree, farm)
        shutil.rmtree(farm)

    def symlink() -> None:
        os.symlink(tree, farm)
        os.unlink(farm)

    rows.append({"op": "directory of 1000 files", "link_tree_us": _median_us(hard_links, 20), "symlink_us": _median_us(symlink, 20),
                 "check_us": _median_us(lambda: (entry_stamp(tree), None)[1], 20)})
    return rows


def bench_tasks(n: int, size: int, base: str) -> dict[str, Any]:
    import core as vine
    from core.tools.bench_cluster import local_cluster

    path = os.path.join(base, f"input-{size}")
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
    with local_cluster(1, cores=2) as m:
        f = m.declare_file(path, cache="workflow")
        warm = vine.Task("cat in > /dev/null")
        warm.add_input(f, "in")
        m.submit(warm)
        m.wait(30)
        start = time.perf_counter()
        for _ in range(n):
            t = vine.Task("cat in > /dev/null")
            t.add_input(f, "in")
            t.set_cores(1)
            m.submit(t)
        done = 0
        while not m.empty():
            t = m.wait(30)
            if t is not None:
                if t.result != "success" or t.exit_code != 0:
                    raise RuntimeError(f"benchmark task {t.id} ended with {t.result} ({t.exit_code})")
                done += 1
        rate = done / (time.perf_counter() - start)
    return {"op": "tasks", "tasks": n, "input_bytes": size, "tasks_per_s": round(rate, 1), "core": vine.__file__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--dir", default=None, help="where to make files (default: the system temp dir)")
    p.add_argument("--skip-ops", action="store_true", help="only the tasks/s runs (for an older checkout)")
    args = p.parse_args(argv)
    base = tempfile.mkdtemp(prefix="bench-sandbox-", dir=args.dir)
    try:
        if not args.skip_ops:
            for row in bench_ops(base):
                print(json.dumps(row), flush=True)
        for size in (4 << 10, 2 << 20):
            print(json.dumps(bench_tasks(args.tasks, size, base)), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
