"""Parsl apps through the DFK on parslvine's executor, in both modes, on real factory workers."""

from __future__ import annotations

import logging
import os

import pytest
from parsl import bash_app, python_app
from parsl.data_provider.files import File

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(90)


class OddError(Exception):
    """An exception type of our own: it must come back as itself, not as a wrapper."""


@python_app
def add(a, b, parsl_resource_specification={}):  # noqa: B006 - Parsl's way to accept a per-call spec
    return a + b


@python_app
def raise_odd(n):
    raise OddError(f"odd {n}")


@python_app
def sandbox_env(parsl_resource_specification={}):  # noqa: B006
    import os

    return {k: os.environ.get(k) for k in ("CORES", "MEMORY", "DISK")}, os.getpid()


@python_app
def copy_upper(inputs=(), outputs=()):
    with open(inputs[0].filepath) as src, open(outputs[0].filepath, "w") as dst:
        dst.write(src.read().upper())
    return os.path.basename(outputs[0].filepath)


@python_app
def count_words(path_file):
    with open(path_file.filepath) as fh:
        return len(fh.read().split())


@bash_app
def shout(word, stdout=None, stderr=None):
    return f"echo out-{word}; echo err-{word} >&2"


@bash_app
def fail_with(code, stderr=None):
    return f"echo about to fail >&2; exit {code}"


def test_python_app_values(dfk):
    assert add(1, 2).result() == 3
    futures = [add(i, i) for i in range(20)]
    assert [f.result() for f in futures] == [2 * i for i in range(20)]
    # A dependency: the DFK passes the first result to the second call.
    assert add(add(1, 1), 10).result() == 12


@python_app
def apply(f, x):
    return f(x)


def test_arguments_only_parsls_serializer_can_send(dfk):
    """A lambda as an argument: pickle cannot, so the call goes with Parsl's dill, which the
    worker imports for it (regular mode: warm in the fork server from that call on)."""
    assert apply(lambda x: x * 7, 6).result() == 42
    assert apply(lambda x: (lambda y: x + y), 1).result()(2) == 3  # and a function value comes back
    assert add(2, 2).result() == 4  # the calls after it as before


def test_exceptions_keep_their_type(dfk):
    with pytest.raises(OddError, match="odd 3"):
        raise_odd(3).result()
    with pytest.raises(ZeroDivisionError):
        python_app(lambda: 1 / 0)().result()


def test_file_inputs_and_outputs_are_staged(dfk, in_tmp):
    os.makedirs("data")
    with open("data/words.txt", "w") as fh:
        fh.write("one two three\n")
    fut = copy_upper(inputs=[File("data/words.txt")], outputs=[File("results/upper.txt")])
    assert fut.result() == "upper.txt"
    fut.outputs[0].result()  # the DataFuture of the output completes too
    with open(os.path.join(in_tmp, "results/upper.txt")) as fh:
        assert fh.read() == "ONE TWO THREE\n"
    # A File given as a plain argument is an input as well.
    assert count_words(File("data/words.txt")).result() == 3


def test_bash_app_stdout_and_stderr(dfk, in_tmp):
    assert shout("hi", stdout="logs/hi.out", stderr="logs/hi.err").result() == 0
    with open("logs/hi.out") as out, open("logs/hi.err") as err:
        assert out.read() == "out-hi\n"
        assert err.read().endswith("err-hi\n")  # Parsl's bash runner writes the command line above it
    # Absolute paths are not staged: the app writes them where they are (same machine here).
    target = os.path.join(in_tmp, "abs.out")
    assert shout("abs", stdout=target).result() == 0
    with open(target) as fh:
        assert fh.read() == "out-abs\n"


def test_bash_app_failure_is_parsls_error_and_keeps_stderr(dfk, in_tmp):
    from parsl.app.errors import BashExitFailure

    with pytest.raises(BashExitFailure) as info:
        fail_with(3, stderr="fail.err").result()
    assert info.value.exitcode == 3
    with open("fail.err") as fh:
        assert "about to fail" in fh.read()


def test_missing_output_stays_missing(dfk, in_tmp):
    """An app that raises before writing its output: the user sees its exception, no stray file."""
    with pytest.raises(FileNotFoundError):
        copy_upper(inputs=[File("nonexistent-but-declared.txt")], outputs=[File("never.txt")]).result()
    assert not os.path.exists("never.txt")


def test_resource_specification(dfk, caplog):
    spec = {"cores": 1, "memory": 1000, "disk": 1000, "gpus": 0, "running_time_min": 10, "priority": 1, "category": "x"}
    env, _pid = sandbox_env(parsl_resource_specification=spec).result()
    executor = dfk.executors[next(iter(dfk.executors))]
    if executor.function_exec_mode == "regular":
        assert env["CORES"] == "1"  # one of the worker's two cores: the call is a task with its own allocation
    with caplog.at_level(logging.WARNING, logger="parslvine.executor"):
        # Parsl's suite sends these: unknown keys are logged and ignored, and 1 MB of memory is no limit.
        assert add(2, 2, parsl_resource_specification={"cpus": 1, "memory": 1, "disk": 1}).result() == 4
        assert add(3, 3, parsl_resource_specification={"cores": 1, "memory": 1}).result() == 6
    assert any("cpus" in r.getMessage() for r in caplog.records) or "cpus" in executor._warned_keys
    # The category reached the manager: it appears in the transactions log's READY records.
    tx = os.path.join(executor.manager.logging_directory, "transactions")
    executor._client.flush_logs()  # the manager runs in the manager process
    with open(tx) as fh:
        assert " READY x " in fh.read()


def test_outstanding_counts_calls_in_flight(dfk):
    executor = dfk.executors[next(iter(dfk.executors))]
    slow = python_app(lambda s: __import__("time").sleep(s) or s)
    futures = [slow(0.5) for _ in range(4)]
    # The DFK hands calls to the executor from its launch thread: wait for them to arrive.
    wait_until(lambda: executor.outstanding() >= 1, 20, "calls to reach the executor")
    assert [f.result() for f in futures] == [0.5] * 4
    assert executor.outstanding() == 0


def test_exec_mode_per_call(dfk):
    other = {"regular": "serverless", "serverless": "regular"}
    executor = dfk.executors[next(iter(dfk.executors))]
    spec = {"exec_mode": other[executor.function_exec_mode]}
    assert add(20, 22, parsl_resource_specification=spec).result() == 42
