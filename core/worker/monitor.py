"""Measure a task's process tree (psutil) and decide when it went over its allocation.

The worker samples every running task that asked for monitoring, keeps the peaks, and with the
watchdog on kills a task whose memory or sandbox disk exceeds what it was allocated.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class Usage:
    """Peak usage of one task so far."""

    start: float = field(default_factory=time.time)
    memory: float = 0.0  # MB, peak memory of the whole tree: its resident set, or for several processes their PSS sum
    disk: float = 0.0  # MB, peak size of the sandbox
    cpu_time: float = 0.0  # s, user + system of the tree (children that already exited are lost)
    max_procs: int = 0

    def measured(self) -> dict[str, float]:
        wall = max(time.time() - self.start, 1e-6)
        return {"cores": round(self.cpu_time / wall, 3), "memory": round(self.memory, 1), "disk": round(self.disk, 1),
                "wall_time": round(wall, 3), "cpu_time": round(self.cpu_time, 3), "max_concurrent_processes": self.max_procs}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def sample(usage: Usage, pid: int, sandbox: str, with_disk: bool = True) -> None:
    """Add one sample of the tree rooted at ``pid`` (and the sandbox's size) to ``usage``."""
    rss = 0
    cpu = 0.0
    procs = _tree(pid)
    shared = len(procs) > 1
    for p in procs:
        try:
            rss += _proportional(p) if shared else p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
        except psutil.Error:
            continue
    usage.memory = max(usage.memory, rss / (1 << 20))
    usage.cpu_time = max(usage.cpu_time, cpu)
    usage.max_procs = max(usage.max_procs, len(procs))
    if with_disk:
        usage.disk = max(usage.disk, _dir_mb(sandbox))


def _proportional(p: psutil.Process) -> int:
    """``p``'s proportional set size (PSS): each page it shares counted as 1/N for its N sharers.

    A tree of several processes is measured by the sum of these, not of their resident sets: the
    children of a fork share their parent's pages until they write them, and a sum of resident
    sets counts every shared page once per process (a fork-mode library with its running calls,
    a task that forks workers over a loaded dataset: several times the memory really in use).
    Its resident set where the kernel gives no PSS.
    """
    try:
        return p.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return p.memory_info().rss


def _dir_mb(path: str) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if st.st_nlink == 1:  # hard-linked inputs live in the cache, not in the task's disk share
                total += st.st_blocks * 512
    return total / (1 << 20)


def exceeded(usage: Usage, alloc: dict[str, float]) -> dict[str, float]:
    """Which allocated limits the peaks went over (memory and disk; cores are shared, not enforced)."""
    over = {}
    for res in ("memory", "disk"):
        limit = alloc.get(res, -1)
        if limit and limit > 0 and getattr(usage, res) > limit:
            over[res] = round(getattr(usage, res), 1)
    return over
