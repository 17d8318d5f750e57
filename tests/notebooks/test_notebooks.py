"""The notebooks of notebooks/: saved clean, and every cell runs in a real Jupyter kernel.

The static checks run in the default ``pytest -q`` (milliseconds): each notebook is valid
nbformat 4, carries no outputs or execution counts (diffs stay readable), and imports the project
only through its public names. The executions are marked ``notebooks`` and run as their own CI
step (``VINE_TEST_NOTEBOOKS=1 .venv/bin/python -m pytest -q tests/notebooks``, see conftest.py):
each notebook runs in a ``python3`` kernel of this venv, in a temporary directory, under a
per-notebook deadline; a failing cell fails the test with the cell's traceback, and so does any
worker (or other process the notebook started) still running after the last cell.
"""

from __future__ import annotations

import ast
import os
import sys
import time

import nbformat
import pytest

from tests.notebooks.run_notebooks import NOTEBOOK_DIR, main_thread_idle, notebook_paths, run_notebook

# Each notebook is meant to run in well under 2 minutes on 2 cores; the budget leaves room for a loaded CI machine.
BUDGET_S = 180
EXPECTED = ["01-quickstart.ipynb", "02-dask-awkward.ipynb", "03-parsl.ipynb", "04-futures-serverless.ipynb"]
# What a user's notebook may import from this project: the packages' public faces and the plotting tool.
PUBLIC_MODULES = {"core", "daskvine", "parslvine", "core.futures", "core.tools", "core.tools.plot_txn"}
# Worker processes each notebook starts (directly or through a Factory) at the least: the watcher must see them.
MIN_WORKERS = {"01-quickstart.ipynb": 2, "02-dask-awkward.ipynb": 3, "03-parsl.ipynb": 4, "04-futures-serverless.ipynb": 2}


def _names() -> list[str]:
    return [os.path.basename(p) for p in notebook_paths()]


def test_the_four_notebooks_are_there():
    assert [n for n in EXPECTED if n not in _names()] == []


@pytest.mark.parametrize("name", _names())
def test_notebook_is_saved_without_outputs(name):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and any(c.cell_type == "markdown" for c in nb.cells)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert dirty == [], f"{name}: cells {dirty} hold outputs or execution counts; clear them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state; clear it before committing"


