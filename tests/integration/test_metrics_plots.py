"""Metrics, plots and complete logs (issue 9 point 5, issue 12 point 11), drain and slow workers.

``/metrics`` is scraped from a real run while its tasks run; vine_plot_txn_log and vine_graph_log
draw a real run's logs; the performance log's columns are checked against what the run did; the
taskgraph log is parsed as Graphviz dot; programs that end without ``close()`` (a fault table of
child programs) leave all four logs complete; draining and slow-worker disconnection use real
workers.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

import core as vine
from core.errors import ManagerError
from tests.conftest import ROOT, WorkerProcess, drain, wait_for_workers, wait_until

HAVE_PROMETHEUS = importlib.util.find_spec("prometheus_client") is not None
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_prometheus = pytest.mark.skipif(not HAVE_PROMETHEUS, reason="prometheus_client not installed (pip install 'core-vine[metrics]')")
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib not installed (pip install 'core-vine[plots]')")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scrape(port: int) -> dict[str, float]:
    """The ``vine_*`` gauges at ``http://127.0.0.1:port/metrics``."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        if line.startswith("vine_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def read_log(m: vine.Manager, name: str) -> str:
    with open(os.path.join(m.logging_directory, name)) as fh:
        return fh.read()


def performance_rows(text: str) -> list[dict[str, float]]:
    lines = text.splitlines()
    if not lines:
        return []  # not flushed yet (the ticker flushes every 0.5 s)
    columns = lines[0][2:].split()
    return [dict(zip(columns, map(float, ln.split()))) for ln in lines[1:]]


def logged_peak(m: vine.Manager, column: str) -> float:
    """The largest value ``column`` took in the performance log so far (flushed by the ticker)."""
    rows = performance_rows(read_log(m, "performance"))
    return max((r[column] for r in rows), default=0)


# -- /metrics -----------------------------------------------------------------------------------------
@needs_prometheus
@pytest.mark.timeout(60)
def test_metrics_scraped_during_a_run(tmp_path, start_worker):
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "info"), prometheus_port=0)
    try:
        port = m.prometheus_port
        assert isinstance(port, int) and port > 0
        before = scrape(port)
        assert before["vine_tasks_submitted"] == 0 and before["vine_workers_connected"] == 0
        start_worker(m, cores=2)
        wait_for_workers(m, 1)
        ids = [m.submit(vine.Task("sleep 0.6")) for _ in range(4)]
        wait_until(lambda: scrape(port).get("vine_tasks_running", 0) >= 1, 20, "a scrape showing a running task")
        during = scrape(port)
        assert during["vine_tasks_submitted"] == 4 and during["vine_workers_connected"] == 1
        assert during["vine_total_cores"] == 2
        # Nobody waits yet: finished tasks pile up as results.
        wait_until(lambda: scrape(port).get("vine_tasks_with_results", 0) == 4, 20, "four results waiting")
        done = drain(m, 30)
        assert sorted(t.id for t in done) == sorted(ids)
        after = scrape(port)
        assert after["vine_tasks_done"] == 4 and after["vine_tasks_running"] == 0
        assert after["vine_time_execute"] > during["vine_time_execute"]  # µs of the 4 runs
    finally:
        m.close()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        scrape(port)  # stopped at close()


@needs_prometheus
def test_metrics_port_in_use_and_bad_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        with pytest.raises(ManagerError, match="prometheus_port"):
            vine.Manager(port=0, run_info_path=str(tmp_path / "a"), prometheus_port=busy.getsockname()[1])
    with pytest.raises(ValueError, match="prometheus_port must be a TCP port"):
        vine.Manager(port=0, run_info_path=str(tmp_path / "b"), prometheus_port=70000)


def test_metrics_without_the_library_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    with pytest.raises(ManagerError, match=re.escape("core-vine[metrics]")):
        vine.Manager(port=0, run_info_path=str(tmp_path / "info"), prometheus_port=0)
    with vine.Manager(port=0, run_info_path=str(tmp_path / "info2")) as m:
        assert m.prometheus_port is None


