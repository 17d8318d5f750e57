"""The house style's static checks, run with the tests: ruff's error rules everywhere, mypy on the
pure modules (the codec, the scheduler state and its parts, the allocation rules)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PURE = ["core/wire/protocol.py", "core/state/resources.py", "core/constants.py", "core/state/events.py",
        "core/state/records.py", "core/state/transfers.py", "core/state/recovery.py", "core/state/pipelining.py",
        "core/state/scheduler.py"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(240)
def test_ruff_finds_no_errors():
    """pyflakes, syntax, import order and McCabe complexity (the rule set in pyproject.toml's [tool.ruff.lint])."""
    out = _run("ruff", "check", "--output-format", "concise", "core", "daskvine", "parslvine", "tests")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(240)
def test_mypy_on_the_pure_modules():
    out = _run("mypy", *PURE)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(240)
def test_mypy_strict_on_the_state():
    """The scheduler state, every module of it, passes ``mypy --strict`` (issue 11 point 7)."""
    out = _run("mypy", "--strict", "core/state")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(240)
def test_mypy_strict_on_the_wire():
    """The wire package (messages, codec, handshake, receiving, the remote framings) passes
    ``mypy --strict`` (issue 11 point 7)."""
    out = _run("mypy", "--strict", "core/wire")
    assert out.returncode == 0, out.stdout + out.stderr
