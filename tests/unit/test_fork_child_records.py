"""What a fork-server child writes and how the server knows it has all of it (core/wire/remote.py):
the plain-value shortcut of ``encode_value`` gives cloudpickle's bytes exactly, and
``child_pipe_ended`` says "whole" at the first byte count that holds the exit record, never before."""

from __future__ import annotations

import enum
import math

import cloudpickle
import pytest

from core.wire.remote import child_pipe_ended, encode_value, pipe_exit, pipe_result, read_child_pipe


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


PLAIN = [None, True, False, 0, 1, -1, 255, 256, 2**31, -(2**63), 2**200, 0.0, -0.0, 1.5, math.inf, "", "x",
         "é\u2603\U0001f600", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "surrogateescape"),
         "y" * 300_000, b"", b"\x00", bytes(range(256)) * 2000]


@pytest.mark.parametrize("value", PLAIN + [Colour.RED, Name("sub"), (1, "a"), [None], {"k": b"v"}, {1.5}],
                         ids=lambda v: type(v).__name__ + ":" + repr(v)[:20])
def test_encode_value_is_cloudpickle_byte_for_byte(value) -> None:
    # Plain values take pickle.dumps, everything else cloudpickle: the file a consumer reads is the same.
    assert encode_value(value) == (True, cloudpickle.dumps(value))


def test_encode_value_of_nan_round_trips() -> None:
    ok, data = encode_value(math.nan)
    assert ok and data == cloudpickle.dumps(math.nan) and math.isnan(cloudpickle.loads(data))


def test_an_unpicklable_value_is_still_a_failure_record() -> None:
    ok, data = encode_value(x for x in ())  # a generator: neither pickle nor cloudpickle takes it
    assert not ok and "cannot be pickled" in str(cloudpickle.loads(data)[2])


@pytest.mark.parametrize("result", [None, b"", b"R", b"X" * 5, bytes(range(256)) * 300])
@pytest.mark.parametrize("status", [0, 1, 255])
def test_child_pipe_ended_at_exactly_its_last_byte(result: bytes | None, status: int) -> None:
    whole = (pipe_result(result) if result is not None else b"") + pipe_exit(status)
    for cut in range(len(whole)):
        assert not child_pipe_ended(bytearray(whole[:cut])), cut
    assert child_pipe_ended(bytearray(whole)) and child_pipe_ended(whole)
    assert read_child_pipe(whole) == (result, status)


def test_child_pipe_ended_with_bytes_that_are_not_records_lets_the_reader_refuse_them() -> None:
    # Past where the exit record would end, whatever it is: the reader then finds no status, and the
    # server waits for the child's real one (from waitpid).
    for junk in (b"garbage", pipe_exit(0) + b"more", pipe_result(b"ab")[:4] + b"\xff" * 20):
        if child_pipe_ended(junk):
            assert read_child_pipe(junk)[1] is None
    assert child_pipe_ended(b"garbage")  # 7 bytes reach past a 5-byte exit record