def test_connection_in_handshake_is_workers_init(manager):
    with socket.create_connection(("127.0.0.1", manager.port)) as sock:
        sock.sendall(b"\x00")  # the start of a frame: the manager now waits in the handshake
        wait_until(lambda: manager.stats.workers_init == 1, 10, "the connection counted in workers_init")
    wait_until(lambda: manager.stats.workers_init == 0, 10, "workers_init back to 0")


def test_exhausted_attempts_count_in_time_execute_exhaustion():
    from core.manager.metrics import TaskTimes

    times = TaskTimes()
    for result, us in ((vine.VINE_RESULT_SUCCESS, 2e6), (vine.VINE_RESULT_RESOURCE_EXHAUSTION, 5e5), (vine.VINE_RESULT_SIGNAL, 1e5)):
        t = vine.Task("true")
        t.metrics["time_workers_execute_last"] = t.metrics["time_workers_execute_all"] = us
        times.add(t, result, 0)
    assert (times.execute, times.execute_good, times.execute_exhaustion) == (2.6e6, 2e6, 5e5)
    assert times.tasks == 3 and times.instantaneous == 1e5 / 1000  # 0.1 s of work per ms of overhead


# -- one real run, its logs drawn and checked -------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Two workers, a cached file input, buffer outputs, a failure, a cancelled task, a blocked host."""
    base = tmp_path_factory.mktemp("run")
    src = base / "in.txt"
    src.write_bytes(b"x" * 200_000)
    m = vine.Manager(port=0, run_info_path=str(base / "info"))
    m.tune("perf-log-interval", 0.1)
    workers = [WorkerProcess(m.port, str(base / f"w{i}")) for i in range(2)]
    try:
        wait_for_workers(m, 2)
        wait_until(lambda: logged_peak(m, "workers_idle") == 2, 10, "a performance row with two idle workers")
        f = m.declare_file(str(src), cache=True)
        for i in range(6):
            t = vine.Task("cat in.txt > out.txt; sleep 0.3" + ("; exit 3" if i == 2 else ""))
            t.add_input(f, "in.txt")
            t.add_output(m.declare_buffer(None), "out.txt")
            m.submit(t)
        m.block_host(socket.gethostname())
        wait_until(lambda: logged_peak(m, "workers_blocked") == 2, 10, "a performance row with the blocked workers")
        m.unblock_host(socket.gethostname())
        never = vine.Task("sleep 30")
        never.set_cores(64)  # fits no worker: waits until cancelled
        m.cancel_by_task_id(m.submit(never))
        done = drain(m, 60)
        m.log_txn_app("run finished")
    finally:
        m.close()
        for w in workers:
            w.reap()
    return m, done


def test_performance_log_fills_what_happened(finished_run):
    m, done = finished_run
    rows = performance_rows(read_log(m, "performance"))
    peak = {c: max(r[c] for r in rows) for c in rows[0]}
    happened = [
        "workers_connected", "workers_idle", "workers_busy", "workers_able", "workers_joined", "workers_removed",
        "workers_blocked", "tasks_waiting", "tasks_on_workers", "tasks_running", "tasks_submitted", "tasks_dispatched",
        "tasks_done", "tasks_failed", "tasks_successful", "tasks_cancelled", "time_send", "time_receive",
        "time_send_good", "time_receive_good", "time_status_msgs", "time_internal", "time_polling", "time_application",
        "time_scheduling", "time_execute", "time_execute_good", "bytes_sent", "bytes_received", "bandwidth",
        "capacity_tasks", "capacity_cores", "capacity_memory", "capacity_disk", "capacity_instantaneous",
        "capacity_weighted", "total_cores", "total_memory", "total_disk", "committed_cores", "committed_memory",
        "committed_disk", "max_cores", "max_memory", "max_disk", "min_cores", "min_memory", "min_disk", "inuse_cache",
    ]
    assert [c for c in happened if peak[c] <= 0] == []
    cumulative = [c for c in rows[0] if c.startswith("time_") or c in (
        "tasks_submitted", "tasks_dispatched", "tasks_done", "workers_joined", "workers_removed", "bytes_sent", "bytes_received")]
    assert [c for c in cumulative if any(b[c] < a[c] for a, b in itertools.pairwise(rows))] == []  # totals never go back
    last = rows[-1]
    assert last["tasks_submitted"] == 7 and last["tasks_done"] == 7
    assert last["tasks_cancelled"] == 1
    ok = sum(1 for t in done if t.result_code == vine.VINE_RESULT_SUCCESS and t.exit_code == 0)
    assert last["tasks_successful"] == ok == 5 and last["tasks_failed"] == 2  # exit 3, and the cancelled one
    assert peak["max_cores"] == peak["min_cores"] == 1 and peak["total_cores"] == 2
    assert last["bytes_received"] >= 5 * 200_000  # the outputs came back
    assert last["time_execute"] >= 6 * 0.3e6  # six runs of at least 0.3 s, in µs


