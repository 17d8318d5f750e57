"""A library's result envelopes (core/wire/library_runner.py ``_run_call``): the plain-value shortcut
writes cloudpickle's bytes exactly, and every kind of outcome decodes as what the call did."""

from __future__ import annotations

import pickle

import pytest

from core.wire.library_runner import _run_call
from core.wire.remote import decode_result, encode_result


def echo(x):
    return x


def boom():
    raise KeyError("nope")


FUNCTIONS = {"echo": echo, "boom": boom}


def call(function: str, *args) -> tuple[int, bytes | None]:
    msg = {"op": "call", "id": 1, "function": function, "args": pickle.dumps((list(args), {}, [])), "sandbox": "/nonexistent",
           "result": "/nonexistent/r"}
    return _run_call(FUNCTIONS, msg, inline=True)


@pytest.mark.parametrize("value", [None, True, False, 0, -7, 2**70, 1.5, float("inf"), "", "text é", b"", b"\x00bytes"])
def test_a_plain_return_value_is_the_same_envelope_as_cloudpickles(value) -> None:
    status, data = call("echo", value)
    assert status == 0 and data == encode_result(True, value)
    assert decode_result(data) == (True, value, None)


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, (1,), echo, 1 + 2j])
def test_other_return_values_go_through_cloudpickle(value) -> None:
    status, data = call("echo", value)
    assert status == 0 and data == encode_result(True, value)
    assert decode_result(data)[:2] == (True, value)


def test_a_raised_exception_is_a_failure_envelope() -> None:
    status, data = call("boom")
    ok, exc, tb = decode_result(data)
    assert status == 0 and not ok and isinstance(exc, KeyError) and "boom" in tb
