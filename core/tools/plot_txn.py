"""``vine_plot_txn_log``: workers and tasks over time, drawn from a run's transactions log.

::

    vine_plot_txn_log [--mode workers|tasks] vine-run-info/most-recent/vine-logs/transactions out.png

``--mode workers`` (the default, as TaskVine's tool): one line per worker, from its connection to its
disconnection, with a mark for each task it ran. ``--mode tasks``: how many tasks were waiting,
running and done at each moment. It prints what it drew (tasks, workers, duration) and needs
matplotlib (``pip install 'core-vine[plots]'``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import VineError


class LogFormatError(VineError):
    """A log file that is not what the tool reads (names the file and the line)."""


@dataclass
class TxnRun:
    """What a transactions log says: times in seconds from the manager's START."""

    start_us: int = 0
    end: float | None = None
    workers: dict[str, list[float]] = field(default_factory=dict)  # id -> [connected, disconnected or None]
    task_states: dict[int, list[tuple[float, str, str]]] = field(default_factory=dict)  # id -> [(t, state, worker)]
    last: float = 0.0

    @property
    def tasks(self) -> int:
        return len(self.task_states)

    def done_tasks(self) -> int:
        return sum(1 for states in self.task_states.values() if any(s == "DONE" for _, s, _ in states))


def parse_transactions(lines: Iterable[str], path: str = "transactions") -> TxnRun:
    run = TxnRun()
    origin: int | None = None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            t_us = int(parts[0])
        except (ValueError, IndexError):
            raise LogFormatError(f"{path}:{n}: not a transactions record (no time first): {line[:80]!r}") from None
        if origin is None:
            origin = t_us
            run.start_us = t_us
        t = (t_us - origin) / 1e6
        run.last = max(run.last, t)
        kind = parts[2] if len(parts) > 2 else ""
        if kind == "MANAGER" and len(parts) > 4:
            if parts[4] == "START":
                origin, run.start_us, t = t_us, t_us, 0.0
            elif parts[4] == "END":
                run.end = t
        elif kind == "WORKER" and len(parts) > 4:
            wid, what = parts[3], parts[4]
            if what == "CONNECTION":
                run.workers[wid] = [t, None]  # type: ignore[list-item]
            elif what == "DISCONNECTION" and wid in run.workers:
                run.workers[wid][1] = t
        elif kind == "TASK" and len(parts) > 4:
            try:
                tid = int(parts[3])
            except ValueError:
                raise LogFormatError(f"{path}:{n}: task id {parts[3]!r} is not a number") from None
            state = parts[4]
            worker = parts[5] if state in ("RUNNING", "WAITING_RETRIEVAL") and len(parts) > 5 else ""
            run.task_states.setdefault(tid, []).append((t, state, worker))
    if origin is None:
        raise LogFormatError(f"{path}: no records (is it a transactions log?)")
    return run


def task_counts(run: TxnRun) -> list[tuple[float, int, int, int]]:
    """(time, waiting, running, done) after each task state change."""
    events = sorted((t, tid, s) for tid, states in run.task_states.items() for t, s, _ in states)
    where: dict[int, str] = {}
    counts = {"waiting": 0, "running": 0, "done": 0}
    series = []
    for t, tid, state in events:
        # A task whose result reached the manager is done here (DONE comes when the program waits for it).
        new = {"READY": "waiting", "RUNNING": "running", "WAITING_RETRIEVAL": "done", "RETRIEVED": "done",
               "DONE": "done"}.get(state)
        if new is None:
            continue
        old = where.get(tid)
        if old is not None:
            counts[old] -= 1
        counts[new] += 1
        where[tid] = new
        series.append((t, counts["waiting"], counts["running"], counts["done"]))
    return series


def plot(run: TxnRun, out: str, mode: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise VineError("vine_plot_txn_log needs matplotlib: pip install 'core-vine[plots]'") from exc
    end = run.end if run.end is not None else run.last
    fig = Figure(figsize=(10, 6))
    ax = fig.subplots()
    if mode == "workers":
        order = sorted(run.workers, key=lambda w: run.workers[w][0])
        row = {w: i for i, w in enumerate(order)}
        for w in order:
            begin, finish = run.workers[w]
            ax.hlines(row[w], begin, finish if finish is not None else end, colors="tab:blue", linewidth=2)
        for states in run.task_states.values():
            for t, s, w in states:
                if s == "RUNNING" and w in row:
                    ax.plot([t], [row[w]], marker="|", color="tab:green", markersize=10)
        ax.set_ylabel("worker")
        ax.set_yticks(range(len(order)))
        ax.set_title(f"{len(order)} workers, {run.tasks} tasks, {end:.1f} s")
    else:
        series = task_counts(run)
        times = [p[0] for p in series]
        for i, label in ((1, "waiting"), (2, "running"), (3, "done")):
            ax.step(times, [p[i] for p in series], where="post", label=label)
        ax.set_ylabel("tasks")
        ax.legend()
        ax.set_title(f"{run.tasks} tasks ({run.done_tasks()} done), {len(run.workers)} workers, {end:.1f} s")
    ax.set_xlabel("time since the manager started (s)")
    fig.savefig(out, format="png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vine_plot_txn_log", description="Plot workers or tasks over time from a transactions log.")
    p.add_argument("--mode", choices=("workers", "tasks"), default="workers", help="what to plot (default: workers)")
    p.add_argument("log", help="a run's vine-logs/transactions")
    p.add_argument("output", help="the PNG to write")
    args = p.parse_args(argv)
    try:
        with open(args.log) as fh:
            run = parse_transactions(fh, args.log)
        plot(run, args.output, args.mode)
    except (OSError, VineError) as exc:
        print(f"vine_plot_txn_log: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {args.mode}: {run.tasks} tasks ({run.done_tasks()} done), {len(run.workers)} workers, "
          f"{(run.end if run.end is not None else run.last):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
