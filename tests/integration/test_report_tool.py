"""TaskVine's own report tool (``taskvine-report-tool``: ``vine_parse``, ``vine_report``) reads our logs.

A real run (two workers, a file from the manager, temps copied peer to peer, buffers back, a task that
exits 3, a worker SIGKILLed under a running task) is parsed by the real ``vine_parse``; its counts of
tasks, workers, files and transfers, read from the pickles and CSV files it writes, are checked
against what the run did. ``vine_report`` then serves the parsed run over HTTP.

Skipped, with the reason, when the tool is not installed (the ``report`` extra).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

import core as vine
from core.manager.logs import NO_BREAK_SPACE, tool_safe
from tests.conftest import WorkerProcess, drain, wait_for_workers, wait_until

needs_tool = pytest.mark.skipif(importlib.util.find_spec("taskvine_report") is None,
                                reason="taskvine-report-tool is not installed (pip install -e '.[report]')")

BIN = os.path.dirname(sys.executable)
# The tool asks pip whether a newer release exists before it starts; with no index it does not go online.
TOOL_ENV = {**os.environ, "PIP_NO_INDEX": "1"}
SUCCESS = 0
WORKER_DISCONNECTED = 15 << 3  # the tool's status for an attempt lost with its worker


def tool(name: str) -> list[str]:
    script = os.path.join(BIN, name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", f"taskvine_report.cli.{name.split('_')[1]}"]


def vine_parse(run_dir: str) -> dict[str, Any]:
    """Run the real vine_parse on one run directory; return what it found."""
    proc = subprocess.run(
        [*tool("vine_parse"), "--logs-dir", os.path.dirname(run_dir), "--templates", os.path.basename(run_dir),
         "--checkpoint-pkl-files"],
        check=False, capture_output=True, text=True, timeout=120, env=TOOL_ENV, cwd=os.path.dirname(run_dir),
    )
    # vine_parse exits 0 even when a directory fails: its report says which.
    assert proc.returncode == 0 and "Successfully processed" in proc.stdout and "Error" not in proc.stdout, proc.stdout + proc.stderr
    import cloudpickle  # the tool's own pickles hold its classes: readable where the tool is installed

    found: dict[str, Any] = {}
    for name in ("tasks", "workers", "files"):
        with open(os.path.join(run_dir, "pkl-files", f"{name}.pkl"), "rb") as fh:
            found[name] = cloudpickle.load(fh)
    with open(os.path.join(run_dir, "csv-files", "metadata.csv"), newline="") as fh:
        found["metadata"] = {row["key"]: json.loads(row["value"]) for row in csv.DictReader(fh)}
    return found


def worker_ids(run_dir: str) -> dict[str, str]:
    """address -> worker id, from the run's own transactions log."""
    out = {}
    with open(os.path.join(run_dir, "vine-logs", "transactions")) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 6 and parts[2] == "WORKER" and parts[4] == "CONNECTION":
                out[parts[5]] = parts[3]
    return out


def addr(entry: tuple[str, int, int]) -> str:
    return f"{entry[0]}:{entry[1]}"


def test_free_text_keeps_its_words_but_not_the_tool_s_tokens():
    text = "no connected worker can ever hold task 3; put the complete result (state change: none), manager end"
    safe = tool_safe(text)
    assert safe.replace(NO_BREAK_SPACE, " ") == text
    tokens = safe.split(" ")
    assert not {"connected", "put", "complete"} & set(tokens)
    assert "state change:" not in safe and "manager end" not in safe
    assert tool_safe("worker 127.0.0.1:9 removed") != "worker 127.0.0.1:9 removed"
    assert tool_safe("plain words stay as they are") == "plain words stay as they are"


