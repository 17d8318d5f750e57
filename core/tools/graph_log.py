"""``vine_graph_log``: plots of a run's performance log, one PNG per group of columns.

::

    vine_graph_log [-T png] [-o PREFIX] vine-run-info/most-recent/vine-logs/performance

As TaskVine's tool: ``-o PREFIX`` (default: the log's own path) names the outputs
``PREFIX.workers.png``, ``PREFIX.tasks.png``, ``PREFIX.tasks-cumulative.png``, ``PREFIX.time.png``,
``PREFIX.transfer.png``, ``PREFIX.capacity.png`` and ``PREFIX.resources.png``. Only PNG is drawn.
It prints each file written and the run's final task counts; needs matplotlib
(``pip install 'core-vine[plots]'``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from ..errors import VineError
from .plot_txn import LogFormatError

# Output name -> (y-axis label, columns drawn).
GRAPHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "workers": ("workers", ("workers_connected", "workers_idle", "workers_busy", "workers_able", "workers_init")),
    "tasks": ("tasks", ("tasks_waiting", "tasks_on_workers", "tasks_running", "tasks_with_results")),
    "tasks-cumulative": ("tasks", ("tasks_submitted", "tasks_dispatched", "tasks_done", "tasks_failed",
                                   "tasks_successful", "tasks_cancelled", "tasks_recovery", "workers_joined",
                                   "workers_removed", "workers_lost")),
    "time": ("seconds", ("time_send", "time_receive", "time_status_msgs", "time_internal", "time_polling",
                         "time_application", "time_scheduling", "time_execute", "time_execute_good")),
    "transfer": ("MB", ("bytes_sent", "bytes_received")),
    "capacity": ("tasks", ("capacity_tasks", "capacity_cores", "capacity_instantaneous", "capacity_weighted")),
    "resources": ("cores", ("total_cores", "committed_cores", "max_cores", "min_cores")),
}
SCALE = {"seconds": 1e-6, "MB": 1e-6}  # time columns are µs, byte columns bytes


def parse_performance(lines: Iterable[str], path: str = "performance") -> tuple[list[str], list[dict[str, float]]]:
    """The performance log's columns and its rows (values as numbers)."""
    columns: list[str] | None = None
    rows: list[dict[str, float]] = []
    for n, line in enumerate(lines, 1):
        if line.startswith("#"):
            if columns is None:
                columns = line[1:].split()
            continue
        if not line.strip():
            continue
        if columns is None:
            raise LogFormatError(f"{path}:{n}: a row before the '# timestamp ...' header (is it a performance log?)")
        values = line.split()
        if len(values) != len(columns):
            raise LogFormatError(f"{path}:{n}: {len(values)} values for {len(columns)} columns")
        try:
            rows.append({c: float(v) for c, v in zip(columns, values)})
        except ValueError as exc:
            raise LogFormatError(f"{path}:{n}: {exc}") from None
    if columns is None or not rows:
        raise LogFormatError(f"{path}: no header or no rows (is it a performance log?)")
    return columns, rows


def draw(columns: list[str], rows: list[dict[str, float]], prefix: str) -> list[str]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise VineError("vine_graph_log needs matplotlib: pip install 'core-vine[plots]'") from exc
    t0 = rows[0]["timestamp"]
    times = [(r["timestamp"] - t0) / 1e6 for r in rows]
    written = []
    for name, (unit, wanted) in GRAPHS.items():
        present = [c for c in wanted if c in columns]
        if not present:
            continue
        fig = Figure(figsize=(10, 6))
        ax = fig.subplots()
        scale = SCALE.get(unit, 1)
        for c in present:
            ax.step(times, [r[c] * scale for r in rows], where="post", label=c)
        ax.set_xlabel("time since the first row (s)")
        ax.set_ylabel(unit)
        ax.set_title(name)
        ax.legend(fontsize="small")
        out = f"{prefix}.{name}.png"
        fig.savefig(out, format="png")
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vine_graph_log", description="Plot a TaskVine performance log.")
    p.add_argument("-T", dest="format", default="png", help="output format (only png)")
    p.add_argument("-o", dest="prefix", help="output prefix (default: the log's path)")
    p.add_argument("log", help="a run's vine-logs/performance")
    args = p.parse_args(argv)
    if args.format.lower() != "png":
        print(f"vine_graph_log: only -Tpng is drawn, not -T{args.format}", file=sys.stderr)
        return 2
    try:
        with open(args.log) as fh:
            columns, rows = parse_performance(fh, args.log)
        written = draw(columns, rows, args.prefix or args.log)
    except (OSError, VineError) as exc:
        print(f"vine_graph_log: {exc}", file=sys.stderr)
        return 1
    for out in written:
        print(out)
    last = rows[-1]
    print(f"tasks: {int(last.get('tasks_submitted', 0))} submitted, {int(last.get('tasks_done', 0))} done; "
          f"workers: {int(last.get('workers_joined', 0))} joined; {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
