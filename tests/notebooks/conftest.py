"""The notebooks under notebooks/ run as their own CI step, not in the default ``pytest -q``.

They take a minute or more each (real kernels, real workers, dask-awkward and Parsl), so tests
marked ``notebooks`` are skipped unless ``VINE_TEST_NOTEBOOKS=1``:

    VINE_TEST_NOTEBOOKS=1 .venv/bin/python -m pytest -q tests/notebooks
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "notebooks: executes a notebook of notebooks/ in a real Jupyter kernel (VINE_TEST_NOTEBOOKS=1)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per executed notebook (time, workers seen), so a CI log shows what each cost."""
    from tests.notebooks.run_notebooks import RUN_SUMMARIES

    if RUN_SUMMARIES:
        terminalreporter.section("notebooks")
        for line in RUN_SUMMARIES:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("VINE_TEST_NOTEBOOKS") == "1":
        return
    skip = pytest.mark.skip(reason="notebooks run in their own CI step: set VINE_TEST_NOTEBOOKS=1 to run them "
                                   "(VINE_TEST_NOTEBOOKS=1 .venv/bin/python -m pytest -q tests/notebooks)")
    for item in items:
        if item.get_closest_marker("notebooks"):
            item.add_marker(skip)
