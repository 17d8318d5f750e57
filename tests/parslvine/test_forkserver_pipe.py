"""The fork-server child's pipe records (result, then exit status) that let regular calls end sooner.

A child that has flushed its output writes the status it is about to exit with; the server
reports the task then instead of after the child's exit is reaped. These tests check the records
themselves and, with real workers, that what is reported early is what a reaped child would show:
its exit status, its whole output, and no status at all for a child that dies before the record.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

import core as vine
from core.wire.remote import pipe_exit, pipe_result, read_child_pipe
from tests.conftest import run

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_child_pipe_records_round_trip_and_partial_ones_give_no_status():
    envelope = b"R" + b"\x00" * 40 + b"X"  # bytes that look like markers must not confuse the reader
    assert read_child_pipe(pipe_result(envelope) + pipe_exit(0)) == (envelope, 0)
    assert read_child_pipe(pipe_exit(3)) == (None, 3)  # result too big for the pipe: in the file
    assert read_child_pipe(pipe_exit(-1)) == (None, 255)  # as the kernel would report it
    assert read_child_pipe(pipe_result(envelope)) == (envelope, None)  # died before its exit record
    whole = pipe_result(envelope) + pipe_exit(1)
    assert read_child_pipe(whole[:20]) == (None, None)  # died writing its result
    assert read_child_pipe(whole[:-2]) == (envelope, None)  # died writing its exit record
    assert read_child_pipe(b"") == (None, None)


def chatty_then_exit(n: int, code: int) -> None:
    for i in range(n):
        print(f"line {i:06d}")
    print("last line")  # still in the stdout buffer when the function ends
    sys.exit(code)


def chatty_then_return(n: int) -> int:
    for i in range(n):
        print(f"line {i:06d}")
    print("last line", end="")
    return n


def killed() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(90)
def test_early_reported_calls_keep_exit_status_and_whole_output_and_a_killed_child_is_not_success(manager, start_worker):
    start_worker(manager, cores=2)
    t = run(manager, vine.PythonTask(chatty_then_exit, 20000, 3))
    assert t.exit_code == 3
    out = t.std_output
    assert out.count("\n") == 20001 and out.endswith("last line\n")

    t = run(manager, vine.PythonTask(chatty_then_return, 20000))
    assert t.successful() and t.output == 20000 and t.std_output.endswith("line 019999\nlast line")

    t = run(manager, vine.PythonTask(killed))
    assert not t.successful() and t.exit_code != 0
