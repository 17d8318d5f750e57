"""The run-info directory and its four logs after a real run (REFERENCE §5)."""

from __future__ import annotations

import json
import os
import re

import core as vine
from tests.conftest import drain, wait_for_workers

LOGS = ("debug", "transactions", "performance", "taskgraph")

# One pattern per transactions record (after "<time_us> <manager_pid> ").
RJSON = r"\{.*\}"
RECORD_PATTERNS = {
    "MANAGER": r"MANAGER (\d+) (START 0|END \d+)",
    "WORKER": (
        r"WORKER worker-\S+ (CONNECTION \S+:\d+"
        r"|DISCONNECTION (UNKNOWN|IDLE_OUT|FAST_ABORT|FAILURE|STATUS_WORKER|EXPLICIT|XFER_ERRORS)"
        rf"|RESOURCES {RJSON}"
        r"|CACHE_UPDATE \S+ \d+ \d+ \d+"
        r"|TRANSFER (INPUT|OUTPUT) \S+ \d+ \d+ \d+)"
    ),
    "TASK": (
        r"TASK \d+ (READY \S+ (FIRST|MAX)_RESOURCES \d+ "
        + RJSON
        + r"|RUNNING worker-\S+ (FIRST|MAX)_RESOURCES "
        + RJSON
        + r"|WAITING_RETRIEVAL worker-\S+"
        + r"|RETRIEVED [A-Z_]+ -?\d+ "
        + RJSON
        + " "
        + RJSON
        + r"|DONE [A-Z_]+ -?\d+)"
    ),
    "CATEGORY": rf"CATEGORY \S+ (MAX|MIN|FIRST \S+) {RJSON}",
    "LIBRARY": r"LIBRARY \d+ (WAITING|SENT|STARTED|FAILURE) worker-\S+",
    "APPLICATION": r"APPLICATION .*",
}


def run_workflow(tmp_path, start_worker):
    """A small run (file in, buffer out, one failure) with a manager closed at the end."""
    info = tmp_path / "info"
    src = tmp_path / "in.txt"
    src.write_text("log me\n")
    with vine.Manager(port=0, run_info_path=str(info)) as m:
        start_worker(m, cores=1)
        wait_for_workers(m, 1)
        out = m.declare_buffer(None)
        ok = vine.Task("cat in.txt > out.txt")
        ok.add_input(m.declare_file(str(src), cache="workflow"), "in.txt")
        ok.add_output(out, "out.txt")
        m.submit(ok)
        m.submit(vine.Task("exit 2"))
        m.log_txn_app("checkpoint reached")
        done = drain(m, 30)
        assert sorted(t.exit_code for t in done) == [0, 2]
        ids = {t.exit_code: t.id for t in done}
        log_dir = m.logging_directory
        run_dir = m.runtime_directory
        staging = m.staging_directory
        pid = os.getpid()
    return info, log_dir, run_dir, staging, ids, pid


def test_run_info_layout(tmp_path, start_worker):
    info, log_dir, run_dir, staging, _ids, _pid = run_workflow(tmp_path, start_worker)
    recent = info / "most-recent"
    assert recent.is_symlink()
    assert os.path.realpath(recent) == os.path.realpath(run_dir)
    for name in LOGS:
        path = recent / "vine-logs" / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert os.path.realpath(log_dir) == os.path.realpath(recent / "vine-logs")
    assert not os.path.exists(staging)  # staging is removed when the manager closes


