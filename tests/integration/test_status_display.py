"""``Manager(status_display_interval=S)``: the live status display, in a real terminal (a pty), on a
captured stderr (the plain-line form), and in a real Jupyter kernel (nbclient), each with a real
worker; the refresh pacing with a clock of the test's own; and the values refused."""

from __future__ import annotations

import fcntl
import html.parser
import math
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import core as vine
from core.manager.status_display import StatusDisplay, StatusSnapshot, check_status_interval, format_bytes
from tests.conftest import ROOT, drain

N_TASKS = 12


def _submit_workflow(m: Any, n: int = N_TASKS, failing: int = 0) -> None:
    """``n`` tasks in two categories, the "slow" ones measurably slower, ``failing`` of them failing."""
    for i in range(n):
        slow = i % 3 == 0
        t = vine.Task("sleep 0.2" if slow else ("exit 3" if i < failing * 3 and i % 3 == 1 else "true"))
        t.set_category("slow" if slow else "quick")
        m.submit(t)


# -- values refused --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, "1", [1]])
def test_bad_intervals_are_refused_naming_the_value(tmp_path, bad):
    with pytest.raises(ValueError, match="status_display_interval") as info:
        vine.Manager(port=0, run_info_path=str(tmp_path / "run"), status_display_interval=bad)
    assert repr(bad) in str(info.value)


def test_interval_checks_and_off_by_default(tmp_path):
    assert check_status_interval(None) is None
    assert check_status_interval(2) == 2.0 and check_status_interval(0.25) == 0.25
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run"))
    try:
        assert m._status_display is None  # off: wait() pays one `is None` check
    finally:
        m.close()


# -- pacing and forms, with the test's own clock and numbers -------------------------------------------------

def test_refreshes_at_most_every_interval_and_only_on_change(capsys):
    now = [100.0]
    stats = {"workers_connected": 1, "tasks_waiting": 4}
    means: dict[str, float] = {}
    display = StatusDisplay(0.5, lambda: (dict(stats), dict(means)), "vine :1", notebook=False, clock=lambda: now[0])

    display.tick()  # the first tick refreshes
    assert display.refreshes == 1 and display.seconds_until_due() == 0.5
    stats["tasks_waiting"] = 3
    now[0] += 0.49
    display.tick()  # not yet due, though the numbers changed
    assert display.refreshes == 1 and display.seconds_until_due() == pytest.approx(0.01)
    now[0] += 0.01
    display.tick()
    assert display.refreshes == 2
    now[0] += 5
    display.tick()  # due, but nothing changed: no line
    assert display.refreshes == 2
    stats.update(tasks_waiting=0, tasks_done=4, bytes_sent=3 << 20, bytes_peer=2048)
    means.update(fast=0.01, slow=2.5)
    display.finish()  # always shown, even if due later
    display.tick()
    now[0] += 5
    display.tick()  # finished: nothing more
    assert display.refreshes == 3

    lines = capsys.readouterr().err.split("\n")
    assert lines[-1] == "" and len(lines) == 4  # captured stderr is no TTY: one plain line per refresh
    assert "waiting 4" in lines[0] and "waiting 3" in lines[1]
    assert "done 4" in lines[2] and "sent 3.0 MiB" in lines[2] and "peer 2.0 KiB" in lines[2]
    assert lines[2].endswith("slowest slow 2.50 s")
    assert "\r" not in "".join(lines)


class _BrokenStream:
    """A stderr whose writes fail in a way no display expects (as a frontend's own errors can)."""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        raise RuntimeError("frontend gone")

    def flush(self) -> None:
        pass


def test_a_failing_display_turns_off_and_close_still_closes(tmp_path, monkeypatch, caplog):
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run"), status_display_interval=0.05)
    monkeypatch.setattr(sys, "stderr", _BrokenStream())
    try:
        m.submit(vine.Task("true"))
        assert m.wait(0) is None  # refreshes, fails, goes on
        assert m._status_display is not None and m._status_display.refreshes == 0
        assert "status display turned off: RuntimeError: frontend gone" in caplog.text
    finally:
        m.close()
    assert not m._thread.is_alive()  # close() went all the way


def test_snapshot_forms():
    snap = StatusSnapshot.from_stats({"workers_connected": 2.0, "tasks_done": 7, "tasks_failed": 1}, {"a": 1.0, "b": 3.0})
    assert (snap.workers, snap.done, snap.failed, snap.waiting, snap.slowest_category) == (2, 7, 1, 0, "b")
    values = _table_values(snap.html("vine <x>", final=True))
    assert values["workers"] == "2" and values["done"] == "7" and values["slowest_category"] == "b"
    assert values["state"] == "closed" and values["caption"].startswith("vine <x>")  # escaped, read back
    none_yet = StatusSnapshot.from_stats({}, {})
    assert none_yet.slowest_category is None and none_yet.line("v").endswith("slowest -")
    assert [format_bytes(n) for n in (0, 1023, 1536, 5 << 30)] == ["0 B", "1023 B", "1.5 KiB", "5.0 GiB"]


# -- a real manager and worker: stderr that is no terminal -----------------------------------------------------

@pytest.mark.timeout(60)
def test_plain_lines_on_a_captured_stderr(tmp_path, start_worker, capsys):
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run"), status_display_interval=0.05)
    try:
        _submit_workflow(m, failing=1)
        start_worker(m, cores=2, memory=500, disk=1000)
        finished = drain(m, 40)
        assert m._status_display is not None and m._status_display.refreshes >= 2
    finally:
        m.close()
    assert len(finished) == N_TASKS
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all(line.startswith(f"vine :{m.port} | ") for line in lines), lines
    assert "\r" not in "".join(lines) and "\x1b" not in "".join(lines)
    final = lines[-1]
    assert f"workers 1 | tasks waiting 0 running 0 done {N_TASKS} failed 1 |" in final, final
    assert "slowest slow " in final  # "sleep 0.2" beats "true" and "exit 3" on the mean
    assert "workers 0" in lines[0]  # the first wait() came before the worker joined


