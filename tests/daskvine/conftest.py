"""Fixtures for the DaskVine tests: one DaskVine manager with two real workers per test module.

Starting workers costs a few tenths of a second each, so modules share them; the ``dv`` fixture
checks that every test leaves the manager without tasks (a ``get`` that raised must have cancelled
and collected its graph's tasks).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import WorkerProcess, fail_if_tasks_left, wait_for_workers

MODES = ["function-calls", "tasks"]


@pytest.fixture(scope="module")
def shared_dv(tmp_path_factory) -> Iterator[object]:
    from daskvine import DaskVine

    base = tmp_path_factory.mktemp("daskvine")
    m = DaskVine(port=0, run_info_path=str(base / "vine-run-info"))
    workers = [WorkerProcess(m.port, str(base / f"worker{i}"), cores=1, memory=2000, disk=4000) for i in range(2)]
    try:
        wait_for_workers(m, 2)
        yield m
    finally:
        m.close()
        for w in workers:
            w.reap()


@pytest.fixture
def dv(shared_dv) -> Iterator[object]:
    """The module's DaskVine (2 workers x 1 core); fails a test that leaves tasks behind."""
    yield shared_dv
    fail_if_tasks_left(shared_dv, "the DaskVine manager")


@pytest.fixture(params=MODES)
def mode(request) -> str:
    """Both task modes: function calls to a warm library (the default) and PythonTasks."""
    return str(request.param)