@pytest.fixture(scope="module")
def parsed_run(tmp_path_factory) -> dict[str, Any]:
    """One real run, parsed by vine_parse: shared by the checks of its counts and by vine_report's."""
    tmp = tmp_path_factory.mktemp("report-run")
    src = tmp / "in.txt"
    src.write_text("line\n" * 50)
    workers: list[WorkerProcess] = []
    try:
        with vine.Manager(port=0, run_info_path=str(tmp / "info")) as m:
            m.tune("temp-replica-count", 2)  # every temp is copied to the other worker, peer to peer
            workers += [WorkerProcess(m.port, str(tmp / f"worker{i}"), cores=2) for i in range(2)]
            wait_for_workers(m, 2)
            inp = m.declare_file(str(src), cache="workflow")
            producers, consumers, temps, buffers = [], [], [], []
            for i in range(3):
                t = vine.Task(f"cat in.txt > t.txt; echo {i} >> t.txt")
                t.add_input(inp, "in.txt")
                temp = m.declare_temp()
                t.add_output(temp, "t.txt")
                m.submit(t)
                producers.append(t)
                temps.append(temp)
            for temp in temps:
                t = vine.Task("wc -l < t.txt > n.txt")
                t.add_input(temp, "t.txt")
                out = m.declare_buffer(None)
                t.add_output(out, "n.txt")
                m.submit(t)
                consumers.append(t)
                buffers.append(out)
            failing = vine.Task("exit 3")
            note = m.declare_buffer("x")
            failing.add_input(note, "in put.txt")  # a remote name with a space (URL-encoded in the log)
            m.submit(failing)
            # Free text in TaskVine's words must not become a worker, a transfer or a parse error.
            m.log_debug_app("worker 127.0.0.9:1 connected; put the complete stdout 1 2 of task 7: kill 7, unlink x")
            done = drain(m, 60)
            assert sorted(t.exit_code for t in done) == [0] * 6 + [3]
            assert sorted(int(b.contents()) for b in buffers) == [51, 51, 51]
            run_dir = m.runtime_directory
    finally:
        for w in workers:
            w.reap()
    started = time.monotonic()
    found = vine_parse(run_dir)
    found["parse_seconds"] = time.monotonic() - started
    found.update(run_dir=run_dir, producers=producers, consumers=consumers, failing=failing, temps=temps, buffers=buffers, note=note)
    return found


@needs_tool
@pytest.mark.timeout(120)
def test_vine_parse_finds_every_task_worker_file_and_transfer(parsed_run):
    found = parsed_run
    run_dir, producers, consumers, failing = found["run_dir"], found["producers"], found["consumers"], found["failing"]
    temps, buffers = found["temps"], found["buffers"]
    ran = producers + consumers + [failing]
    assert found["parse_seconds"] < 40

    meta = found["metadata"]
    assert meta["total_workers"] == 2
    assert meta["total_tasks"] == len(ran) == 7
    assert meta["successful_tasks"] == 7  # "exit 3" ran to completion: TaskVine's result is success
    assert meta["total_files"] == 6  # the files tasks made (3 temps, 3 buffers); inputs from the manager are not counted

    ids = worker_ids(run_dir)
    workers = found["workers"]
    assert sorted(addr(e) for e in workers) == sorted(ids)
    for entry, w in workers.items():
        assert w.hash == ids[addr(entry)] and w.cores == 2 and w.transfer_port
        assert len(w.time_connected) == len(w.time_disconnected) == 1

    tasks = found["tasks"]
    assert sorted(tasks) == sorted((t.id, 1) for t in ran)  # one attempt each
    for t in ran:
        info = tasks[(t.id, 1)]
        assert addr(info.worker_entry) == t.addrport
        assert info.task_status == SUCCESS and info.exit_status == t.exit_code
        assert info.when_ready <= info.when_running <= info.when_waiting_retrieval <= info.when_retrieved <= info.when_done
    for producer, consumer, temp, out in zip(producers, consumers, temps, buffers):
        assert tasks[(producer.id, 1)].output_files == {temp.cache_name}
        assert tasks[(consumer.id, 1)].input_files == {temp.cache_name}
        assert tasks[(consumer.id, 1)].output_files == {out.cache_name}

    assert tasks[(failing.id, 1)].input_files == {found["note"].cache_name}

    files = found["files"]
    assert sorted(files) == sorted(f.cache_name for f in temps + buffers)
    for producer, temp in zip(producers, temps):
        f = files[temp.cache_name]
        assert f.producers == {(producer.id, 1)}
        made = [tr for tr in f.get_flattened_transfers() if not hasattr(tr, "source")]
        copied = [tr for tr in f.get_flattened_transfers() if hasattr(tr, "source")]
        # made once, where its producer ran; copied once, from there to the other worker
        assert [addr(tr.dest_worker_entry) for tr in made] == [producer.addrport]
        assert len(copied) == 1 and addr(copied[0].source) == producer.addrport
        assert addr(copied[0].dest_worker_entry) != producer.addrport
    for consumer, out in zip(consumers, buffers):
        made = files[out.cache_name].get_flattened_transfers()
        assert [addr(tr.dest_worker_entry) for tr in made] == [consumer.addrport]
        assert made[0].time_stage_out is not None  # returned, then dropped by the worker
    incoming = sum(1 for f in files.values() for tr in f.get_flattened_transfers())
    assert incoming == 3 * 2 + 3


