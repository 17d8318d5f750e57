"""core.wire.protocol encodes headers through json's C encoder made once: the same text as the
project's JSONEncoder (compact, ASCII, no NaN), and the same refusals."""

from __future__ import annotations

import json

import pytest

from core.errors import LocalProtocolError
from core.wire import messages as M
from core.wire.protocol import PREFIX, encode_frame, encode_message

REFERENCE = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("msg", [
    M.Task(M.TaskDefinition(7, "echo 'é' \"x\"\n", resources={"cores": 1.0, "memory": 2000.0}, env={"A": None, "B": "ü"},
                            inputs=(M.InputRef("file-md5-1", "in put", 0, "file", 0o644),), stdout_limit=1 << 62, queued=True,
                            python=M.PythonRun("f", "a", warm_imports=("numpy",)))),
    M.Complete(3, 0, 0, start=1796185024.03412, end=1e300, outputs={"x": 5}, measured={"cores": 0.5}),
    M.Unlink("name with \u2028 and \x00"),
])
def test_the_header_text_is_the_reference_encoders(msg: M.Message) -> None:
    frame = encode_message(msg)
    hlen, _ = PREFIX.unpack_from(frame)
    assert frame[PREFIX.size:PREFIX.size + hlen] == REFERENCE.encode(msg.to_header()).encode()


@pytest.mark.parametrize("bad, why", [(float("nan"), "Out of range float"), (float("inf"), "Out of range float"),
                                      (object(), "not JSON serializable")])
def test_unsendable_values_are_refused_naming_the_message(bad: object, why: str) -> None:
    with pytest.raises(LocalProtocolError, match=f"message 'unlink' is not JSON-serialisable: .*{why}"):
        encode_frame({"type": "unlink", "name": bad})


def test_a_header_that_refers_to_itself_is_refused() -> None:
    header: dict[str, object] = {"type": "unlink", "name": "x"}
    header["self"] = header
    with pytest.raises(LocalProtocolError, match="not JSON-serialisable"):
        encode_frame(header)
