"""``vine_benchmark --table``: the speed rows of a run as one Markdown table, each next to its goal.

The rows are the JSON objects the workloads print (core/tools/benchmark.py, bench_python.py,
bench_core.py, bench_parsl.py); this module only reads them, so the table says nothing the JSON
lines do not. A goal is the README's (its "Benchmarks" section): a ratio to the floor or peer
measured in the same run, or for ``queue-mem`` a memory bound and a submit rate. Rows the run did
not make are left out; rows of other workloads are not tabled. A row run several times
(``--repeat N``) is its median run, with the lowest and highest of its N figures beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

QUEUE_BYTES_GOAL = 1500  # manager bytes per queued task, at most
QUEUE_SUBMITS_GOAL = 100_000  # submits per second, at least


@dataclass(frozen=True)
class Goal:
    """One table line: which JSON row it reads, and how."""

    title: str
    matches: Callable[[dict[str, Any]], bool]
    rate: str  # the row's own rate field
    floor: str  # the field of the floor or peer it is measured against
    ratio: str  # the field of our rate / that floor
    at_least: float  # the goal for the ratio
    against: str  # what the floor is, for the table


def _workload(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row.get("workload") == name and all(row.get(k) == v for k, v in fields.items())


def _parsl_peer(peer: str) -> Callable[[dict[str, Any]], bool]:
    return lambda row: str(row.get("workload", "")).startswith("parsl") and "vs_htex" in row and row.get("peer") == peer


GOALS = (
    Goal('std: `Task("true")`, 1 worker x 2 cores', _workload("std"), "tasks_per_s", "peer_tasks_per_s", "ratio", 0.7,
         "`sh -c true`, two at a time"),
    Goal("python: `PythonTask`, fork server", _workload("python"), "tasks_per_s", "fork_floor_tasks_per_s",
         "fork_floor_ratio", 0.5, "a fork per call, two at a time"),
    Goal("funcall: `FunctionCall`, direct mode", _workload("funcall", exec_mode="direct"), "calls_per_s", "peer_calls_per_s",
         "ratio", 0.8, "a warm `ProcessPoolExecutor`"),
    Goal("funcall-fork: `FunctionCall`, fork mode", _workload("funcall", exec_mode="fork"), "calls_per_s",
         "fork_floor_calls_per_s", "fork_floor_ratio", 0.9, "a fork per call, two at a time"),
    Goal("chain: temp-linked command tasks", _workload("chain"), "tasks_per_s", "floor_tasks_per_s", "ratio", 0.5,
         "`sh -c`, one at a time"),
    Goal("parsl: serverless mode (parsl-perf)", _parsl_peer("parslvine-serverless"), "tasks_per_s", "", "vs_htex", 1.5,
         "Parsl's HTEX"),
    Goal("parsl: regular mode (parsl-perf)", _parsl_peer("parslvine-regular"), "tasks_per_s", "", "vs_htex", 0.5,
         "Parsl's HTEX"),
)


def _n(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _spread(row: dict[str, Any], fmt: str) -> str:
    """`` (median of N: low-high)`` for a row repeated N times (``vine_benchmark --repeat N``), else ""."""
    figures = row.get("run_figures")
    if not figures or len(figures) < 2:
        return ""
    return f" (median of {len(figures)}: {format(figures[0], fmt)}-{format(figures[-1], fmt)})"


def table(rows: Iterable[dict[str, Any]]) -> str:
    """The Markdown table of the goal rows among ``rows`` (empty if there are none)."""
    rows = list(rows)
    htex = {row.get("workload"): row["tasks_per_s"] for row in rows
            if str(row.get("workload", "")).startswith("parsl") and row.get("peer") == "htex" and "tasks_per_s" in row}
    lines = []
    for goal in GOALS:
        for row in (r for r in rows if goal.matches(r)):
            floor = row.get(goal.floor) if goal.floor else htex.get(row.get("workload"))
            floor_text = f"{_n(floor)}/s, {goal.against}" if isinstance(floor, (int, float)) else goal.against
            ratio = row[goal.ratio]
            lines.append(f"| {goal.title} | {_n(row[goal.rate])}/s | {floor_text} | {ratio:.2f}{_spread(row, '.2f')} | >= {goal.at_least} | "
                         f"{'yes' if ratio >= goal.at_least else 'no'} |")
    for row in (r for r in rows if r.get("workload") == "queue-mem"):
        memory, submits = row["bytes_per_task"], row["submits_per_s"]
        met = [f"memory {'yes' if memory <= QUEUE_BYTES_GOAL else 'no'}", f"submits {'yes' if submits >= QUEUE_SUBMITS_GOAL else 'no'}"]
        lines.append(f"| queue-mem: {_n(row['tasks'])} queued `Task(\"true\")`, no worker | {_n(memory)} B a task, "
                     f"{_n(submits)} submits/s{_spread(row, ',.0f')} | | | <= {QUEUE_BYTES_GOAL:,} B, >= {QUEUE_SUBMITS_GOAL:,}/s | {', '.join(met)} |")
    if not lines:
        return ""
    head = ["| row | ours | floor or peer, same run | ratio | goal | met |", "|---|---:|---|---:|---|---|"]
    return "\n".join(head + lines)
