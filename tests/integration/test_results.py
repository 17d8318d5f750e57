"""Every result string a task can end with, produced by a real worker (REFERENCE §1.3)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import core as vine
from core.api.files import MissingInputWarning
from tests.conftest import run, wait_until
from tests.integration.conftest import records


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, the worker, may not have reaped it yet).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_new_task_is_unknown():
    t = vine.Task("true")
    assert (t.result, t.exit_code, t.state, t.id) == ("unknown", -1, "INITIAL", 0)


def test_success_keeps_stdout_and_stderr(m):
    t = run(m, vine.Task("echo out; echo err >&2; exit 0"))
    assert (t.result, t.exit_code, t.state) == ("success", 0, "DONE")
    assert t.completed() and t.successful()
    assert "out" in t.std_output and "err" in t.std_output
    assert t.hostname and t.addrport


def test_nonzero_exit_is_success_with_code(m):
    t = run(m, vine.Task("echo failing; exit 3"))
    assert (t.result, t.exit_code, t.output) == ("success", 3, "failing\n")
    assert t.completed() and not t.successful()


def test_input_missing_local_file(m, tmp_path):
    f = m.declare_file(str(tmp_path / "absent.txt"))
    t = vine.Task("cat absent.txt")
    with pytest.warns(MissingInputWarning):
        t.add_input(f, "absent.txt")
    t = run(m, t)
    assert (t.result, t.exit_code) == ("input missing", -1)
    assert not t.completed()


def test_input_missing_file_removed_after_submit(m, tmp_path):
    """The file existed at declaration but is gone at dispatch time."""
    src = tmp_path / "vanishing.txt"
    src.write_text("soon gone")
    f = m.declare_file(str(src))
    t = vine.Task("cat v.txt")
    t.add_input(f, "v.txt")
    src.unlink()
    t = run(m, t)
    assert (t.result, t.exit_code) == ("input missing", -1)


def test_input_missing_file_url(m, tmp_path):
    t = vine.Task("cat nothing.txt")
    t.add_input(m.declare_url(f"file://{tmp_path}/no-such-file.txt"), "nothing.txt")
    t = run(m, t)
    assert (t.result, t.exit_code) == ("input missing", -1)


def test_input_missing_http_404(m, http_root):
    _root, base = http_root
    t = vine.Task("cat nothing.txt")
    t.add_input(m.declare_url(f"{base}/missing.txt"), "nothing.txt")
    t = run(m, t)
    assert (t.result, t.exit_code) == ("input missing", -1)


def test_output_missing_keeps_exit_code(m, tmp_path):
    t = vine.Task("echo forgot the output; exit 4")
    t.add_output(m.declare_file(str(tmp_path / "never.txt")), "never.txt")
    t = run(m, t)
    assert (t.result, t.exit_code) == ("output missing", 4)
    assert t.output == "forgot the output\n"
    assert not (tmp_path / "never.txt").exists()


def test_output_missing_with_exit_zero(m):
    t = vine.Task("true")
    t.add_output(m.declare_buffer(None), "not-made")
    t = run(m, t)
    assert (t.result, t.exit_code) == ("output missing", 0)


def test_max_wall_time(m):
    t = vine.Task("sleep 30")
    t.set_time_max(1)
    start = time.monotonic()
    t = run(m, t)
    assert (t.result, t.exit_code) == ("max wall time", 9)
    assert time.monotonic() - start < 20  # killed, not waited out


def test_max_end_time_in_the_past_never_runs(m):
    t = vine.Task("echo ran")
    t.set_time_end(int((time.time() - 60) * 1e6))
    t = run(m, t)
    assert (t.result, t.exit_code, t.output) == ("max end time", -1, "")
    assert not [r for r in records(m, "TASK", str(t.id)) if r[2] == "RUNNING"]


def test_max_end_time_reached_while_running(m):
    t = vine.Task("sleep 30")
    t.set_time_end(int((time.time() + 1) * 1e6))
    t = run(m, t)
    assert t.result == "max end time"


def test_signal(m):
    t = run(m, vine.Task("kill -9 $$"))
    assert (t.result, t.exit_code) == ("signal", signal.SIGKILL)


def test_cancel_running_task_kills_it(m, tmp_path):
    pidfile = tmp_path / "running.pid"
    tid = m.submit(vine.Task(f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile} && exec sleep 30"))
    wait_until(pidfile.exists, 30, "the task to start")
    pid = int(pidfile.read_text())
    cancelled_before = m.stats.tasks_cancelled
    assert m.cancel_by_task_id(tid)
    t = m.wait_for_task_id(tid, 30)
    assert t is not None and (t.result, t.exit_code) == ("cancelled", -1)
    wait_until(lambda: not pid_alive(pid), 10, "the cancelled task's process to die")
    assert m.stats.tasks_cancelled == cancelled_before + 1
    # The worker is free again: the next task runs.
    assert run(m, vine.Task("echo after")).output == "after\n"


def test_cancel_queued_task_by_tag(manager, tmp_path):
    # No worker at all: the task can only be queued.
    tid = manager.submit(vine.Task("echo never", tag="doomed"))
    other = manager.submit(vine.Task("echo neither", tag="kept"))
    assert manager.cancel_by_task_tag("doomed")
    assert not manager.cancel_by_task_tag("no-such-tag")
    t = manager.wait(10)
    assert t is not None and t.id == tid
    assert (t.result, t.exit_code, t.tag) == ("cancelled", -1, "doomed")
    assert not manager.empty()
    assert manager.cancel_by_task_id(other)
    assert manager.wait(10).id == other
    assert manager.empty()
    assert not manager.cancel_by_task_id(other)  # already returned


def test_cancel_queued_behind_running_task(m, tmp_path):
    """On a busy 1-core worker, cancelling the queued task leaves the running one alone."""
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    first = m.submit(vine.Task(f"touch {started}; while [ ! -e {gate} ]; do sleep 0.02; done; echo first", cores=1))
    queued = m.submit(vine.Task("echo second", cores=1, tag="queued"))
    wait_until(started.exists, 30, "the first task to start")
    assert m.cancel_by_task_tag("queued")
    t = m.wait(10)
    assert (t.id, t.result) == (queued, "cancelled")
    gate.touch()
    t = m.wait(30)
    assert (t.id, t.result, t.output) == (first, "success", "first\n")


def test_exit_126_not_executable(m, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    t = vine.Task("./script.sh")
    t.add_input(m.declare_file(str(script)), "script.sh")
    t = run(m, t)
    assert (t.result, t.exit_code) == ("success", 126)


def test_exit_127_unknown_command(m):
    t = run(m, vine.Task("no-such-command-for-vine-tests"))
    assert (t.result, t.exit_code) == ("success", 127)


def test_result_codes_in_transactions(m, tmp_path):
    """The transactions log spells results in upper case with underscores."""
    ok = run(m, vine.Task("true"))
    missing = vine.Task("true")
    missing.add_output(m.declare_file(str(tmp_path / "x")), "x")
    missing = run(m, missing)

    # The manager flushes its logs every 0.5 s: wait for both records to appear.
    def done() -> dict[int, list[str]]:
        return {int(r[1]): r[3:] for r in records(m, "TASK") if r[2] == "DONE"}

    wait_until(lambda: {ok.id, missing.id} <= set(done()), 10, "DONE records in the transactions log")
    done = done()
    assert done[ok.id] == ["SUCCESS", "0"]
    assert done[missing.id] == ["OUTPUT_MISSING", "0"]


def test_temp_never_made_fails_its_consumer(m):
    """The producer ends without writing the temp: the waiting consumer ends, it does not hang."""
    temp = m.declare_temp()
    producer = vine.Task("exit 1")
    producer.add_output(temp, "o")
    consumer = vine.Task("cat i")
    consumer.add_input(temp, "i")
    m.submit(consumer)
    m.submit(producer)
    got = {}
    for _ in range(2):
        t = m.wait(30)
        assert t is not None, "a task was left hanging"
        got[t.id] = (t.result, t.exit_code)
    assert got[producer.id] == ("output missing", 1)
    assert got[consumer.id] == ("input missing", -1)