@pytest.mark.timeout(60)
def test_refreshed_while_one_wait_blocks(tmp_path, start_worker, capsys):
    """A wait() with nothing finishing for a while wakes to refresh: the worker joining and the
    task starting show up before that one wait() returns."""
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run"), status_display_interval=0.05)
    try:
        m.submit(vine.Task("sleep 1"))
        start_worker(m, cores=1, memory=500, disk=1000)
        t = m.wait(30)
        assert t is not None and t.result == "success"
        during = capsys.readouterr().err.splitlines()
    finally:
        m.close()
    assert any("workers 0 | tasks waiting 1 running 0" in line for line in during), during
    assert any("workers 1 | tasks waiting 0 running 1 done 0" in line for line in during), during
    assert "workers 1 | tasks waiting 0 running 0 done 1 failed 0" in capsys.readouterr().err  # at close


# -- a real terminal: the child's stderr is a pty ---------------------------------------------------------------

_TTY_CHILD = textwrap.dedent("""
    import sys
    import core as vine
    from tests.integration.test_status_display import _submit_workflow
    m = vine.Manager(port=0, run_info_path=sys.argv[1], status_display_interval=0.05)
    _submit_workflow(m)
    print(m.port, flush=True)
    while not m.empty():
        m.wait(5)
    m.close()
    print("closed", flush=True)
""")


@pytest.mark.timeout(60)
def test_one_line_rewritten_in_place_on_a_terminal(tmp_path, start_worker):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # rows, columns
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("COLUMNS", None)
    child = subprocess.Popen([sys.executable, "-c", _TTY_CHILD, str(tmp_path / "run")], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT, text=True)
    os.close(slave)
    seen = bytearray()

    def read_terminal() -> None:  # drain the pty as the child writes, so it never blocks on a full buffer
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child's end closed
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        start_worker(SimpleNamespace(port=port), cores=2, memory=500, disk=1000)
        assert child.stdout.readline().strip() == "closed"
        assert child.wait(20) == 0
        reader.join(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        os.close(master)
    out = seen.decode()
    assert out.startswith("\r\x1b[2K") and out.endswith("\r\n"), repr(out[-200:])  # the tty adds \r to \n
    assert out.count("\n") == 1  # one line, rewritten in place, ended at close
    frames = out[:-2].split("\r\x1b[2K")[1:]
    assert len(frames) >= 3 and all(f.startswith(f"vine :{port} | ") for f in frames), frames
    assert f"workers 1 | tasks waiting 0 running 0 done {N_TASKS} failed 0 |" in frames[-1], frames[-1]
    assert "slowest slow " in frames[-1]


# -- a real Jupyter kernel ---------------------------------------------------------------------------------------

class _TableReader(html.parser.HTMLParser):
    """The ``data-stat`` / ``data-value`` cells of the display's table, its state and its caption."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._in_caption = False
        self.values["caption"] = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.values["state"] = a.get("data-state") or ""
        elif tag == "caption":
            self._in_caption = True
        elif tag == "td" and a.get("data-stat"):
            self.values[str(a["data-stat"])] = a.get("data-value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.values["caption"] += data


def _table_values(markup: str) -> dict[str, str]:
    reader = _TableReader()
    reader.feed(markup)
    return reader.values


@pytest.mark.timeout(90)
def test_html_table_in_a_real_kernel(tmp_path, start_worker):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    run_dir = str(tmp_path / "run")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import core as vine\nfrom tests.integration.test_status_display import _submit_workflow\n"
                                  f"m = vine.Manager(port=0, run_info_path={run_dir!r}, status_display_interval=0.1)\n"
                                  "print(m.port)"),
        nbformat.v4.new_code_cell("_submit_workflow(m)\nresults = []\nwhile not m.empty():\n"
                                  "    t = m.wait(5)\n    if t is not None:\n        results.append(t.result)\n"
                                  "print(len(results), set(results))"),
        nbformat.v4.new_code_cell("m.close()\nprint(m._status_display.notebook, m._status_display.refreshes)"),
    ]
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        port = int(_stream_text(nb.cells[0]))
        start_worker(SimpleNamespace(port=port), cores=2, memory=500, disk=1000)
        client.execute_cell(nb.cells[1], 1)
        client.execute_cell(nb.cells[2], 2)

    assert _stream_text(nb.cells[1]).split() == [str(N_TASKS), "{'success'}"]
    is_notebook, refreshes = _stream_text(nb.cells[2]).split()
    assert is_notebook == "True" and int(refreshes) >= 2
    displays = [o for cell in nb.cells for o in cell.outputs if o.output_type == "display_data"]
    assert len(displays) == 1  # one table, updated in place, not one per refresh
    values = _table_values(displays[0].data["text/html"])
    assert values["state"] == "closed" and values["caption"].startswith(f"vine :{port}")
    assert (values["workers"], values["done"], values["failed"]) == ("1", str(N_TASKS), "0"), values
    assert (values["waiting"], values["running"]) == ("0", "0")
    assert int(values["bytes_sent"]) > 0 and int(values["bytes_received"]) > 0
    assert values["slowest_category"] == "slow"
    assert displays[0].data["text/plain"].startswith(f"vine :{port} | workers 1 |")  # for text-only frontends


def _stream_text(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
