"""The factory's planning and configuration, without processes (REFERENCE §2.2)."""

from __future__ import annotations

import json
import os

import pytest

from core.deploy.batch import LocalQueue, SlurmQueue
from core.deploy.factory import FactoryRunner, Settings, build_parser, settings_from_args, workers_needed, workers_to_submit


def manager(waiting=0, running=0, workers=0, **extra):
    return {"tasks_waiting": waiting, "tasks_running": running, "workers": workers, **extra}


@pytest.mark.parametrize(
    "managers, settings, expected",
    [
        ([manager(0, 0)], Settings(min_workers=1, max_workers=2), 1),  # idle: the minimum
        ([manager(10, 0)], Settings(min_workers=1, max_workers=2), 2),  # busy: the maximum
        ([manager(2, 1)], Settings(min_workers=0, max_workers=10), 3),  # one per waiting or running task
        ([manager(9, 0)], Settings(min_workers=0, max_workers=10, tasks_per_worker=4), 3),  # ceil(9 / 4)
        ([manager(9, 0)], Settings(min_workers=0, max_workers=10, capacity=2), 2),
        ([manager(3, 0), manager(4, 1)], Settings(min_workers=0, max_workers=100), 8),  # summed over managers
        ([manager(1, 0, tasks_total_cores=8)], Settings(min_workers=0, max_workers=10, cores=2), 4),  # resource need
        ([], Settings(min_workers=2, max_workers=5), 2),
    ],
)
def test_workers_needed(managers, settings, expected):
    assert workers_needed(managers, settings) == expected


@pytest.mark.parametrize(
    "need, submitted, connected, per_cycle, expected",
    [
        (5, 0, 0, 5, 5),
        (10, 0, 0, 5, 5),  # per-cycle cap
        (10, 4, 1, 5, 2),  # 3 of ours still unconnected: only 2 more this cycle
        (10, 4, 4, 5, 5),
        (3, 3, 3, 5, 0),  # satisfied
        (2, 3, 3, 5, 0),  # never negative (the factory does not kill to shrink)
        (5, 0, 2, 5, 3),  # 2 workers from elsewhere count towards the need
        (10, 0, 0, 0, 10),  # 0 = no per-cycle cap
    ],
)
def test_workers_to_submit(need, submitted, connected, per_cycle, expected):
    assert workers_to_submit(need, submitted, connected, per_cycle) == expected


def test_settings_from_json():
    s = Settings().with_json({"max-workers": 4, "min-workers": 2, "cores": 1, "memory": "500", "condor-requirements": "a == b"})
    assert (s.max_workers, s.min_workers, s.cores, s.memory, s.condor_requirements) == (4, 2, 1.0, 500.0, ("a == b",))
    assert Settings().with_json({"min-workers": 9, "max-workers": 3}).min_workers == 3  # min > max → min = max
    for bad in ({"min-workers": -1}, {"max-workers": 0}, {"max-workers": "many"}, {"max-workers": 1.5}, [1, 2], {"timeout": True}):
        with pytest.raises(ValueError):
            Settings().with_json(bad)


def runner(tmp_path, *argv):
    args = build_parser().parse_args(list(argv))
    args.host, args.port = "localhost", 9123
    return FactoryRunner(args, settings_from_args(args), LocalQueue(str(tmp_path)))


def test_config_reload_keeps_old_values_when_invalid(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"max-workers": 3}))
    r = runner(tmp_path, "-C", str(cfg), "-w", "1")
    assert (r.settings.min_workers, r.settings.max_workers) == (1, 3)
    cfg.write_text(json.dumps({"max-workers": 6, "cores": 2}))
    os.utime(cfg, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    r.reload_config()
    assert (r.settings.max_workers, r.settings.cores) == (6, 2)
    cfg.write_text("{ not json")
    os.utime(cfg, ns=(2, 2))
    r.reload_config()
    assert r.settings.max_workers == 6
    cfg.write_text(json.dumps({"max-workers": 0}))
    os.utime(cfg, ns=(3, 3))
    r.reload_config()
    assert r.settings.max_workers == 6


def test_worker_command_line(tmp_path):
    r = runner(tmp_path, "--cores", "1", "--memory", "500", "-t", "60", "-E", "--feature x", "--env", "A=b")
    spec = r.worker_spec()
    argv = spec.argv
    assert argv[-2:] == ["localhost", "9123"]
    assert "--parent-death" in argv and "--from-factory" in argv
    assert argv[argv.index("--cores") + 1] == "1" and argv[argv.index("--memory") + 1] == "500"
    assert argv[argv.index("--timeout") + 1] == "60"
    assert "--disk" not in argv
    assert ["--feature", "x"] == argv[argv.index("--feature"):argv.index("--feature") + 2]
    assert spec.env["A"] == "b"


def test_slurm_submission_arguments(tmp_path):
    q = SlurmQueue(str(tmp_path), "--partition debug")
    argv = q.submit_argv("w1", "/s/w1.sh", Settings(cores=2, memory=1000))
    assert argv[0] == "sbatch" and argv[-1] == "/s/w1.sh"
    assert "--cpus-per-task" in argv and "--mem=1000M" in argv
    assert argv[-3:-1] == ["--partition", "debug"]
    assert q.parse_id("4242;cluster\n") == "4242"
    assert q.parse_id("Submitted batch job 77\n") == "77"
