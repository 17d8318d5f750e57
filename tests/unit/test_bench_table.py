"""core/tools/bench_table.py: the goal table made from the JSON rows the workloads print."""

from __future__ import annotations

import json

from core.tools.bench_table import table

# Rows as the workloads printed them in one run (session 27, 07:34), trimmed to the fields read.
ROWS = [json.loads(line) for line in """
{"workload": "std", "tasks": 2000, "tasks_per_s": 1462.5, "peer_tasks_per_s": 2541.2, "ratio": 0.576}
{"workload": "python", "tasks": 300, "tasks_per_s": 629.0, "ratio": 19.351, "fork_floor_tasks_per_s": 1104.0, "fork_floor_ratio": 0.57}
{"workload": "funcall", "exec_mode": "direct", "calls_per_s": 7323.2, "peer_calls_per_s": 9312.4, "ratio": 0.786}
{"workload": "funcall", "exec_mode": "fork", "calls_per_s": 869.6, "peer_calls_per_s": 7934.3, "ratio": 0.11, "fork_floor_calls_per_s": 1103.3, "fork_floor_ratio": 0.788}
{"workload": "chain", "length": 300, "tasks_per_s": 922.6, "floor_tasks_per_s": 1067.5, "ratio": 0.864}
{"workload": "queue-mem", "tasks": 200000, "bytes_per_task": 941, "submits_per_s": 95147}
{"workload": "parsl-quick", "peer": "parslvine-serverless", "tasks_per_s": 1030.335, "vs_htex": 1.679}
{"workload": "parsl-quick", "peer": "parslvine-regular", "tasks_per_s": 440.637, "vs_htex": 0.718}
{"workload": "parsl-quick", "peer": "htex", "tasks_per_s": 613.521, "vs_htex": 1.0}
{"workload": "queue", "sizes": [1000]}
""".strip().splitlines()]


def cells(text: str) -> dict[str, list[str]]:
    """First column -> the other columns, for each body line of a Markdown table."""
    body = text.splitlines()[2:]
    return {parts[0]: parts[1:] for parts in ([c.strip() for c in line.strip("|").split("|")] for line in body)}


def test_each_goal_row_is_read_from_its_own_fields_and_judged() -> None:
    text = table(ROWS)
    assert text.splitlines()[0].startswith("| row | ours |")
    got = cells(text)
    std = got['std: `Task("true")`, 1 worker x 2 cores']
    assert std == ["1,462/s", "2,541/s, `sh -c true`, two at a time", "0.58", ">= 0.7", "no"]
    assert got["python: `PythonTask`, fork server"][2:] == ["0.57", ">= 0.5", "yes"]  # the fork floor, not the pool
    assert got["funcall: `FunctionCall`, direct mode"][2:] == ["0.79", ">= 0.8", "no"]
    fork = got["funcall-fork: `FunctionCall`, fork mode"]
    assert fork[1].startswith("1,103/s") and fork[2:] == ["0.79", ">= 0.9", "no"]
    assert got["chain: temp-linked command tasks"][2:] == ["0.86", ">= 0.5", "yes"]
    assert got["parsl: serverless mode (parsl-perf)"] == ["1,030/s", "614/s, Parsl's HTEX", "1.68", ">= 1.5", "yes"]
    assert got["parsl: regular mode (parsl-perf)"][2:] == ["0.72", ">= 0.5", "yes"]
    queue = got['queue-mem: 200,000 queued `Task("true")`, no worker']
    assert queue[0] == "941 B a task, 95,147 submits/s" and queue[-1] == "memory yes, submits no"
    assert len(got) == 8, "the queue row and HTEX's own row are not goal rows"


def test_only_the_rows_a_run_made_and_none_without_goal_rows() -> None:
    only_std = table(ROWS[:1])
    assert len(only_std.splitlines()) == 3
    assert table([{"workload": "queue", "sizes": [1000]}]) == ""
    met = dict(ROWS[5], submits_per_s=101_352, bytes_per_task=1_600)
    assert cells(table([met]))['queue-mem: 200,000 queued `Task("true")`, no worker'][-1] == "memory no, submits yes"


def test_a_repeated_row_is_its_median_run_with_the_spread_of_its_runs() -> None:
    from core.tools.benchmark import median_run

    runs = [dict(ROWS[0], ratio=r, tasks_per_s=1000 * r) for r in (0.61, 0.52, 0.70, 0.55)]
    row = median_run(runs)
    # The lower median of four (0.55, not 0.61): a goal is met only if half the runs meet it.
    assert row["ratio"] == 0.55 and row["tasks_per_s"] == 550  # the whole median run, not a mix of runs
    assert row["runs"] == 4 and row["run_figures"] == [0.52, 0.55, 0.61, 0.7]
    assert cells(table([row]))['std: `Task("true")`, 1 worker x 2 cores'][2] == "0.55 (median of 4: 0.52-0.70)"
    fork = median_run([dict(ROWS[3], ratio=0.2, fork_floor_ratio=f) for f in (0.95, 0.85, 0.91)])
    assert fork["fork_floor_ratio"] == 0.91  # ranked by the fork floor's ratio, the one its goal reads
    queued = median_run([dict(ROWS[5], submits_per_s=s) for s in (120_000, 90_000, 101_000)])
    assert queued["submits_per_s"] == 101_000
    assert "(median of 3: 90,000-120,000)" in cells(table([queued]))['queue-mem: 200,000 queued `Task("true")`, no worker'][0]
    assert median_run(runs[:1]) is runs[0] and "runs" not in runs[0]  # one run is printed as it was
