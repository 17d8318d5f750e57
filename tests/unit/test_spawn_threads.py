"""The worker's --spawn-threads option and its default (core/worker/options.py)."""

from __future__ import annotations

import os

import pytest

from core.worker.options import build_parser, spawn_threads


def test_an_explicit_count_is_used_as_given() -> None:
    assert spawn_threads(0, 8) == 0
    assert spawn_threads(1, 8) == 1
    assert spawn_threads(3, 1) == 3


def test_the_default_follows_the_machine_and_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert spawn_threads(None, 2) == 0  # a small machine: every core is already busy
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert spawn_threads(None, 1) == 0  # a 1-core worker runs one shell at a time
    assert spawn_threads(None, 2) == 2
    assert spawn_threads(None, 12) == 4


def test_a_negative_count_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="--spawn-threads"):
        spawn_threads(-1, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--spawn-threads", "-2", "localhost", "9123"])
    assert build_parser().parse_args(["--spawn-threads", "2", "localhost", "9123"]).spawn_threads == 2
