"""A TaskVine program after rewriting ``ndcctools.taskvine`` to ``core``: its imports, its hooks, its
constructor forms and its futures over a library (issue 14, points 1, 3 and 4).

What is expected comes from TaskVine's own test programs (``vine_python_unlink_when_done.py``,
``vine_python.py``'s ``ssl=`` line, ``vine_python_future_funcall.py``, ``vine_python_serverless.py``),
restated here as checks on real workers.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import core as vine
from tests.conftest import ROOT, run, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Every name a TaskVine program imports from each ``ndcctools.taskvine`` module, under its ``core`` name.
TASKVINE_NAMES = {
    "core": ["Manager", "Factory", "FuturesExecutor", "FuturePythonTask", "FutureFunctionCall", "VineFuture", "File",
             "Task", "PythonTask", "PythonTaskNoResult", "LibraryTask", "FunctionCall", "DaskVine", "cvine"],
    "core.manager": ["Manager", "Factory"],
    "core.task": ["Task", "PythonTask", "PythonTaskNoResult", "FunctionCall", "FunctionCallNoResult", "LibraryTask"],
    "core.file": ["File"],
    "core.futures": ["FuturesExecutor", "FuturePythonTask", "FutureFunctionCall", "VineFuture", "wait", "as_completed",
                     "RESULT_PENDING", "retrieve_output", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "TimeoutError"],
    "core.utils": ["get_c_constant", "set_port_range", "load_variable_from_library"],
    "core.compat": ["DaskVine"],
    "core.cvine": ["VINE_TEMP", "VINE_RESULT_SUCCESS", "VINE_CACHE_LEVEL_WORKFLOW", "VINE_TASK_DONE"],
}

_PROBE = textwrap.dedent("""
    import importlib, json, sys
    import core as vine
    loaded_by_import_core = sorted(m for m in ("core.manager", "core.futures", "core.deploy.factory", "core.api.python_task") if m in sys.modules)
    wait = vine.futures.wait  # an attribute before anything imported core.futures (vine_python_future_module.py)
    missing = []
    for module, names in json.loads(sys.argv[1]).items():
        mod = importlib.import_module(module)
        missing += [f"{module}.{n}" for n in names if not hasattr(mod, n)]
    from core.cvine import VINE_TEMP
    import core.task, core.manager, core.file, core.compat, daskvine
    same = [core.task.PythonTask is vine.PythonTask, core.task.FunctionCall is vine.FunctionCall,
            core.manager.Factory is vine.Factory, core.file.File is vine.File, core.compat.DaskVine is daskvine.DaskVine,
            vine.cvine.VINE_TEMP == VINE_TEMP, issubclass(core.compat.DaskVine, core.manager.Manager)]
    print(json.dumps({"eager": loaded_by_import_core, "missing": missing, "same": same}))
""")


def test_taskvine_module_paths_hold_taskvine_names():
    """In a fresh interpreter, as a ported program starts: every module and name resolves, the same
    objects under every path, and ``import core`` alone still loads none of the manager side."""
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(TASKVINE_NAMES)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["missing"] == []
    assert all(report["same"]), report["same"]
    assert report["eager"] == []


def test_utils_helpers(monkeypatch):
    from core.utils import get_c_constant, set_port_range

    assert get_c_constant("result_success") == vine.VINE_RESULT_SUCCESS
    monkeypatch.setenv("TCP_LOW_PORT", "0")
    monkeypatch.setenv("TCP_HIGH_PORT", "0")
    set_port_range((9300, 9310))
    assert (os.environ["TCP_LOW_PORT"], os.environ["TCP_HIGH_PORT"]) == ("9300", "9310")
    set_port_range(9400)
    assert (os.environ["TCP_LOW_PORT"], os.environ["TCP_HIGH_PORT"]) == ("9400", "9400")
    for bad in [(9310, 9300), ("a", "b"), (1, 2, 3), 70000]:
        with pytest.raises(ValueError, match="set_port_range"):
            set_port_range(bad)  # type: ignore[arg-type]
    with pytest.raises(NameError, match="library_context_info"):
        vine.load_variable_from_library("anything")  # only inside a FunctionCall


def test_port_range_is_where_port_zero_listens(monkeypatch, tmp_path, start_worker):
    """set_port_range: Manager(port=0) and a worker's transfer server take ports inside the range."""
    from core.utils import set_port_range

    with socket.socket() as probe:  # find a free block of 20 ports
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    base = min(base, 65000)
    monkeypatch.setenv("TCP_LOW_PORT", "1")  # restored by monkeypatch after set_port_range overwrote it
    monkeypatch.setenv("TCP_HIGH_PORT", "1")
    set_port_range((base, base + 20))
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"))
    try:
        assert base <= m.port <= base + 20
        start_worker(m, cores=1, memory=200, disk=300)
        wait_until(lambda: m.stats.workers_connected == 1, 30, "the worker")
        [w] = m.status("workers")
        t = vine.Task("true")
        assert run(m, t, 30).result == "success"
        transfer = m._links[w["id"]].transfer_addr  # noqa: SLF001 - what the manager tells peers
        assert base <= int(transfer.rsplit(":", 1)[1]) <= base + 20
    finally:
        m.close()
    monkeypatch.setenv("TCP_LOW_PORT", "x")
    with pytest.raises(ValueError, match="TCP_LOW_PORT"):
        vine.Manager(port=0, run_info_path=str(tmp_path / "run-info-2"))


