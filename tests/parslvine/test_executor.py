"""The executor on its own and in its lifecycle: bad state, shutdown, lost workers, provider launch, monitoring."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.conftest import WorkerProcess, wait_until
from tests.parslvine.conftest import MODES, make_executor, start_executor

pytestmark = pytest.mark.timeout(120)


def _square(x):
    return x * x


def _touch_then_sleep(marker, seconds):
    import os
    import time

    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return "finished"


def _pids(path: str) -> list[int]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        text = fh.read()
    return [int(p) for p in text.split()] if text.endswith("\n") else []






def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


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
def test_submit_without_the_dfk_and_clean_shutdown(tmp_path, executors, mode):
    before = _descendants()
    ex = start_executor(tmp_path, make_executor(mode))
    executors.append(ex)
    futures = [ex.submit(_square, {}, i) for i in range(10)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(10)]
    assert futures[0].parsl_executor_task_id == 0
    ours = _descendants() - before
    assert ours, "the factory and its workers should be running"
    ex.shutdown()
    # Factory, workers, fork servers, library processes: all gone, nothing left behind.
    wait_until(lambda: not _alive(ours), 30, f"processes {sorted(_alive(ours))} to exit after shutdown")
    with pytest.raises(Exception, match="shut down"):
        ex.submit(_square, {}, 2)


def test_bad_state_fails_pending_and_new_calls(tmp_path, executors):
    ex = start_executor(tmp_path, make_executor("regular", launch="manual"))  # no workers: calls stay pending
    executors.append(ex)
    pending = ex.submit(_square, {}, 3)
    assert ex.outstanding() == 1
    ex.set_bad_state_and_fail_all(RuntimeError("the batch system is gone"))
    from parsl.executors.errors import BadStateException

    with pytest.raises(BadStateException):
        pending.result(timeout=5)
    with pytest.raises(RuntimeError, match="the batch system is gone"):
        ex.submit(_square, {}, 4)


def test_shutdown_fails_calls_still_pending(tmp_path, executors):
    from parslvine.errors import TaskVineManagerFailure

    ex = start_executor(tmp_path, make_executor("serverless", launch="manual"))
    executors.append(ex)
    fut = ex.submit(_square, {}, 5)
    ex.shutdown()
    with pytest.raises(TaskVineManagerFailure):
        fut.result(timeout=5)


@pytest.mark.parametrize("mode", MODES)
def test_worker_killed_mid_call_the_app_still_completes(tmp_path, executors, orphans, mode):
    ex = start_executor(tmp_path, make_executor(mode, launch="manual"))
    executors.append(ex)
    port = ex.manager.port
    first = WorkerProcess(port, str(tmp_path / "w1"), cores=1, memory=1000, disk=2000)
    second = None
    try:
        marker = str(tmp_path / "started.txt")
        fut = ex.submit(_touch_then_sleep, {}, marker, 3)
        wait_until(lambda: len(_pids(marker)) == 1, 60, "the app to start")
        orphans.extend(_pids(marker))
        first.kill(signal.SIGKILL)
        first.proc.wait(10)
        second = WorkerProcess(port, str(tmp_path / "w2"), cores=1, memory=1000, disk=2000)
        assert fut.result(timeout=90) == "finished"
        orphans.extend(_pids(marker))
        assert len(_pids(marker)) == 2  # it ran again on the new worker
    finally:
        first.reap()
        if second is not None:
            second.reap()


@pytest.mark.timeout(150)
def test_provider_launch_with_local_provider(tmp_path):
    import parsl
    from parsl.config import Config
    from parsl.providers import LocalProvider

    before = _descendants()
    ex = make_executor("regular", launch="provider", provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1))
    config = Config(executors=[ex], run_dir=str(tmp_path / "runinfo"), initialize_logging=False, strategy_period=0.5)
    dfk = parsl.load(config)
    try:
        assert "core.worker" in ex._get_launch_command("0") and str(ex.manager.port) in ex._get_launch_command("0")
        assert parsl.python_app(_square)(7).result(timeout=90) == 49
        assert len(ex.blocks_to_job_id) == 1
        ours = _descendants() - before
    finally:
        dfk.cleanup()
    wait_until(lambda: not _alive(ours), 30, f"provider processes {sorted(_alive(ours))} to exit")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", MODES)
def test_parsl_monitoring_records_the_calls(tmp_path, mode):
    import sqlite3

    import parsl
    from parsl.config import Config
    from parsl.monitoring import MonitoringHub

    db = tmp_path / "monitoring.db"
    config = Config(executors=[make_executor(mode)], run_dir=str(tmp_path / "runinfo"), initialize_logging=False,
                    monitoring=MonitoringHub(logging_endpoint=f"sqlite:///{db}", resource_monitoring_interval=1))
    dfk = parsl.load(config)
    try:
        app = parsl.python_app(_square)
        assert [app(i).result(timeout=90) for i in range(3)] == [0, 1, 4]
    finally:
        dfk.cleanup()
    deadline = time.monotonic() + 30
    with sqlite3.connect(db) as conn:
        while True:
            tasks = conn.execute("SELECT COUNT(*) FROM task").fetchone()[0]
            done = conn.execute("SELECT COUNT(*) FROM status WHERE task_status_name = 'exec_done'").fetchone()[0]
            if (tasks, done) == (3, 3) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert (tasks, done) == (3, 3)


def test_project_name_and_password_reach_the_workers(tmp_path, executors, monkeypatch):
    """A named manager is found through the project's own catalog (a directory here), with a password."""
    from parslvine import TaskVineFactoryConfig, TaskVineManagerConfig

    monkeypatch.setenv("VINE_CATALOG_DIR", str(tmp_path / "catalog"))
    secret = tmp_path / "password"
    secret.write_text("s3cret-for-this-test\n")
    ex = start_executor(tmp_path, make_executor(
        "serverless",
        manager_config=TaskVineManagerConfig(port=0, project_name=f"parslvine-test-{os.getpid()}", project_password_file=str(secret)),
        factory_config=TaskVineFactoryConfig(min_workers=1, max_workers=1, cores=1, memory=1000, disk=2000)))
    executors.append(ex)
    assert ex.manager.name == f"parslvine-test-{os.getpid()}"
    assert ex.submit(_square, {}, 9).result(timeout=60) == 81


def _environment(*names):
    import os

    return [os.environ.get(n) for n in names]


@pytest.mark.parametrize("mode", MODES)
def test_init_command_and_env_vars(tmp_path, executors, mode):
    """init_command runs before the call (regular: in front of a fresh runner; serverless: before the library)."""
    from parslvine import TaskVineManagerConfig

    ex = start_executor(tmp_path, make_executor(mode, manager_config=TaskVineManagerConfig(
        port=0, init_command="FROM_INIT=yes", env_vars={"FROM_CONFIG": "42"})))
    executors.append(ex)
    assert ex.submit(_environment, {}, "FROM_INIT", "FROM_CONFIG").result(timeout=60) == ["yes", "42"]