def test_taskgraph_is_graphviz_dot(finished_run):
    m, _done = finished_run
    text = read_log(m, "taskgraph")
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert body[0] == 'digraph "taskvine" {' and body[-1] == "}"
    quoted = r'"(?:[^"\\]|\\.)*"'
    stmt = re.compile(rf"(?:{quoted}|\w+) \[[^\]]*\];|{quoted} -> {quoted};")
    assert all(stmt.fullmatch(ln) for ln in body[1:-1]), [ln for ln in body[1:-1] if not stmt.fullmatch(ln)]
    assert text.count("{") == text.count("}") == 1  # no stray braces inside labels
    nodes = set(re.findall(rf"^({quoted}) \[", text, re.MULTILINE))
    edges = re.findall(rf"^({quoted}) -> ({quoted});", text, re.MULTILINE)
    tasks = {n for n in nodes if n.startswith('"task-')}
    assert len(tasks) == 7  # every task returned, the cancelled one too
    assert {a for a, b in edges if b in tasks} <= nodes and {b for a, b in edges if a in tasks} <= nodes
    for t in tasks - {'"task-7"'}:  # one input file, one output buffer each
        assert sum(1 for a, b in edges if b == t) == 1 and sum(1 for a, b in edges if a == t) == 1
    assert not [e for e in edges if '"task-7"' in e]  # the cancelled task declared no files