def test_compat_daskvine_is_a_manager_that_unlinks_when_done(tmp_path):
    """The first half of TaskVine's unlink_when_done test: ``DaskVine(port=0)`` is a Manager whose
    ``remove_file`` deletes a local file declared with ``unlink_when_done=True``."""
    from core.compat import DaskVine

    path = tmp_path / "hello.txt"
    path.write_text("hello")
    kept = tmp_path / "kept.txt"
    kept.write_text("kept")
    m = DaskVine(port=0, run_info_path=str(tmp_path / "vine-run-info"))
    try:
        m.remove_file(m.declare_file(str(path), unlink_when_done=True))
        m.remove_file(m.declare_file(str(kept)))
    finally:
        m.close()
    assert not path.exists()
    assert kept.read_text() == "kept"


# -- ssl=(None, None) ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def test_ssl_pair_of_nones_is_plain_tcp(tmp_path, start_worker):
    """``vine_python.py`` passes its optional --ssl_key/--ssl_cert straight through: (None, None)."""
    m = vine.Manager(port=0, ssl=(None, None), run_info_path=str(tmp_path / "vine-run-info"))
    try:
        assert m.using_ssl is False
        start_worker(m)  # a worker without --ssl
        t = run(m, vine.Task("echo plain", cores=1))
        assert (t.result, t.exit_code, t.output) == ("success", 0, "plain\n")
    finally:
        m.close()


def test_ssl_half_pair_is_refused_and_frees_the_port(tmp_path):
    port = _free_port()
    for half in [("key.pem", None), (None, "cert.pem")]:
        with pytest.raises(ValueError, match="both files or neither"):
            vine.Manager(port=port, ssl=half, run_info_path=str(tmp_path / "vine-run-info"))
    m = vine.Manager(port=port, run_info_path=str(tmp_path / "vine-run-info"))  # the refusal left the port free
    m.close()


# -- submit_finalize ------------------------------------------------------------------------------------------


def read_file(name):
    with open(name) as fh:
        return fh.read()


class TaskDeclaringItsInput(vine.PythonTask):
    """Like TaskVine's FakeTask: declares its input when submitted, removes it when garbage-collected."""

    def __init__(self, path):
        super().__init__(read_file, "input")
        self._path = path
        self._input = None
        self.manager_seen = None

    def submit_finalize(self):
        self.manager_seen = self.manager
        self._input = self.manager.declare_file(self._path, unlink_when_done=True)
        self.add_input(self._input, "input")
        super().submit_finalize()

    def __del__(self):
        if self._input is not None:
            self._manager.remove_file(self._input)
        super().__del__()


def test_submit_finalize_adds_an_input_that_unlinks_when_the_task_is_collected(manager, start_worker, tmp_path):
    path = tmp_path / "hello.txt"
    path.write_text("hello")
    start_worker(manager)
    t = TaskDeclaringItsInput(str(path))
    t.set_cores(1)
    done = run(manager, t)
    assert done is t and t.manager_seen is manager
    assert (t.result, t.output) == ("success", "hello")
    assert path.exists()  # still declared while the task lives
    del t, done
    gc.collect()
    assert not path.exists()  # the manager kept no reference to the returned task


class SlowlyFinalizedTask(TaskDeclaringItsInput):
    def __del__(self):
        time.sleep(0.3)  # a finalizer that takes a while: remove_file of its temp must still wait for it
        super().__del__()


def test_submit_finalize_of_a_cancelled_task(manager, tmp_path):
    """The second half of TaskVine's unlink_when_done test: submit, cancel, wait, drop, remove the temp."""
    path = tmp_path / "hello.txt"
    path.write_text("hello")
    out = manager.declare_temp()
    t = SlowlyFinalizedTask(str(path))
    t.add_output(out, "output")
    tid = manager.submit(t)
    assert [m.remote_name for m in t.inputs][0] == "input"
    manager.cancel_by_task_id(tid)
    t = manager.wait(5)
    assert t is not None and t.result == "cancelled"
    assert path.exists()
    t = None
    assert path.exists()  # the scheduler keeps the producer of ``out`` for lineage recovery
    manager.remove_file(out)
    assert not path.exists()  # when remove_file returns the producer is let go, and its __del__ has run


