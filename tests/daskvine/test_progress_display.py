"""DaskVine's own progress bar where people look at it: a real terminal (a pty) and a real Jupyter kernel.

Each test runs a small program in a fresh process: a DaskVine with one local worker started by a
Factory, and a graph of 21 tasks. In a terminal the bar draws itself; in Jupyter it is a live widget
(rich's, through ipywidgets) with the final count in its state.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT

PROGRAM = textwrap.dedent("""
    import core as vine
    from daskvine import DaskVine

    m = DaskVine(port=0, run_info_path={run_info!r})
    with vine.Factory("local", manager=m) as f:
        f.min_workers = f.max_workers = 1
        f.cores = 1
        dsk = {{("x", i): (abs, -i) for i in range(20)}}
        dsk["total"] = (sum, [("x", i) for i in range(20)])
        print("RESULT", m.get(dsk, "total", progress_label="[green]graphwork"))
    m.close()
""")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CI", None)  # rich treats CI as "not interactive"; the pty is the terminal here
    env["COLUMNS"], env["TERM"] = "100", "xterm-256color"
    return env


@pytest.mark.timeout(120)
def test_progress_bar_in_a_terminal(tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM.format(run_info=str(tmp_path / "vine-run-info"))],
                            stdin=follower, stdout=follower, stderr=follower, env=_env(), cwd=tmp_path)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 100
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                try:
                    chunk = os.read(leader, 1 << 16)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        proc.kill()
        proc.wait(10)
        os.close(leader)
    text = out.decode(errors="replace")
    assert "RESULT 190" in text, text[-2000:]
    assert "graphwork" in text and "21/21" in text, text[-2000:]
    assert "\x1b[" in text  # drawn with terminal control sequences, not as plain lines


@pytest.mark.timeout(180)
def test_progress_bar_in_jupyter_is_a_live_widget(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
    code = f"import sys; sys.path.insert(0, {ROOT!r})\n" + PROGRAM.format(run_info=str(tmp_path / "vine-run-info"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    client = nbclient.NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                                     store_widget_state=True)
    client.execute(env=_env())
    outputs = nb.cells[0].outputs
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "RESULT 190" in printed
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, f"no widget among the cell's outputs: {outputs}"
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    frames = [o.get("data", {}).get("text/plain", "") for m in state.values() for o in m.get("state", {}).get("outputs", [])]
    assert frames and "graphwork" in frames[-1] and "21/21" in frames[-1], frames  # the widget shows the final count