@needs_matplotlib
@pytest.mark.timeout(90)
def test_plots_from_the_run(finished_run, tmp_path):
    m, _done = finished_run
    txn = os.path.join(m.logging_directory, "transactions")
    perf = os.path.join(m.logging_directory, "performance")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    out = tmp_path / "txn-workers.png"
    r = subprocess.run([sys.executable, "-m", "core.tools.plot_txn", "--mode", "workers", txn, str(out)],
                       capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "7 tasks (7 done), 2 workers" in r.stdout
    assert out.read_bytes()[:8] == PNG_MAGIC

    from core.tools import graph_log, plot_txn

    tasks_png = tmp_path / "txn-tasks.png"
    assert plot_txn.main(["--mode", "tasks", txn, str(tasks_png)]) == 0
    assert tasks_png.read_bytes()[:8] == PNG_MAGIC
    with open(txn) as fh:
        run = plot_txn.parse_transactions(fh)
    assert run.tasks == 7 and run.done_tasks() == 7 and len(run.workers) == 2 and run.end is not None
    assert plot_txn.task_counts(run)[-1][1:] == (0, 0, 7)  # nothing waiting, nothing running, all done

    prefix = tmp_path / "perf"
    r = subprocess.run([sys.executable, "-m", "core.tools.graph_log", "-Tpng", "-o", str(prefix), perf],
                       capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "tasks: 7 submitted, 7 done; workers: 2 joined" in r.stdout
    pngs = sorted(p.name for p in tmp_path.glob("perf.*.png"))
    assert pngs == sorted(f"perf.{g}.png" for g in graph_log.GRAPHS)
    assert all((tmp_path / p).read_bytes()[:8] == PNG_MAGIC for p in pngs)


def test_plot_tools_refuse_what_is_not_their_log(tmp_path, capsys):
    from core.tools import graph_log, plot_txn

    junk = tmp_path / "junk"
    junk.write_text("hello world\n")
    assert plot_txn.main([str(junk), str(tmp_path / "x.png")]) == 1
    assert "not a transactions record" in capsys.readouterr().err
    assert graph_log.main(["-o", str(tmp_path / "p"), str(junk)]) == 1
    assert "is it a performance log" in capsys.readouterr().err
    assert graph_log.main(["-Tsvg", str(junk)]) == 2
    assert not list(tmp_path.glob("*.png"))


# -- complete logs without close() -----------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    how = sys.argv[1]
    if how == "term-handled":
        def on_term(signum, frame):
            open(os.path.join({base!r}, "handler-ran"), "w").close()
            sys.exit(7)
        signal.signal(signal.SIGTERM, on_term)
    if how == "term-ignored":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import core
    m = core.Manager(port=0, run_info_path={info!r})
    m.tune("perf-log-interval", 60)  # no row from the ticker: the last row must come from the exit
    m.submit(core.Task("true"))  # no worker: it waits
    m.log_txn_app("last words")
    m.log_debug_app("last debug line")
    if how == "raise":
        raise RuntimeError("the program failed")
    if how == "exit":
        sys.exit(3)
    if how == "no-close":
        pass  # the script just ends
    else:
        print("ready", flush=True)
        m.wait(20 if how != "term-ignored" else 1.5)
""")

# (how, signal sent after "ready", expected exit status)
UNCLEAN_EXITS = [
    ("raise", None, 1),
    ("exit", None, 3),
    ("no-close", None, 0),
    ("term", signal.SIGTERM, -signal.SIGTERM),  # killed by the same signal, after the logs were closed
    ("term-handled", signal.SIGTERM, 7),  # the program's own handler ran (and chose sys.exit)
    ("term-ignored", signal.SIGTERM, 0),  # an ignored signal stays ignored
    ("int", signal.SIGINT, None),  # KeyboardInterrupt: status 1 or -SIGINT, by Python version
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how,sig,status", UNCLEAN_EXITS, ids=[row[0] for row in UNCLEAN_EXITS])
def test_logs_complete_without_close(tmp_path, how, sig, status):
    info = tmp_path / "info"
    script = tmp_path / "prog.py"
    script.write_text(CHILD.format(root=ROOT, base=str(tmp_path), info=str(info)))
    proc = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if sig is not None:
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(sig)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
    if status is None:
        assert proc.returncode in (1, -signal.SIGINT), stderr
    else:
        assert proc.returncode == status, stderr
    if how == "term-handled":
        assert (tmp_path / "handler-ran").exists()
    logs = info / "most-recent" / "vine-logs"
    txn = (logs / "transactions").read_text().splitlines()
    assert txn[-1].split()[2:4] == ["MANAGER", txn[-1].split()[1]] and txn[-1].split()[4] == "END", txn[-3:]
    assert any(ln.endswith(" APPLICATION last words") for ln in txn)
    assert any(" TASK 1 READY " in ln for ln in txn)
    debug = (logs / "debug").read_text()
    assert "app: last debug line" in debug and debug.rstrip().endswith("manager end")
    perf = (logs / "performance").read_text().splitlines()
    assert len(perf) >= 2 and dict(zip(perf[0][2:].split(), perf[-1].split()))["tasks_submitted"] == "1"
    graph = (logs / "taskgraph").read_text().splitlines()
    assert graph[-1] == "}"


# -- drain and slow workers ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_draining_a_host_releases_its_workers_when_idle(manager, start_worker):
    host = socket.gethostname()
    assert manager.set_draining_by_hostname(host) == 0  # no worker there yet
    w1 = start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    first = manager.submit(vine.Task("sleep 1.5"))
    wait_until(lambda: manager.stats.tasks_running == 1, 20, "the first task to run")
    assert manager.set_draining_by_hostname(host) == 1
    later = [manager.submit(vine.Task("true")) for _ in range(2)]
    t = manager.wait_for_task_id(first, 20)
    assert t is not None and t.result_code == vine.VINE_RESULT_SUCCESS  # its running task finished there
    assert w1.proc.wait(15) == 0  # then it was told to exit
    s = manager.stats
    assert s.workers_released == 1 and s.workers_connected == 0 and s.workers_lost == 0
    assert s.tasks_waiting == 2 and s.tasks_dispatched == 1  # nothing new went to the draining worker
    start_worker(manager, cores=1)  # a worker connecting later is not draining
    done = drain(manager, 30)
    assert sorted(t.id for t in done) == sorted(later)
    manager.close()
    txn = read_log(manager, "transactions")
    assert re.search(r"WORKER worker-\S+ DISCONNECTION EXPLICIT", txn)


@pytest.mark.timeout(60)
def test_undraining_keeps_the_worker(manager, start_worker):
    host = socket.gethostname()
    start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    first = manager.submit(vine.Task("sleep 1"))
    wait_until(lambda: manager.stats.tasks_running == 1, 20, "the first task to run")
    assert manager.set_draining_by_hostname(host, True) == 1
    assert manager.set_draining_by_hostname(host, drain=False) == 1
    more = manager.submit(vine.Task("true"))
    done = drain(manager, 30)
    assert sorted(t.id for t in done) == sorted([first, more])
    assert manager.stats.workers_released == 0 and manager.stats.workers_connected == 1
    with pytest.raises(ValueError, match="host name"):
        manager.set_draining_by_hostname("")


@pytest.mark.timeout(60)
def test_slow_worker_is_disconnected_and_its_task_runs_elsewhere(manager, tmp_path):
    # Same command everywhere; it is slow only in the sandbox of the worker whose workdir says so.
    slow_cmd = 'case "$PWD" in *slowpoke*) sleep 40;; *) sleep 0.2;; esac'
    manager.enable_disconnect_slow_workers(4)
    fast = WorkerProcess(manager.port, str(tmp_path / "fast"), cores=1)
    try:
        wait_for_workers(manager, 1)
        for _ in range(3):  # the category's mean: ~0.2 s
            t = vine.Task("sleep 0.2")
            t.set_category("sleepy")
            manager.submit(t)
        drain(manager, 30)
        # The fast worker is busy when the slow one arrives, so the slow one gets the task.
        blocker = manager.submit(vine.Task("sleep 3"))
        wait_until(lambda: manager.stats.tasks_running == 1, 20, "the blocker to run")
        slow = WorkerProcess(manager.port, str(tmp_path / "slowpoke"), cores=1)
        try:
            wait_for_workers(manager, 2)
            t = vine.Task(slow_cmd)
            t.set_category("sleepy")
            tid = manager.submit(t)
            wait_until(lambda: manager.stats.workers_slow >= 1, 20, "the slow worker to be disconnected")
            done = {t.id: t for t in drain(manager, 40)}
            assert done[tid].result_code == vine.VINE_RESULT_SUCCESS and done[tid].exit_code == 0
            assert done[blocker].result_code == vine.VINE_RESULT_SUCCESS
        finally:
            slow.reap()
    finally:
        fast.reap()
    manager.close()
    txn = read_log(manager, "transactions")
    strikes = re.findall(r"WORKER (worker-\S+) DISCONNECTION FAST_ABORT", txn)  # it may come back and strike again
    aborted = set(strikes)
    ran_on = re.findall(rf"TASK {tid} RUNNING (worker-\S+) ", txn)
    assert aborted and ran_on[0] in aborted  # first sent to the slow worker, which was cut off
    assert ran_on[-1] not in aborted  # and finished on the fast one
    assert manager.stats.workers_slow == len(strikes)


def test_slow_worker_multiplier_checked(manager):
    assert manager.enable_disconnect_slow_workers(0.5) == 0  # below 1: off, as TaskVine
    with pytest.raises(ManagerError, match="multiplier must be a number"):
        manager.enable_disconnect_slow_workers("fast")
    with pytest.raises(ManagerError, match="NaN"):
        manager.enable_disconnect_slow_workers_category("sleepy", float("nan"))


@pytest.mark.timeout(30)
def test_idle_worker_leaving_is_idle_out(manager, start_worker):
    w = start_worker(manager, cores=1, extra=["--idle-timeout", "1"])
    wait_for_workers(manager, 1)
    assert w.proc.wait(15) == 0
    wait_until(lambda: manager.stats.workers_connected == 0, 10, "the idle worker to be gone")
    assert manager.stats.workers_idled_out == 1
    manager.close()
    assert re.search(r"WORKER worker-\S+ DISCONNECTION IDLE_OUT", read_log(manager, "transactions"))