@pytest.mark.parametrize("name", _names())
def test_notebook_uses_only_the_public_api(name):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    project = ("core", "daskvine", "parslvine")
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            used |= {a.name for a in node.names if a.name.split(".")[0] in project}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in project:
            used.add(node.module)
            used |= {f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")}
    assert used, f"{name} does not use the project at all"
    assert used <= PUBLIC_MODULES, f"{name} imports {sorted(used - PUBLIC_MODULES)}; notebooks use the public API only"


@pytest.mark.notebooks
@pytest.mark.timeout(BUDGET_S + 60)
@pytest.mark.parametrize("name", _names())
def test_notebook_runs_and_cleans_up(name, tmp_path):
    run = run_notebook(os.path.join(NOTEBOOK_DIR, name), str(tmp_path), timeout=BUDGET_S)
    kept = f"(its files and logs: {tmp_path}/vine-run-info; its outputs on failure: {tmp_path}/executed-{name})"
    stacks = "\n".join(run.stack_dumps)  # the kernel's stacks if a cell ran into the last third of the budget
    assert run.error is None, f"{run.summary()} {kept}\n{str(run.error)[-6000:]}\n{stacks}"
    assert os.path.realpath(run.kernel_executable) == os.path.realpath(sys.executable), "the kernel is not this venv's Python"
    assert len(run.workers_seen) >= MIN_WORKERS.get(name, 1), \
        f"{name}: saw {len(run.workers_seen)} worker process(es): {[p.describe() for p in run.seen]}"
    assert run.left_behind == [], f"{name} left processes behind after its last cell {kept}: {[p.describe() for p in run.left_behind]}"
    assert run.notebook is not None
    errors = [o for c in run.notebook.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert errors == []


# --- the runner itself can fail: a notebook with a failing cell, one that leaves a worker running ------------

LEAKY_CELLS = [
    "import os, subprocess, sys, time\nimport core as vine\nm = vine.Manager(port=0)",
    ("w = subprocess.Popen([sys.executable, '-m', 'core.worker', '--cores', '1', '--timeout', '60',\n"
     "                      '--workdir', os.path.abspath('worker'), 'localhost', str(m.port)])\n"
     "deadline = time.monotonic() + 30\n"
     "while m.stats.workers_connected < 1:\n    assert time.monotonic() < deadline\n    time.sleep(0.05)"),
    "m.close()  # the worker is not stopped: it is left behind",
]


def _write_notebook(path, cells: list[str]) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return str(path)


@pytest.mark.notebooks
@pytest.mark.timeout(120)
def test_runner_reports_a_failing_cell_and_stops_there(tmp_path):
    path = _write_notebook(tmp_path / "bad.ipynb", ["x = 1", "raise KeyError('cell two fails')", "open('never', 'w')"])
    work = tmp_path / "work"
    work.mkdir()
    run = run_notebook(path, str(work), timeout=90, record=False)
    assert run.error is not None and "cell two fails" in str(run.error)
    assert not (work / "never").exists()  # cells after the failing one do not run


@pytest.mark.notebooks
@pytest.mark.timeout(120)
def test_runner_finds_and_kills_a_worker_left_behind(tmp_path):
    path = _write_notebook(tmp_path / "leaky.ipynb", LEAKY_CELLS)
    work = tmp_path / "work"
    work.mkdir()
    run = run_notebook(path, str(work), timeout=90, record=False)
    assert run.error is None, str(run.error)
    worker_pids = [p.process.pid for p in run.workers_seen]
    assert len(worker_pids) == 1 and worker_pids[0] in [p.process.pid for p in run.left_behind]
    assert not any(p.running() for p in run.left_behind)  # the runner killed it (and what it had started)


@pytest.mark.notebooks
@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [
    # sh starts the sleep in the background and exits at once: the sleep is reparented, never the kernel's descendant.
    "sleep 300 >/dev/null 2>&1 &",
    # The watcher sees the background subshell, still a descendant, before it execs the sleep (as it may see
    # any child between its fork and its exec): it must report what the process became.
    "(sleep 1; exec sleep 300) >/dev/null 2>&1 & sleep 0.6",
], ids=["at once", "seen before its exec"])
def test_runner_finds_a_process_that_left_the_kernels_tree(tmp_path, command):
    cell = f"import subprocess\nsubprocess.run(['sh', '-c', {command!r}], check=True)"
    path = _write_notebook(tmp_path / "escaped.ipynb", [cell])
    run = run_notebook(path, str(tmp_path), timeout=60, record=False)
    assert run.error is None, str(run.error)
    escaped = [p for p in run.left_behind if p.cmdline[:2] == ["sleep", "300"]]
    assert len(escaped) == 1 and not escaped[0].running(), ([p.describe() for p in run.left_behind], [p.describe() for p in run.seen])


@pytest.mark.notebooks
@pytest.mark.timeout(120)
def test_runner_finds_an_escaped_process_before_a_slow_kernel_shutdown_ends_it(tmp_path):
    # A kernel slow to exit gets SIGTERM from jupyter_client, to its whole process group, which the
    # escaped sleep is still in: the runner must have found it before that.
    cells = ["import subprocess\nsubprocess.run(['sh', '-c', 'sleep 300 >/dev/null 2>&1 &'], check=True)",
             "import atexit, time\natexit.register(time.sleep, 6)"]
    run = run_notebook(_write_notebook(tmp_path / "slow-exit.ipynb", cells), str(tmp_path), timeout=60, record=False)
    assert run.error is None, str(run.error)
    escaped = [p for p in run.left_behind if p.cmdline[:2] == ["sleep", "300"]]
    assert len(escaped) == 1 and not escaped[0].running(), [p.describe() for p in run.left_behind]


@pytest.mark.notebooks
@pytest.mark.timeout(60)
def test_runner_enforces_the_notebook_budget(tmp_path):
    path = _write_notebook(tmp_path / "slow.ipynb", ["import time\ntime.sleep(60)"])
    start = time.monotonic()
    run = run_notebook(path, str(tmp_path), timeout=8, record=False)
    assert isinstance(run.error, TimeoutError) and time.monotonic() - start < 40
    # The stuck cell was looked into before the interrupt: at 2/3 of the budget and just before the deadline.
    assert len(run.stack_dumps) == 2, run.stack_dumps
    assert all("cell 0 still running:" in d and "run_cell" in d for d in run.stack_dumps), run.stack_dumps
    assert not any("KERNEL IS IDLE" in d for d in run.stack_dumps)


# The main thread of a kernel whose cell had ended while the client still waited for its reply
# (notebook 02, cell 7, seen by the runner at 80 s and 117 s of a 120 s budget; other threads cut).
IDLE_KERNEL_DUMP = """Process 3827: /work/main/.venv/bin/python -m ipykernel_launcher -f /tmp/tmp97fnenp_.json
Python v3.11.7 (/root/.pyenv/versions/3.11.7/bin/python3.11)

Thread 3827 (idle): "MainThread"
    EpollSelector.select (selectors.py:468)
    BaseEventLoop._run_once (asyncio/base_events.py:1884)
    BaseEventLoop.run_forever (asyncio/base_events.py:607)
    BaseAsyncIOLoop.start (tornado/platform/asyncio.py:203)
    IPKernelApp.start (ipykernel/kernelapp.py:768)
    Application.launch_instance (traitlets/config/application.py:1080)
    <module> (ipykernel_launcher.py:18)
Thread 4007 (idle): "vine-manager-41313"
    EpollSelector.select (selectors.py:468)
    IOThread._run (core/manager/io_thread.py:48)
"""


def test_an_idle_kernel_is_told_from_a_busy_one():
    assert main_thread_idle(IDLE_KERNEL_DUMP)
    busy = IDLE_KERNEL_DUMP.replace("    <module> (ipykernel_launcher.py:18)",
                                    "    run_cell (IPython/core/interactiveshell.py:3077)\n    <module> (ipykernel_launcher.py:18)")
    assert not main_thread_idle(busy)
    assert not main_thread_idle("(no stack: py-spy is not installed next to this Python nor on PATH)")


@pytest.mark.notebooks
@pytest.mark.timeout(60)
def test_runner_takes_no_stack_dump_of_a_quick_notebook(tmp_path):
    path = _write_notebook(tmp_path / "quick.ipynb", ["x = 1"])
    run = run_notebook(path, str(tmp_path), timeout=60, record=False)
    assert run.error is None and run.stack_dumps == []


@pytest.mark.notebooks
@pytest.mark.timeout(60)
def test_runner_waits_across_receive_slices_for_a_long_cell(tmp_path):
    # The client polls the kernel's sockets a second at a time (SlicedReceive): a cell longer than a
    # slice, silent meanwhile, must still be waited for, and its output read, not cut at the first slice.
    path = _write_notebook(tmp_path / "long.ipynb", ["import time\ntime.sleep(3.5)\nprint('slept')", "x = 2"])
    run = run_notebook(path, str(tmp_path), timeout=40, record=False)
    assert run.error is None, str(run.error)
    assert run.notebook is not None and run.notebook.cells[0].outputs[0]["text"] == "slept\n"
