"""The codec of a small result carried inside a ``complete`` (Complete.result_name / result_size)
and of the manager's permission for it (PythonRun.result_in_complete)."""

from __future__ import annotations

import pytest

from core.errors import RemoteProtocolError
from core.wire import messages as M
from core.wire.protocol import FrameDecoder, encode_message


def _round_trip(msg: M.Message, payload: bytes = b"") -> tuple[M.Message, bytes]:
    frames = FrameDecoder().feed(encode_message(msg, payload))
    assert len(frames) == 1
    return frames[0].message, frames[0].payload


def test_a_complete_with_a_result_round_trips_with_its_payload():
    msg = M.Complete(7, 0, 0, result_name="buffer-rnd-ab-1", result_size=5)
    back, payload = _round_trip(msg, b"RESULstdout")
    assert isinstance(back, M.Complete)
    assert (back.id, back.result_name, back.result_size) == (7, "buffer-rnd-ab-1", 5)
    assert payload == b"RESULstdout"


def test_a_complete_without_a_result_sends_neither_field():
    header = M.Complete(7, 0, 0).to_header()
    assert "result_name" not in header and "result_size" not in header
    back = M.decode(header)
    assert isinstance(back, M.Complete) and back.result_name is None and back.result_size == 0


@pytest.mark.parametrize("field, value, words", [
    ("result_size", -1, "byte count"),
    ("result_size", "5", "byte count"),
    ("result_size", True, "byte count"),
    ("result_name", 5, "a string or null"),
])
def test_a_complete_with_a_bad_result_field_is_refused_naming_it(field, value, words):
    header = {"type": "complete", "id": 1, "result": 0, "exit_code": 0, field: value}
    with pytest.raises(RemoteProtocolError) as err:
        M.decode(header)
    assert field in str(err.value) and words in str(err.value)


def test_the_python_run_carries_the_inline_result_limit_only_when_set():
    plain = M.PythonRun(".vine_function", ".vine_args", ".vine_result")
    assert "result_in_complete" not in plain.to_wire()
    limited = M.PythonRun(".vine_function", ".vine_args", ".vine_result", result_in_complete=65536)
    assert limited.to_wire()["result_in_complete"] == 65536
    assert M.PythonRun.FILL(limited.to_wire()) == limited
    with pytest.raises(RemoteProtocolError, match="result_in_complete"):
        M.decode({"type": "task", "task": {"id": 1, "command": "x", "python": {**limited.to_wire(), "result_in_complete": -1}}})
