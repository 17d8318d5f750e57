"""The exact commands and submit files the factory gives each batch system (HTCondor and SGE have no
daemons on this machine, so these are their only tests; Slurm also runs for real in test_slurm.py)."""

from __future__ import annotations

import pytest

from core.deploy.batch import CondorQueue, SgeQueue, SlurmQueue
from core.deploy.factory import Settings
from core.errors import FactoryError
from core.tools import submit_workers


def test_slurm_command(tmp_path):
    q = SlurmQueue(str(tmp_path), "-p debug -t 01:00:00")
    argv = q.submit_argv("w1", "/s/w1.sh", Settings(cores=2.5, memory=1000))
    assert argv == ["sbatch", "--parsable", "--job-name", "vine_worker", "--output", "/dev/null", "--error", "/dev/null",
                    "--nodes", "1", "--cpus-per-task", "3", "--mem=1000M", "-p", "debug", "-t", "01:00:00", "/s/w1.sh"]
    assert q.parse_id("1234;cluster\n") == "1234" and q.parse_id("Submitted batch job 77") == "77"
    assert q.remove_argv(["1", "2"]) == ["scancel", "1", "2"]
    assert q.submit_argv("w", "/s.sh", Settings(cores=4, autosize=True))[-1] == "/s.sh"
    assert "--cpus-per-task" not in q.submit_argv("w", "/s.sh", Settings(cores=4, autosize=True))


def test_condor_submit_file(tmp_path):
    q = CondorQueue(str(tmp_path), "+JobFlavour = \"short\"", wrapper_inputs=("/in/wrap.sh",))
    s = Settings(cores=2, memory=2000, disk=1500, gpus=1, condor_requirements=("OpSys == \"LINUX\"",), workers_blocked=("bad1",))
    assert q.submit_argv("w2", "/s/w2.sh", s) == ["condor_submit", str(tmp_path / "w2.submit")]
    assert (tmp_path / "w2.submit").read_text().splitlines() == [
        "universe = vanilla", "executable = /s/w2.sh", "output = /dev/null", "error = /dev/null",
        f"log = {tmp_path / 'condor.log'}", "should_transfer_files = if_needed", "when_to_transfer_output = on_exit",
        "getenv = true", 'environment = "VINE_BATCH_JOB_ID=$(Cluster)"', "transfer_input_files = /in/wrap.sh",
        "request_cpus = 2", "request_memory = 2000", "request_disk = 1536000", "request_gpus = 1",
        'requirements = (OpSys == "LINUX") && (Machine != "bad1")', '+JobFlavour = "short"', "queue 1"]
    assert q.parse_id("1 job(s) submitted to cluster 4321.\n") == "4321"
    assert q.remove_argv(["4321"]) == ["condor_rm", "4321"]
    with pytest.raises(FactoryError, match="cluster id"):
        q.parse_id("ERROR: no such file")


def test_sge_command(tmp_path):
    q = SgeQueue(str(tmp_path), "-q short.q -l h_rt=3600")
    assert q.submit_argv("w3", "/s/w3.sh", Settings()) == [
        "qsub", "-terse", "-N", "vine_worker", "-o", "/dev/null", "-e", "/dev/null", "-S", "/bin/sh",
        "-q", "short.q", "-l", "h_rt=3600", "/s/w3.sh"]
    assert q.parse_id("555\n") == "555" and q.parse_id('Your job 556 ("vine_worker") has been submitted') == "556"
    assert q.remove_argv(["555"]) == ["qdel", "555"]


def test_job_script_exports_and_runs_the_worker(tmp_path):
    from core.deploy.batch import WorkerSpec

    q = SlurmQueue(str(tmp_path))
    path = q._script("w4", WorkerSpec(["python3", "-m", "core.worker", "--cores", "1", "host", "9123"], {"PYTHONPATH": "/a b"}))
    with open(path) as fh:
        assert fh.read() == "#!/bin/sh\nexport PYTHONPATH='/a b'\nexec python3 -m core.worker --cores 1 host 9123\n"


@pytest.mark.parametrize("argv, message", [
    (["-T", "slurm", "host", "9123"], "HOST PORT N"),
    (["-T", "slurm", "host", "9123", "many"], "integer"),
    (["-T", "slurm", "host", "9123", "0"], "between 1 and 10000"),
    (["-T", "mesos", "host", "9123", "1"], "not supported"),
    (["-T", "slurm", "-M", "proj", "host", "3"], "only the number"),
])
def test_submit_workers_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        submit_workers.main(argv)
    assert message in capsys.readouterr().err


def test_submit_workers_reports_a_missing_batch_system(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no condor_submit anywhere
    rc = submit_workers.main(["-T", "condor", "host", "9123", "1", "-S", str(tmp_path / "s")])
    assert rc == 1 and "condor_submit" in capsys.readouterr().err
