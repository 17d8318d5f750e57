"""The executor's manager process (both modes): its failure modes (killed, user's process gone, bad start)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.conftest import children_running, wait_until
from tests.parslvine.conftest import MODES, make_executor, start_executor

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _square(x):
    return x * x


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("mode", MODES)
def test_the_manager_runs_in_its_own_process(tmp_path, executors, mode):
    ex = start_executor(tmp_path, make_executor(mode))
    executors.append(ex)
    pid = ex.manager.pid
    assert pid != os.getpid() and psutil.Process(pid).ppid() == os.getpid()
    assert ex.submit(_square, {}, 6).result(timeout=60) == 36
    # The factory's workers are the manager process's children, not ours.
    wait_until(lambda: bool(children_running(pid, "core.worker", recursive=True)), 30, "a worker under the manager process")
    ex.shutdown()
    wait_until(lambda: not _alive({pid}), 30, "the manager process to exit at shutdown")


def test_manager_process_killed_fails_pending_calls(tmp_path, executors):
    from parsl.executors.errors import BadStateException

    from parslvine.errors import TaskVineManagerFailure

    ex = start_executor(tmp_path, make_executor("serverless", launch="manual"))  # no workers: the call stays pending
    executors.append(ex)
    fut = ex.submit(_square, {}, 5)
    os.kill(ex.manager.pid, signal.SIGKILL)
    with pytest.raises(BadStateException) as info:
        fut.result(timeout=30)
    assert "killed by signal 9" in str(info.value) and "manager process" in str(info.value)
    assert ex.outstanding() == 0
    with pytest.raises(TaskVineManagerFailure, match="manager process"):
        ex.submit(_square, {}, 6)


def test_start_error_from_the_manager_process_keeps_its_type(tmp_path):
    from parslvine import TaskVineFactoryConfig
    from parslvine.errors import ParslVineConfigError

    ex = make_executor("serverless", factory_config=TaskVineFactoryConfig(python_env="/nonexistent/env.tar.gz"))
    with pytest.raises(ParslVineConfigError, match="python_env"):
        start_executor(tmp_path, ex)
    assert ex._client is None


_USER_PROGRAM = textwrap.dedent("""
    import os, sys
    import psutil
    sys.path.insert(0, {root!r})
    from tests.parslvine.conftest import make_executor

    def square(x):
        return x * x

    ex = make_executor("serverless")
    ex.run_dir = os.path.join({workdir!r}, "runinfo")
    ex.run_id = "test"
    ex.start()
    assert ex.submit(square, {{}}, 3).result(timeout=60) == 9
    procs = [psutil.Process(ex.manager.pid)] + psutil.Process(ex.manager.pid).children(recursive=True)
    print(" ".join(str(p.pid) for p in procs), flush=True)
    sys.stdin.readline()  # the test kills us here
""")


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_user_process_gone_stops_the_manager_process_and_its_workers(tmp_path, how):
    program = _USER_PROGRAM.format(root=ROOT, workdir=str(tmp_path))
    env = dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    user = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=str(tmp_path), env=env)
    pids: set[int] = set()
    try:
        assert user.stdout is not None and user.stdin is not None
        line = user.stdout.readline()
        pids = {int(p) for p in line.split()}
        assert len(pids) >= 2, f"expected the manager process and a worker, got {line!r}"
        if how == "sigkill":
            user.kill()
        else:
            user.stdin.write("\n")  # returns without shutdown: the interpreter exits, no cleanup of ours runs
            user.stdin.flush()
        user.wait(30)
        wait_until(lambda: not _alive(pids), 60, f"the manager process and its workers {sorted(_alive(pids))} to exit")
    finally:
        if user.poll() is None:
            user.kill()
            user.wait(10)
        for pid in _alive(pids):  # only if the test already failed: leave nothing behind
            os.kill(pid, signal.SIGKILL)
        if user.stdout is not None:
            user.stdout.close()
        if user.stdin is not None:
            user.stdin.close()