@needs_tool
@pytest.mark.timeout(120)
def test_vine_parse_sees_the_attempt_lost_with_a_killed_worker_and_the_recovery_task(tmp_path, start_worker):
    marker = tmp_path / "started"
    with vine.Manager(port=0, run_info_path=str(tmp_path / "info")) as m:
        first = start_worker(m, cores=1)
        wait_for_workers(m, 1)
        temp = m.declare_temp()
        producer = vine.Task("echo made > t.txt")
        producer.add_output(temp, "t.txt")
        m.submit(producer)
        assert m.wait(30) is producer and producer.result == "success"
        out = m.declare_buffer(None)
        long = vine.Task(f"if [ -e {marker} ]; then echo again > o.txt; else touch {marker}; sleep 60; fi")
        long.add_output(out, "o.txt")
        m.submit(long)
        wait_until(marker.exists, 30, "the task to start")
        first.kill()  # SIGKILL, mid-task: the attempt and the only copy of the temp are lost
        wait_until(lambda: m.stats.workers_connected == 0, 30, "the manager to notice the lost worker")
        start_worker(m, cores=1)
        consumer = vine.Task("cat t.txt")
        consumer.add_input(temp, "t.txt")
        m.submit(consumer)
        back = drain(m, 60)
        assert sorted(t.id for t in back) == sorted([long.id, consumer.id])
        assert out.contents() == b"again\n" and consumer.output == "made\n"
        run_dir = m.runtime_directory

    found = vine_parse(run_dir)
    meta = found["metadata"]
    assert meta["total_workers"] == 2
    # The tool counts attempts: the producer, two of the long task, the recovery task, the consumer.
    assert meta["total_tasks"] == 5 and meta["recovery_tasks"] == 1 and meta["successful_tasks"] == 4
    tasks = found["tasks"]
    lost, second = tasks[(long.id, 1)], tasks[(long.id, 2)]
    assert lost.task_status == WORKER_DISCONNECTED and lost.worker_entry != second.worker_entry
    assert second.task_status == SUCCESS and addr(second.worker_entry) == long.addrport
    assert found["files"][out.cache_name].producers == {(long.id, 1), (long.id, 2)}
    (recovery,) = [t for t in tasks.values() if t.is_recovery_task]
    assert recovery.task_status == SUCCESS and addr(recovery.worker_entry) == consumer.addrport
    assert found["files"][temp.cache_name].producers == {(producer.id, 1), (recovery.task_id, 1)}
    assert addr(tasks[(producer.id, 1)].worker_entry) == producer.addrport != consumer.addrport


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_tool
@pytest.mark.timeout(120)
def test_vine_report_serves_a_parsed_run(parsed_run):
    run_dir = parsed_run["run_dir"]
    port = _free_port()
    server = subprocess.Popen([*tool("vine_report"), "--logs-dir", os.path.dirname(run_dir), "--port", str(port), "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=TOOL_ENV,
                              cwd=os.path.dirname(run_dir))  # it writes .taskvine_report.log where it runs
    try:
        def listening() -> bool:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else "vine_report exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_until(listening, 60, "vine_report to listen")
        base = f"http://127.0.0.1:{port}/api"
        name = os.path.basename(run_dir)
        with urllib.request.urlopen(f"{base}/runtime-template-list", timeout=30) as r:
            assert name in json.load(r)
        with urllib.request.urlopen(f"{base}/worker-lifetime?folder={name}", timeout=30) as r:
            lifetime = json.load(r)
        assert sorted(lifetime["idx_to_worker_key"].values()) == sorted(worker_ids(run_dir))
    finally:
        server.kill()
        server.wait(10)
        if server.stderr:
            server.stderr.close()
