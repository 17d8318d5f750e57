"""Fixtures for parslvine's tests: a Parsl DFK on a TaskVineExecutor with real factory workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

MODES = ["regular", "serverless"]


def make_executor(mode: str, launch: str = "factory", **kw: Any) -> Any:
    from parslvine import TaskVineExecutor, TaskVineFactoryConfig, TaskVineManagerConfig

    kw.setdefault("manager_config", TaskVineManagerConfig(port=0))
    if launch == "factory":
        kw.setdefault("factory_config", TaskVineFactoryConfig(min_workers=1, max_workers=1, cores=2, memory=2000, disk=4000))
    return TaskVineExecutor(label=f"vine_{mode}", function_exec_mode=mode, worker_launch_method=launch, **kw)


@pytest.fixture(scope="module", params=MODES)
def dfk(request, tmp_path_factory) -> Iterator[Any]:
    """A loaded DFK (one per mode and test module) whose only executor is parslvine's."""
    import parsl
    from parsl.config import Config

    run_dir = tmp_path_factory.mktemp(f"parsl-{request.param}")
    # initialize_logging=False: Parsl would open runinfo/.../parsl.log and never close it (a
    # ResourceWarning, an error under our warnings-as-errors setting).
    config = Config(executors=[make_executor(request.param)], run_dir=str(run_dir / "runinfo"), initialize_logging=False)
    d = parsl.load(config)
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> str:
    """Run the test in its own directory (relative Parsl Files are relative to the cwd)."""
    monkeypatch.chdir(tmp_path)
    return os.fspath(tmp_path)


def start_executor(tmp_path, ex: Any) -> Any:
    """Start an executor outside a DFK, with its run directory under the test's tmp_path."""
    ex.run_dir = str(tmp_path / "runinfo")
    ex.run_id = "test"
    ex.start()
    return ex


@pytest.fixture
def executors() -> Iterator[list[Any]]:
    """Executors a test starts; each is shut down at teardown (a no-op if the test did it)."""
    started: list[Any] = []
    yield started
    for ex in started:
        ex.shutdown()
