"""The framings between a worker and the processes core.wire.remote runs (fork-server channel, child
result pipe, library socket): round trips, and what is cut short or garbage is a FramingError."""

from __future__ import annotations

import base64
import pickle
import random
import struct

import pytest

from core.wire.remote import (
    LIBRARY_MESSAGE_MAX,
    FramingError,
    MessageReader,
    call_fields,
    decode_fork_reply,
    decode_fork_request,
    encode_fork_line,
    encode_library_call,
    encode_library_done,
    encode_library_message,
    parse_child_pipe,
    pipe_exit,
    pipe_result,
    read_child_pipe,
)

# --- the library socket ----------------------------------------------------------------------------

LIBRARY_MESSAGES = [
    {"op": "call", "id": 7, "function": "f", "args": b"\x80\x05...", "args_file": None, "sandbox": "/s", "result": "/s/r",
     "mode": "direct", "paths": {".vine_ref_1": b"bytes", "a": "/c/a"}, "output": None},
    {"op": "kill", "id": 7},
    {"op": "ready", "functions": ["f", "g"], "pid": 1234, "mode": "fork"},
    {"op": "failed", "error": "Traceback ...\nImportError: no module x\n"},
    {"op": "done", "id": 7, "status": 0, "result": b"\x00" * 1000},
]


COMPACT_CALLS = [
    (9, "fork", {"function": "noop", "output_inline": True, "args": b"\x80\x05args"}),
    (10, None, {"function": "f\u00e9", "args": None, "args_file": "/s/a", "sandbox": "/s", "result": "/s/r", "output": "/c/o"}),
    (11, "direct", {"function": "g", "paths": {".vine_ref_2": b"in memory", "b": "/c/b"}}),
]


def _compact_stream() -> tuple[bytes, list[dict[str, object]]]:
    frames, expected = [], []
    for cid, mode, fields in COMPACT_CALLS:
        frames.append(encode_library_call(cid, mode, fields))
        expected.append({**{k: v for k, v in fields.items() if v is not None}, "op": "call", "id": cid, "mode": mode})
    for cid, status, result in ((9, 0, b"envelope"), (10, -9, None), (11, 1, b"")):
        frames.append(encode_library_done(cid, status, result))
        expected.append({"op": "done", "id": cid, "status": status, "result": result})
    frames.append(encode_library_message({"op": "kill", "id": 12}))  # a pickled one between them
    expected.append({"op": "kill", "id": 12})
    return b"".join(frames), expected


def test_compact_calls_and_dones_read_as_their_dicts_in_any_slices() -> None:
    """A call's and a done's compact forms (what a forking library reads and writes without
    pickling) give the same dicts as their pickled forms, however the stream is cut; a call's
    fields are read where it runs (call_fields), fields left at None not sent."""
    stream, expected = _compact_stream()
    rng = random.Random(11)
    for _ in range(50):
        reader, got, pos = MessageReader(), [], 0
        while pos < len(stream):
            step = rng.randint(1, 40)
            chunk = stream[pos:pos + step]
            got += reader.feed(memoryview(chunk) if step % 2 else chunk)
            pos += step
        assert reader.pending == 0
        assert [call_fields(m) if m["op"] == "call" else m for m in got] == expected


@pytest.mark.parametrize("body", [b"C", b"C\x00\x00", b"D\x00\x00\x00", b"C" + struct.pack(">qB", 1, 7)])
def test_a_malformed_compact_message_is_a_framing_error(body: bytes) -> None:
    with pytest.raises(FramingError):
        MessageReader().feed(struct.pack(">I", len(body)) + body)


def test_a_short_compact_done_is_refused_not_read_on_into_the_next_message() -> None:
    short = b"D" + struct.pack(">q", 5)  # an id, no status
    with pytest.raises(FramingError, match="cut short"):
        MessageReader().feed(struct.pack(">I", len(short)) + short + encode_library_done(6, 0, b"next message"))


def test_a_call_in_an_unknown_mode_is_refused_where_it_is_encoded() -> None:
    with pytest.raises(ValueError, match="unknown mode 'spawn'"):
        encode_library_call(1, "spawn", {"function": "f"})


