"""Unit tests for core.wire.messages: every message round-trips, and a missing or mistyped field is a
RemoteProtocolError naming the message and the field. No sockets."""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from typing import Any

import pytest

from core.errors import RemoteProtocolError
from core.wire import messages as M
from core.wire.protocol import MESSAGES, FrameDecoder, encode_message

# A value of each declared kind, and one of the wrong kind for it (records: tests/unit/test_task_definition.py).
GOOD: dict[str, Any] = {"an integer": 7, "a byte count": 4096, "a number": 2.5, "a string": "s", "true or false": True,
                        "an object": {}, "a list": [], "any value": {"rows": [1]},
                        "a task definition": M.TaskDefinition(3, "true", inputs=(M.InputRef("f", "in"),)),
                        "a mini-task definition": M.MinitaskDefinition("tar xf a.tar", "a", (M.InputRef("u", "a.tar", kind="url"),))}
BAD: dict[str, Any] = {"an integer": "7", "a byte count": -1, "a number": "2.5", "a string": 5, "true or false": 1,
                       "an object": [], "a list": {}, "any value": None, "a task definition": [], "a mini-task definition": "x"}


def _good(f: M.WireField) -> Any:
    return GOOD[f.describe.removesuffix(" or null")]


def _full(cls: type[M.Message]) -> M.Message:
    """An instance with every field set to a value other than its default."""
    return cls(**{f.name: _good(f) for f in cls.FIELDS})


ALL = sorted(M.REGISTRY.values(), key=lambda c: c.TYPE)


def test_every_wire_name_is_one_class_and_the_codec_knows_it() -> None:
    assert len({c.TYPE for c in ALL}) == len(ALL)
    assert set(MESSAGES) == set(M.REGISTRY)
    for cls in ALL:
        assert MESSAGES[cls.TYPE] == tuple(f.name for f in cls.FIELDS if f.required)
        assert [f.name for f in fields(cls)] == [f.name for f in cls.FIELDS]  # type: ignore[arg-type]
        assert hasattr(cls, "__slots__") and not hasattr(_full(cls), "__dict__")


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.TYPE)
def test_round_trip_through_json_and_the_frame_decoder(cls: type[M.Message]) -> None:
    msg = _full(cls)
    frames = FrameDecoder().feed(encode_message(msg, b"payload"))
    assert len(frames) == 1 and frames[0].payload == b"payload"
    assert frames[0].message == msg
    assert type(frames[0].message) is cls


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.TYPE)
def test_optional_fields_at_their_default_are_not_sent_and_come_back(cls: type[M.Message]) -> None:
    required = {f.name: _good(f) for f in cls.FIELDS if f.required}
    msg = cls(**required)
    header = msg.to_header()
    assert header == {"type": cls.TYPE, **{k: v.to_wire() if isinstance(v, M.WireRecord) else v for k, v in required.items()}}
    back = M.decode(json.loads(json.dumps(header)))
    assert back == msg


@pytest.mark.parametrize("cls", [c for c in ALL if any(f.required for f in c.FIELDS)], ids=lambda c: c.TYPE)
def test_a_missing_required_field_is_named(cls: type[M.Message]) -> None:
    header = _full(cls).to_header()
    for f in cls.FIELDS:
        if not f.required:
            continue
        partial = {k: v for k, v in header.items() if k != f.name}
        with pytest.raises(RemoteProtocolError, match=f"message '{cls.TYPE}' lacks field '{f.name}'"):
            M.decode(partial)


MISTYPED = [(cls, f) for cls in ALL for f in cls.FIELDS if f.accepted is not None]


@pytest.mark.parametrize("cls, f", MISTYPED, ids=[f"{c.TYPE}.{f.name}" for c, f in MISTYPED])
def test_a_mistyped_field_is_named_with_what_it_must_be(cls: type[M.Message], f: M.WireField) -> None:
    header = _full(cls).to_header()
    header[f.name] = BAD[f.describe.removesuffix(" or null")]
    with pytest.raises(RemoteProtocolError) as info:
        M.decode(header)
    text = str(info.value)
    assert f"message '{cls.TYPE}' field '{f.name}'" in text and f.describe in text, text


def test_true_is_not_an_integer_and_an_integer_is_a_number() -> None:
    with pytest.raises(RemoteProtocolError, match="'id' is True, not an integer"):
        M.decode({"type": "kill", "id": True})
    assert M.decode({"type": "idle_disconnecting", "timeout": 5}) == M.IdleDisconnecting(5)


def test_null_is_taken_only_where_declared() -> None:
    assert M.decode({"type": "get", "name": "f", "request": None}) == M.Get("f")
    with pytest.raises(RemoteProtocolError, match="'name' is None, not a string"):
        M.decode({"type": "get", "name": None})


@pytest.mark.parametrize("header, complaint", [
    ({"type": "complete", "id": 1, "result": 0, "exit_code": 0, "cached": {"f": "12"}}, "'cached' holds '12', not a byte count"),
    ({"type": "complete", "id": 1, "result": 0, "exit_code": 0, "unlinked": [3]}, "'unlinked' holds 3, not a string"),
    ({"type": "ready", "resources": {"cores": "nan"}, "cache": {}, "hostname": "h"}, "'resources' holds 'nan', not a number"),
    ({"type": "ready", "resources": {}, "cache": {}, "hostname": "h", "features": [None]}, "'features' holds None, not a string"),
    ({"type": "file_begin", "name": "x", "size": "5"}, "'size' is '5', not a byte count"),
    ({"type": "complete", "id": 1, "result": 0, "exit_code": 0, "stdout_streamed": -5}, "'stdout_streamed' is -5, not a byte count"),
])
def test_container_values_are_checked_one_level_down(header: dict[str, Any], complaint: str) -> None:
    with pytest.raises(RemoteProtocolError, match=complaint):
        M.decode(header)


def test_unknown_type_and_unknown_fields() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown message type 'launch'"):
        M.decode({"type": "launch"})
    with pytest.raises(RemoteProtocolError, match="unknown message type None"):
        M.decode({})
    # A field this side does not know (a newer peer's) is ignored, not an error.
    assert M.decode({"type": "unlink", "name": "f", "urgent": True}) == M.Unlink("f")


def test_decoded_defaults_are_fresh_objects() -> None:
    a = M.decode({"type": "complete", "id": 1, "result": 0, "exit_code": 0})
    b = M.decode({"type": "complete", "id": 2, "result": 0, "exit_code": 0})
    assert isinstance(a, M.Complete) and isinstance(b, M.Complete)
    a.cached["x"] = 1
    assert b.cached == {} and M.Complete(3, 0, 0).cached == {}


def test_a_frame_decodes_its_message_once_and_names_the_bad_field() -> None:
    frames = FrameDecoder().feed(encode_message(M.Kill(4)))
    assert frames[0].message is frames[0].message
    bad = FrameDecoder().feed(json_frame({"type": "kill", "id": "4"}))
    with pytest.raises(RemoteProtocolError, match="'kill' field 'id'"):
        bad[0].message


def json_frame(header: dict[str, Any]) -> bytes:
    from core.wire.protocol import encode_frame

    return encode_frame(header)


def test_the_field_tables_follow_the_annotations() -> None:
    hints = typing.get_type_hints(M.FileBegin, include_extras=True)
    table = {f.name: f for f in M.FileBegin.FIELDS}
    assert table["size"].non_negative and table["size"].accepted == frozenset({int})
    assert table["task"].accepted == frozenset({int, type(None)}) and not table["task"].required
    assert {k for k in hints if not k.isupper()} == set(table)