def test_transactions_log(tmp_path, start_worker):
    info, _log_dir, _run, _staging, ids, pid = run_workflow(tmp_path, start_worker)
    lines = (info / "most-recent" / "vine-logs" / "transactions").read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    assert header and lines[0].startswith("#")
    recs = []
    for ln in body:
        m = re.fullmatch(r"(\d{16}) (\d+) (.*)", ln)
        assert m, f"bad transactions line: {ln!r}"
        assert int(m.group(2)) == pid
        rec = m.group(3)
        kind = rec.split(" ", 1)[0]
        assert kind in RECORD_PATTERNS, f"unknown record kind: {ln!r}"
        assert re.fullmatch(RECORD_PATTERNS[kind], rec), f"record not in the REFERENCE §5 format: {ln!r}"
        if rec.endswith("}"):
            for blob in re.findall(r"\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}", rec):
                json.loads(blob)
        recs.append(rec)
    assert recs[0] == f"MANAGER {pid} START 0"
    assert re.fullmatch(rf"MANAGER {pid} END \d+", recs[-1])
    times = [int(ln.split(" ", 1)[0]) for ln in body]
    assert times == sorted(times)
    assert any(re.fullmatch(r"WORKER worker-\S+ CONNECTION 127\.0\.0\.1:\d+", r) for r in recs)
    assert any(re.fullmatch(r"WORKER worker-\S+ DISCONNECTION \S+", r) for r in recs)
    assert f"TASK {ids[0]} DONE SUCCESS 0" in recs
    assert f"TASK {ids[2]} DONE SUCCESS 2" in recs
    assert "APPLICATION checkpoint reached" in recs
    # Every task went READY -> RUNNING -> ... -> DONE, in that order.
    for tid in ids.values():
        states = [r.split(" ")[2] for r in recs if r.startswith(f"TASK {tid} ")]
        assert states[0] == "READY" and states[-1] == "DONE", states
        assert states.index("RUNNING") < states.index("RETRIEVED") < states.index("DONE"), states
    sizes = [r for r in recs if " TRANSFER INPUT " in r]
    assert sizes and int(sizes[0].split(" ")[5]) == len("log me\n")  # bytes, not MB


def test_taskgraph_log(tmp_path, start_worker):
    """The taskgraph log is Graphviz dot, as TaskVine's: a file node per declared file, a task node
    per finished task, an edge from each input and to each output."""
    info, *_rest = run_workflow(tmp_path, start_worker)
    text = (info / "most-recent" / "vine-logs" / "taskgraph").read_text()
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]  # dot discards '#' lines
    assert body[0] == 'digraph "taskvine" {' and body[-1] == "}"
    node = re.compile(r'("(?:[^"\\]|\\.)*") \[(.*)\];')
    edge = re.compile(r'("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*");')
    nodes, edges = {}, []
    for ln in body[2:-1]:
        if m := edge.fullmatch(ln):
            edges.append((m[1].strip('"'), m[2].strip('"')))
        else:
            m = node.fullmatch(ln)
            assert m, ln
            nodes[m[1].strip('"')] = m[2]
    tasks = [n for n in nodes if n.startswith("task-")]
    assert sorted(tasks) == ["task-1", "task-2"]
    assert 'label="cat"' in nodes["task-1"]
    assert any(f"{tmp_path / 'in.txt'}" in attrs for attrs in nodes.values())
    # task 1 reads the declared file and writes the buffer; every edge joins declared nodes.
    assert any(dst == "task-1" and src.startswith("file-") for src, dst in edges)
    assert any(src == "task-1" and dst.startswith("buffer-") for src, dst in edges)
    assert all(src in nodes and dst in nodes for src, dst in edges)


def test_performance_log(tmp_path, start_worker):
    info, *_rest = run_workflow(tmp_path, start_worker)
    lines = (info / "most-recent" / "vine-logs" / "performance").read_text().splitlines()
    assert lines[0].startswith("# timestamp workers_connected")
    columns = lines[0][2:].split()
    for col in ("tasks_submitted", "tasks_done", "bytes_sent", "total_cores"):
        assert col in columns
    rows = [ln.split() for ln in lines[1:]]
    assert rows and all(len(r) == len(columns) for r in rows)
    last = dict(zip(columns, rows[-1]))
    assert int(last["tasks_submitted"]) == 2
    assert int(last["tasks_done"]) == 2


def test_debug_log(tmp_path, start_worker):
    info, *_rest = run_workflow(tmp_path, start_worker)
    lines = (info / "most-recent" / "vine-logs" / "debug").read_text().splitlines()
    assert lines
    pattern = r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\.\d{2} vine_manager\[\d+\]\S*: .*"
    bad = [ln for ln in lines if not re.fullmatch(pattern, ln)]
    assert not bad, bad[:5]
    assert any("connected" in ln for ln in lines)


def test_two_managers_get_separate_run_dirs(tmp_path):
    info = tmp_path / "info"
    with vine.Manager(port=0, run_info_path=str(info)) as a, vine.Manager(port=0, run_info_path=str(info)) as b:
        assert a.runtime_directory != b.runtime_directory
        assert os.path.realpath(info / "most-recent") == os.path.realpath(b.runtime_directory)