def test_a_big_message_in_small_slices_is_copied_once_it_is_whole() -> None:
    frame = encode_library_done(9, 0, b"r" * (1 << 20))
    reader, got = MessageReader(), []
    for pos in range(0, len(frame), 4096):
        got += reader.feed(frame[pos:pos + 4096])
        assert got or reader.pending == pos + len(frame[pos:pos + 4096])
    assert got == [{"op": "done", "id": 9, "status": 0, "result": b"r" * (1 << 20)}] and reader.pending == 0


def test_a_compact_call_whose_body_is_cut_short_is_a_framing_error_where_it_runs() -> None:
    frame = encode_library_call(3, "fork", {"function": "noop", "args": b"0123456789"})
    msg = MessageReader().feed(frame)[0]
    with pytest.raises(FramingError, match="call 3"):
        call_fields({**msg, "body": msg["body"][:-4]})


def test_library_messages_round_trip_fed_a_byte_at_a_time() -> None:
    stream = b"".join(encode_library_message(m) for m in LIBRARY_MESSAGES)
    reader, got = MessageReader(), []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert got == LIBRARY_MESSAGES and reader.pending == 0


def test_library_messages_in_random_slices() -> None:
    rng = random.Random(5)
    stream = b"".join(encode_library_message(m) for m in LIBRARY_MESSAGES * 3)
    reader, got, pos = MessageReader(), [], 0
    while pos < len(stream):
        step = rng.randint(1, 300)
        got += reader.feed(stream[pos:pos + step])
        pos += step
    assert got == LIBRARY_MESSAGES * 3


def test_a_library_message_cut_short_is_pending_at_the_end() -> None:
    data = encode_library_message(LIBRARY_MESSAGES[0])
    for cut in (1, 3, 4, 10, len(data) - 1):
        reader = MessageReader()
        assert reader.feed(data[:cut]) == []
        assert reader.pending == cut


@pytest.mark.parametrize("data, complaint", [
    (struct.pack(">I", 5) + b"\xff\xfe\xfd\x00\x01", "does not unpickle"),
    (struct.pack(">I", 3) + b"abc", "does not unpickle"),
    (struct.pack(">I", LIBRARY_MESSAGE_MAX + 1), "announced"),
    (struct.pack(">I", 0xFFFFFFFF) + b"x", "announced"),
    (encode_library_message([1, 2]), "not a dict with an 'op'"),  # type: ignore[arg-type]
    (encode_library_message({"id": 3}), "not a dict with an 'op'"),
    (encode_library_message({"op": 5}), "not a dict with an 'op'"),
    (struct.pack(">I", len(pickle.dumps(("op", "x")))) + pickle.dumps(("op", "x")), "not a dict with an 'op'"),
])
def test_garbage_on_the_library_socket_is_a_framing_error(data: bytes, complaint: str) -> None:
    with pytest.raises(FramingError, match=complaint):
        MessageReader().feed(data)


def test_framing_errors_are_value_errors_so_the_worker_drops_that_library_only() -> None:
    assert issubclass(FramingError, ValueError)


# --- the child result pipe -------------------------------------------------------------------------------


@pytest.mark.parametrize("result", [None, b"", b"x", bytes(range(256)) * 100])
@pytest.mark.parametrize("status", [0, 1, 255, -9])
def test_child_pipe_round_trip(result: bytes | None, status: int) -> None:
    data = (pipe_result(result) if result is not None else b"") + pipe_exit(status)
    assert parse_child_pipe(data) == (result, status & 0xFF)
    assert read_child_pipe(data) == (result, status & 0xFF)


@pytest.mark.parametrize("data, complaint", [
    (b"", "no exit record"),
    (pipe_result(b"abc"), "no exit record"),
    (pipe_result(b"abcdef")[:-2], "result record cut short: 4 of its 6 bytes"),
    (b"R\x00\x00", "cut short: 3 bytes of its 9-byte head"),
    (pipe_exit(0)[:3], "cut short"),
    (pipe_exit(0) + b"X", "bytes follow it"),
    (b"Z" + pipe_exit(0), "unknown record tag b'Z'"),
    (pipe_result(b"ok") + b"?" * 5, "unknown record tag b'?' at byte 11"),
])
def test_a_child_pipe_that_is_not_whole_is_named(data: bytes, complaint: str) -> None:
    with pytest.raises(FramingError, match=complaint.replace("(", r"\(").replace("?", r"\?")):
        parse_child_pipe(data)