class CommandWithBuffer(vine.Task):
    def submit_finalize(self):
        self.add_input(self.manager.declare_buffer("made at submit\n"), "data")
        super().submit_finalize()


class Refused(vine.Task):
    def submit_finalize(self):
        raise ValueError("refused by submit_finalize")


def test_submit_finalize_on_a_plain_task_and_a_refusal(manager, start_worker):
    start_worker(manager)
    t = run(manager, CommandWithBuffer("cat data", cores=1))
    assert (t.result, t.output) == ("success", "made at submit\n")
    r = Refused("true")
    with pytest.raises(ValueError, match="refused by submit_finalize"):
        manager.submit(r)
    assert (r.id, r.state, r.manager) == (0, "INITIAL", None)
    assert manager.empty()
    t2 = run(manager, vine.Task("echo still fine", cores=1))  # ids and the manager are unharmed
    assert t2.output == "still fine\n" and t2.id == t.id + 1


# -- FuturesExecutor over a library ----------------------------------------------------------------------------


def my_sum(x, y, negate=False):
    return -(x + y) if negate else x + y


def failure():
    raise ValueError("Expected failure.")


def offset_sum(x, y):
    from core.utils import load_variable_from_library

    return load_variable_from_library("offset") + x + y


def make_context(offset):
    return {"offset": offset}


@pytest.mark.timeout(90)
def test_executor_library_and_a_future_used_twice(manager, start_worker):
    """TaskVine's vine_python_future_funcall.py: ``my_sum(a, a)`` with ``a`` a call's future, then a
    failing call; also a PythonTask taking a call's future twice, and ``retrieve_output``."""
    start_worker(manager, cores=2)
    ex = vine.FuturesExecutor(manager=manager, factory=False)
    try:
        lib = ex.create_library_from_functions("test-library", my_sum, failure, hoisting_modules=None, add_env=False)
        ex.install_library(lib)
        a = ex.submit(ex.future_funcall("test-library", "my_sum", 7, 4))
        t2 = ex.future_funcall("test-library", "my_sum", a, a)
        b = ex.submit(t2)
        t3 = ex.future_funcall("test-library", "my_sum", b, a)
        c = ex.submit(t3)
        assert t3.output() == c.result(60) == 33
        assert b.result(0) == 22
        task = ex.future_task(my_sum, a, a, negate=True)
        task.set_cores(1)
        assert ex.submit(task).result(60) == -22
        assert ex.submit(ex.future_funcall("test-library", "retrieve_output", b)).result(60) == 22
        bad = ex.submit(ex.future_funcall("test-library", "failure"))
        with pytest.raises(ValueError, match="Expected failure."):
            bad.result(60)
        assert "Expected failure." in str(bad.exception())
        ex.manager.remove_library("test-library")
        assert not ex.manager.check_library_exists("test-library")
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


@pytest.mark.timeout(90)
def test_load_variable_from_library_through_core_utils(manager, start_worker):
    """vine_python_serverless.py's import: ``from core.utils import load_variable_from_library``."""
    start_worker(manager, cores=1)
    ex = vine.FuturesExecutor(manager=manager, factory=False)
    try:
        lib = ex.create_library_from_functions("ctx-library", offset_sum, exec_mode="direct",
                                               library_context_info=[make_context, [100], {}])
        ex.install_library(lib)
        assert ex.submit(ex.future_funcall("ctx-library", "offset_sum", 1, 2)).result(60) == 103
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


@pytest.mark.timeout(60)
def test_ctrl_c_while_tasks_are_freed_is_not_swallowed():
    """A SIGINT that arrives while finished tasks are being freed reaches the program.

    CPython runs pending signal handlers at the start of any Python frame and drops an exception
    raised inside a finalizer, so a Python-level ``Task.__del__`` lost the KeyboardInterrupt (seen
    as a DaskVine ``get`` that ignored Ctrl-C). 300,000 tasks take long enough to free that the
    signal, sent the moment freeing starts, arrives during it.
    """
    import signal
    import threading

    tasks = [vine.Task("true") for _ in range(300_000)]
    freeing, never = threading.Event(), threading.Event()

    def interrupt() -> None:
        freeing.wait(30)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt, daemon=True)
    sender.start()
    with pytest.raises(KeyboardInterrupt):
        freeing.set()
        tasks.clear()
        never.wait(30)  # the interrupt, if it was kept, ends this wait at once
    sender.join(30)
