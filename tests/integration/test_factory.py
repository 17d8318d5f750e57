"""Factory and vine_factory against a real manager with real local workers; every process is reaped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

import core as vine
from core.deploy.factory import Factory
from core.errors import FactoryError
from tests.conftest import ROOT, children_running, drain, process_gone, wait_for_workers, wait_until


def worker_processes(marker: str) -> list[psutil.Process]:
    """Live ``core.worker`` processes whose command line mentions ``marker`` (this test's tmp dir or port)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "core.worker" in cmd and marker in cmd:
            found.append(p)
    return found


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
            p.wait(5)
        except psutil.Error:
            pass


@pytest.fixture
def no_orphans(tmp_path):
    """Fails the test if a worker started under tmp_path outlives it (and kills such workers)."""
    yield
    left = worker_processes(str(tmp_path))
    kill_all(left)
    assert not left, f"workers left running: {[p.pid for p in left]}"


def run_tasks(m: vine.Manager, n: int, command: str = "echo hello", sample: list[int] | None = None, timeout: float = 60) -> list[vine.Task]:
    for _ in range(n):
        t = vine.Task(command)
        t.set_cores(1)
        m.submit(t)
    done = []
    deadline = time.monotonic() + timeout
    while not m.empty():
        assert time.monotonic() < deadline, f"tasks still pending after {timeout}s"
        t = m.wait(0.1)
        if sample is not None:
            sample.append(m.stats.workers_connected)
        if t is not None:
            done.append(t)
    return done


def test_factory_runs_tasks_within_max_workers(manager, tmp_path, no_orphans):
    seen: list[int] = []
    with vine.Factory("local", manager=manager) as f:
        f.min_workers = 1
        f.max_workers = 2
        f.cores = 1
        f.memory = 500
        f.disk = 1000
        done = run_tasks(manager, 10, "sleep 0.2; echo hello", sample=seen)
        assert f.running
    assert len(done) == 10
    assert all(t.result == "success" and t.output.strip() == "hello" for t in done)
    assert max(seen) >= 1
    assert max(seen) <= 2, f"saw {max(seen)} workers with max_workers=2"
    assert not worker_processes(str(tmp_path)), "stop() must remove the factory's workers"
    wait_until(lambda: manager.stats.workers_connected == 0, 15, "workers to disconnect after stop()")


def test_max_workers_change_takes_effect(manager, tmp_path, no_orphans):
    f = vine.Factory("local", manager=manager)
    f.min_workers = 1
    f.max_workers = 1
    f.cores = 1
    f.memory = 200
    f.disk = 500
    for _ in range(8):
        t = vine.Task("sleep 1")
        t.set_cores(1)
        manager.submit(t)
    with f:
        wait_for_workers(manager, 1, 15)
        # Two factory periods with plenty of waiting tasks: still one worker.
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            assert manager.stats.workers_connected <= 1
            manager.wait(0.1)
        with pytest.raises(AttributeError):
            f.scratch_dir = str(tmp_path / "elsewhere")  # not changeable while running
        f.max_workers = 3
        wait_until(lambda: manager.stats.workers_connected >= 3, 15, "the factory to grow to max_workers=3")
        assert manager.stats.workers_connected == 3
        done = drain(manager, 60)
    assert all(t.result == "success" for t in done)


def test_attributes():
    f = Factory("local", manager_host_port="localhost:9123")
    with pytest.raises(AttributeError):
        f.no_such_option = 3
    with pytest.raises(AttributeError):
        _ = f.no_such_option
    with pytest.raises(AttributeError):
        f.batch_type = "slurm"
    for name, bad in (("min_workers", "several"), ("min_workers", -1), ("max_workers", 0), ("cores", "x")):
        with pytest.raises(ValueError):
            setattr(f, name, bad)
    f.max_workers = 7
    f.extra_options = "--feature gpu"
    assert f.max_workers == 7 and f.extra_options == "--feature gpu"
    assert f.min_workers == 5 and f.timeout == 300  # vine_factory's defaults
    assert f.cores is None
    assert f.batch_type == "local"


@pytest.mark.parametrize("kwargs", [{}, {"manager_host_port": "localhost"}, {"manager_host_port": "localhost:port"},
                                    {"manager_host_port": ":9123"}, {"manager": object()}])
def test_bad_target_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        Factory("local", **kwargs)


def test_missing_binary_is_an_os_error():
    with pytest.raises(OSError):
        Factory("local", manager_host_port="localhost:9123", factory_binary="/no/such/vine_factory")


def test_start_fails_when_the_factory_dies_at_once(manager, tmp_path, no_orphans):
    f = vine.Factory("local", manager=manager)
    f.password = str(tmp_path / "no-such-password-file")  # vine_factory cannot read it and exits
    with pytest.raises(FactoryError, match="no-such-password-file"):
        f.start()
    assert not f.running
    f.stop()


def test_stop_reaps_workers(manager, tmp_path, no_orphans):
    f = vine.Factory("local", manager=manager)
    f.min_workers = 2
    f.max_workers = 2
    f.cores = 1
    f.memory = 200
    f.disk = 500
    f.start()
    try:
        wait_for_workers(manager, 2, 15)
        pids = [p.pid for p in worker_processes(str(tmp_path))]
        assert len(pids) == 2
    finally:
        f.stop()
    assert not worker_processes(str(tmp_path))
    assert all(process_gone(p) for p in pids)
    wait_until(lambda: manager.stats.workers_connected == 0, 15, "workers to disconnect")


def test_password_reaches_workers(tmp_path, no_orphans):
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"))
    try:
        m.set_password("sesame")
        with vine.Factory("local", manager=m) as f:
            f.min_workers = 1
            f.max_workers = 1
            f.cores = 1
            f.memory = 200
            f.disk = 500
            done = run_tasks(m, 2)
        assert [t.result for t in done] == ["success", "success"]
    finally:
        m.close()


def factory_cli() -> list[str]:
    exe = shutil.which("vine_factory", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "core.deploy.factory"]


def test_cli_runs_tasks_and_exits_cleanly_on_sigterm(manager, tmp_path, no_orphans):
    scratch = tmp_path / "scratch"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [*factory_cli(), "-T", "local", "localhost", str(manager.port), "-w", "1", "-W", "1", "--factory-period", "1",
           "-S", str(scratch), "--cores", "1", "--memory", "500", "--disk", "1000", "-t", "60"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        done = run_tasks(manager, 3)
        assert all(t.result == "success" for t in done)
        workers = manager.status("workers")
        assert len(workers) == 1
        assert workers[0]["total_cores"] == 1 and workers[0]["total_memory"] == 500 and workers[0]["total_disk"] == 1000
        assert manager.stats.total_cores == 1 and manager.stats.total_memory == 500
        assert len(worker_processes(str(tmp_path))) == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode(errors="replace")
        assert not worker_processes(str(tmp_path))
        wait_until(lambda: manager.stats.workers_connected == 0, 15, "workers to disconnect after SIGTERM")
        assert not [p for p in os.listdir(scratch) if p.startswith("worker-")], "worker workspaces must be removed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_cli_scales_down_idle_workers_but_keeps_busy_ones(manager, tmp_path, no_orphans):
    """When the work runs out the factory removes idle workers itself (their --timeout is far off);
    while one long task runs, its worker is kept and the task finishes."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log_file = tmp_path / "factory.log"
    cmd = [*factory_cli(), "-T", "local", "localhost", str(manager.port), "-w", "0", "-W", "2", "--factory-period", "0.5",
           "-S", str(tmp_path / "scratch"), "--cores", "1", "--memory", "300", "--disk", "500", "-t", "120",
           "-d", "all", "-o", str(log_file)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert all(t.result == "success" for t in run_tasks(manager, 4))
        marker = tmp_path / "long-task-started"
        long = vine.Task(f"touch {marker} && sleep 4 && echo kept")
        long.set_cores(1)
        manager.submit(long)
        wait_until(marker.exists, 30, "the long task to start")
        wait_until(lambda: manager.stats.workers_connected == 1, 30, "the idle worker to be removed")
        t = manager.wait(30)
        assert t is long and t.result == "success" and t.std_output.strip() == "kept"
        wait_until(lambda: manager.stats.workers_connected == 0, 30, "the last worker to be removed once idle")
        assert proc.poll() is None, "the factory must keep running: it scaled down, it did not stop"
        assert "scaling down" in log_file.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_cli_factory_timeout(tmp_path, no_orphans):
    # Nothing listens on this port: the factory gives up after --factory-timeout.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([*factory_cli(), "-T", "local", f"localhost:{port}", "--factory-period", "0.5",
                             "--factory-timeout", "1", "-S", str(tmp_path / "scratch")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert b"no manager reachable" in out


FAKE_SBATCH = """#!/bin/sh
# Fake sbatch: runs the job script in the background; the job id is its pid.
for last; do :; done
setsid sh "$last" >/dev/null 2>&1 < /dev/null &
echo $! >> "$FAKE_SLURM_DIR/jobs"
echo "$!;fakecluster"
"""
FAKE_SQUEUE = """#!/bin/sh
[ -f "$FAKE_SLURM_DIR/jobs" ] || exit 0
while read pid; do
  if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null; then echo "$pid"; fi
done < "$FAKE_SLURM_DIR/jobs"
"""
FAKE_SCANCEL = """#!/bin/sh
for id; do kill -TERM "$id" 2>/dev/null; echo "$id" >> "$FAKE_SLURM_DIR/cancelled"; done
exit 0
"""


def test_slurm_batch_type_with_fake_commands(manager, tmp_path, no_orphans):
    """The slurm path end to end, with sbatch/squeue/scancel replaced by small scripts."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_SCANCEL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(tmp_path),
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [*factory_cli(), "-T", "slurm", "localhost", str(manager.port), "-w", "1", "-W", "1", "--factory-period", "1",
           "-S", str(tmp_path / "scratch"), "--cores", "1", "--memory", "300", "--disk", "500", "-t", "60",
           "-E", f"--workdir {tmp_path / 'slurm-worker'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        done = run_tasks(manager, 2)
        assert all(t.result == "success" for t in done)
        jobs = (tmp_path / "jobs").read_text().split()
        assert len(jobs) == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode(errors="replace")
        assert (tmp_path / "cancelled").read_text().split() == jobs
        wait_until(lambda: not worker_processes(str(tmp_path)), 15, "scancel'd workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        kill_all(worker_processes(str(tmp_path)))


PROGRAM_THAT_DIES = """
import sys, time
import core as vine
m = vine.Manager(port=0, run_info_path=sys.argv[1])
f = vine.Factory("local", manager=m)
f.min_workers = 1
f.max_workers = 1
f.cores = 1
f.memory = 200
f.disk = 500
f.start()
deadline = time.monotonic() + 30
while m.stats.workers_connected < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
print("connected" if m.stats.workers_connected else "no worker", flush=True)
time.sleep(60)
"""


def test_killed_program_leaves_no_workers(tmp_path, no_orphans):
    """SIGKILL the user's program: its factory (--parent-death) removes the workers on its own."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    prog = subprocess.Popen([sys.executable, "-c", PROGRAM_THAT_DIES, str(tmp_path / "run-info")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        line = prog.stdout.readline()
        assert line.strip() == b"connected", line + prog.stdout.read() if prog.poll() is not None else line
        assert len(worker_processes(str(tmp_path))) == 1
        factories = children_running(prog.pid, "core.deploy.factory")
        assert len(factories) == 1
        prog.kill()
        prog.wait(10)
        factories[0].wait(20)
        assert not worker_processes(str(tmp_path))
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.wait(10)
        prog.stdout.close()