def test_the_lenient_reader_keeps_a_whole_result_and_waits_for_the_real_status() -> None:
    assert read_child_pipe(pipe_result(b"value")) == (b"value", None)  # died after the result
    assert read_child_pipe(pipe_result(b"value")[:-1]) == (None, None)  # died writing it
    assert read_child_pipe(b"garbage") == (None, None)


# --- the fork-server channel ------------------------------------------------------------------------------

REQUEST = {"id": 3, "sandbox": "/w/sandbox/t.3", "env": {"PATH": "/bin", "MULTI": "a\nb"}, "unset": ["HOME"], "stdout": "/w/sandbox/t.3/.vine-stdout",
           "python": {"function": "f.pkl", "args": "a.pkl", "args_inline": base64.b64encode(b"args").decode()},
           "function_key": "file-md5-x", "result_inline": True}


def test_fork_lines_round_trip_one_per_line() -> None:
    started = {"id": 3, "pid": 4242}
    ended = {"id": 3, "status": 0, "result": base64.b64encode(b"\x80\x05K\x07.").decode()}
    lines = (encode_fork_line(REQUEST) + encode_fork_line(started) + encode_fork_line(ended)).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4  # a newline inside a value is escaped, never raw
    assert decode_fork_request(lines[0]) == REQUEST
    assert decode_fork_reply(lines[1]) == (3, 4242, None, None)
    assert decode_fork_reply(lines[2]) == (3, None, 0, b"\x80\x05K\x07.")
    assert decode_fork_reply(encode_fork_line({"id": 4, "status": -9})) == (4, None, -9, None)


@pytest.mark.parametrize("line, complaint", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'{"id": 3, "sta', "not JSON"),  # cut short
    (b"[3]", "is a list, not an object"),
    (b'{"pid": 5}', "id None, not an integer"),
    (b'{"id": "3", "pid": 5}', "id '3', not an integer"),
    (b'{"id": 3, "pid": "5"}', "pid '5', not an integer"),
    (b'{"id": 3}', "neither a pid nor an integer status"),
    (b'{"id": 3, "status": 0, "result": "***"}', "not base64"),
])
def test_bad_fork_replies_are_named(line: bytes, complaint: str) -> None:
    with pytest.raises(FramingError, match=complaint):
        decode_fork_reply(line)


@pytest.mark.parametrize("change, complaint", [
    ({"sandbox": None}, "sandbox None, not a str"),
    ({"env": ["PATH"]}, "env \\['PATH'\\], not a dict"),
    ({"unset": "HOME"}, "unset 'HOME', not a list"),
    ({"python": "f"}, "python 'f', not a dict"),
    ({"id": None}, "id None, not an integer"),
])
def test_bad_fork_requests_are_named(change: dict[str, object], complaint: str) -> None:
    with pytest.raises(FramingError, match=complaint):
        decode_fork_request(encode_fork_line({**REQUEST, **change}))


def test_the_fork_servers_formatted_replies_are_encode_fork_lines_byte_for_byte():
    from core.wire.remote import fork_ended_line, fork_started_line

    result = bytes(range(256)) * 5
    assert fork_started_line(7, 4242) == encode_fork_line({"id": 7, "pid": 4242})
    assert fork_ended_line(7, -9, None) == encode_fork_line({"id": 7, "status": -9})
    assert fork_ended_line(7, 0, result) == encode_fork_line(
        {"id": 7, "status": 0, "result": base64.b64encode(result).decode()})
    assert decode_fork_reply(fork_ended_line(7, 0, result)) == (7, None, 0, result)
    assert decode_fork_reply(fork_started_line(7, 4242)) == (7, 4242, None, None)
