"""A forked PythonTask adopts an environment the fork server made once for its kind of request
(core/worker/forkserver.py ``PreparedEnvironments``): the C environment (what a subprocess, or a
C library's ``getenv``, sees) and ``os.environ`` are both exactly the task's, what one task changes
stays with it, and a request the prepared path cannot hold exactly takes the child's own way."""

from __future__ import annotations

import os
import subprocess
import sys

import cloudpickle
import pytest

import core as vine
from core.worker.forkserver import PreparedEnvironments
from tests.conftest import drain

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def both_environments(change: bool = False):
    """(os.environ, the C environment a subprocess inherits, os.environb decoded); with ``change``,
    the task first sets, replaces and removes variables of its own."""
    if change:
        os.environ["VINE_TEST_SET_BY_TASK"] = "mine"
        os.environ["VINE_TEST_PREPARED"] = "replaced by the task"
        del os.environ["VINE_TEST_TO_DROP"]
    out = subprocess.run(["env", "-0"], capture_output=True, check=True).stdout
    c_env = dict(item.split(b"=", 1) for item in out.split(b"\0") if item)
    return dict(os.environ), {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
                              for k, v in c_env.items()}, {k.decode(): v.decode() for k, v in os.environb.items()}


def check_same(env: dict, c_env: dict, env_b: dict) -> None:
    assert env == c_env == env_b


@pytest.mark.timeout(90)
def test_forked_tasks_adopt_exactly_their_environment(manager, start_worker, monkeypatch):
    monkeypatch.setenv("VINE_TEST_TO_DROP", "the worker's")
    start_worker(manager, cores=1)

    first = vine.PythonTask(both_environments, True)
    first.set_env_var("VINE_TEST_PREPARED", "the task's")
    second = vine.PythonTask(both_environments)  # the same kind of request again: the same prepared environment
    second.set_env_var("VINE_TEST_PREPARED", "the task's")
    third = vine.PythonTask(both_environments)
    third.set_env_var("VINE_TEST_TO_DROP", None)
    third.set_env_var("VINE_TEST_OTHER", "é \u2603 with = and spaces")
    for t in (first, second, third):
        manager.submit(t)
        assert drain(manager, 60) == [t] and t.result == "success", (t.result, t.std_output)

    env, c_env, env_b = first.output
    check_same(env, c_env, env_b)
    assert env["VINE_TEST_SET_BY_TASK"] == "mine" and env["VINE_TEST_PREPARED"] == "replaced by the task"
    assert "VINE_TEST_TO_DROP" not in env

    env, c_env, env_b = second.output  # what the first task changed stayed in its own process
    check_same(env, c_env, env_b)
    assert env["VINE_TEST_PREPARED"] == "the task's" and env["VINE_TEST_TO_DROP"] == "the worker's"
    assert "VINE_TEST_SET_BY_TASK" not in env
    assert env["CORES"] == "1" and env["TMPDIR"].endswith(".taskvine.tmp")

    env, c_env, env_b = third.output
    check_same(env, c_env, env_b)
    assert "VINE_TEST_TO_DROP" not in env and "VINE_TEST_PREPARED" not in env
    assert env["VINE_TEST_OTHER"] == "é \u2603 with = and spaces"


def test_prepared_environment_is_the_difference_applied() -> None:
    base = {"A": "1", "B": "2", "C": "3"}
    envs = PreparedEnvironments(base)
    if envs.pointer is None:
        pytest.skip("no ctypes on this interpreter: children apply the difference themselves")
    pointer, address, data = envs.get({"B": "two", "D": "4"}, ["C"])
    assert data == {b"A": b"1", b"B": b"two", b"D": b"4"}
    assert envs.get({"B": "two", "D": "4"}, ["C"]) == (pointer, address, data)  # made once
    import ctypes

    strings = ctypes.cast(address, ctypes.POINTER(ctypes.c_char_p))
    assert [strings[i] for i in range(4)] == [b"A=1", b"B=two", b"D=4", None]  # NULL-terminated, base order first


@pytest.mark.parametrize("env", [{"X": "a\0b"}, {"X=Y": "1"}, {"": "1"}, {"X": "\ud800"}])
def test_what_the_c_environment_cannot_hold_takes_the_childs_own_way(env) -> None:
    # None: the child sets the variables itself, and fails as a task always has for such a value.
    assert PreparedEnvironments({"A": "1"}).get(env, []) is None


def test_prepared_environments_are_bounded() -> None:
    envs = PreparedEnvironments({"A": "1"})
    if envs.pointer is None:
        pytest.skip("no ctypes on this interpreter")
    for i in range(PreparedEnvironments.MAX * 3):
        assert envs.get({"N": str(i)}, [])[2][b"N"] == str(i).encode()
    assert len(envs.entries) == len(envs.arrays) == PreparedEnvironments.MAX


@pytest.mark.timeout(60)
def test_a_nul_in_a_variable_still_fails_the_task(manager, start_worker):
    start_worker(manager, cores=1)
    t = vine.PythonTask(both_environments)
    t.set_env_var("VINE_TEST_NUL", "a\0b")
    manager.submit(t)
    assert drain(manager, 60) == [t]
    assert t.result != "success" or t.exit_code != 0, (t.result, t.exit_code)
    assert "null" in (t.std_output or "")
