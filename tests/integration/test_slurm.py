"""vine_factory -Tslurm against a real Slurm (single node on localhost, started by .ci/run with
../shared/ci/start-slurm.sh): workers are Slurm jobs that find a named manager through the catalog,
run its tasks, are scancel'd when the work runs out, and leave nothing in squeue.

Without a Slurm on this machine the test skips, unless ``VINE_TEST_SLURM=1`` (set by .ci/run after it
started Slurm) says one must be there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

import core as vine
from tests.conftest import ROOT, wait_until


def _slurm_ready() -> str | None:
    """None when sbatch works here, else why not."""
    for cmd in ("sbatch", "squeue", "scancel", "sinfo"):
        if shutil.which(cmd) is None:
            return f"{cmd} is not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0 or not any(s.startswith(("idle", "mixed", "alloc")) for s in out.stdout.split()):
        return f"no usable Slurm node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
    return None


_WHY_NOT = _slurm_ready()
if _WHY_NOT and os.environ.get("VINE_TEST_SLURM") != "1":
    pytest.skip(f"no Slurm here ({_WHY_NOT}); .ci/run starts one", allow_module_level=True)


def _our_jobs(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=20, check=True)
    return out.stdout.split()


@pytest.mark.timeout(240)
def test_factory_runs_workers_as_slurm_jobs_and_scales_down(tmp_path, monkeypatch):
    assert _WHY_NOT is None, _WHY_NOT
    project = f"slurm-ci-{uuid.uuid4().hex[:8]}"
    catalog = str(tmp_path / "catalog")
    monkeypatch.setenv("VINE_CATALOG", catalog)
    env = {**os.environ, "VINE_CATALOG": catalog, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    m = vine.Manager(port=0, name=project, run_info_path=str(tmp_path / "run-info"))
    log_file = tmp_path / "factory.log"
    factory = None
    try:
        tasks = []
        for _ in range(6):
            t = vine.Task('echo "job=$SLURM_JOB_ID"; sleep 0.5')
            t.set_cores(1)
            m.submit(t)
            tasks.append(t)
        factory = subprocess.Popen(
            [sys.executable, "-m", "core.deploy.factory", "-T", "slurm", "--manager-name", project, "--catalog", catalog,
             "-w", "0", "-W", "2", "--cores", "1", "--memory", "300", "--disk", "500", "--factory-period", "1",
             "-t", "120", "-S", str(tmp_path / "scratch"), "-B", "-p debug -t 00:10:00 --job-name " + project,
             "-d", "all", "-o", str(log_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = []
        while len(done) < len(tasks):
            t = m.wait(60)
            assert t is not None, f"only {len(done)} of {len(tasks)} tasks ran in Slurm jobs within 60 s"
            done.append(t)
        assert all(t.result == "success" and t.exit_code == 0 for t in done), [(t.result, t.std_output) for t in done]
        ids = {t.std_output.strip().removeprefix("job=") for t in done}
        assert all(i.isdigit() for i in ids), f"a task did not run inside a Slurm job: {ids}"
        # The work ran out: the factory scancels the idle workers' jobs (they would idle out only after 120 s).
        wait_until(lambda: not _our_jobs(project), 60, "the factory to scancel its idle jobs")
        assert factory.poll() is None, "the factory exited instead of scaling down"
        assert "scaling down" in log_file.read_text()
        wait_until(lambda: m.stats.workers_connected == 0, 30, "the cancelled workers to disconnect")
    finally:
        m.close()
        if factory is not None:
            factory.terminate()
            try:
                factory.wait(30)
            finally:
                if factory.poll() is None:
                    factory.kill()
                    factory.wait(10)
                factory.stderr.close()
    assert factory.returncode == 0
    wait_until(lambda: not _our_jobs(project), 30, "squeue to have none of this test's jobs")


@pytest.mark.timeout(120)
def test_submit_workers_submits_a_fixed_number(tmp_path, manager):
    assert _WHY_NOT is None, _WHY_NOT
    name = f"submit-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "core.tools.submit_workers", "-T", "slurm", "localhost", str(manager.port), "2",
                          "--cores", "1", "--memory", "300", "--disk", "500", "-t", "60", "-S", str(tmp_path / "scratch"),
                          "-B", f"-p debug --job-name {name}"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    jobs = [line.split()[-1] for line in out.stdout.splitlines()]
    assert len(jobs) == 2 and sorted(_our_jobs(name)) == sorted(jobs)
    try:
        wait_until(lambda: manager.stats.workers_connected == 2, 60, "both submitted workers to connect")
        t = vine.Task('echo "$SLURM_JOB_ID"')
        manager.submit(t)
        done = manager.wait(60)
        assert done is not None and done.std_output.strip() in jobs
    finally:
        subprocess.run(["scancel", *jobs], timeout=30)
    wait_until(lambda: not _our_jobs(name), 30, "scancel to remove the submitted jobs")
