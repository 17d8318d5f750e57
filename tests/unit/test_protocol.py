"""Unit tests for core.wire.protocol: the frame codec and the password proofs. No sockets."""

from __future__ import annotations

import json
import random

import pytest

from core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from core.wire.protocol import (
    MAX_HEADER,
    MAX_PAYLOAD,
    MESSAGES,
    PREFIX,
    FrameDecoder,
    auth_proof,
    check_proof,
    encode_frame,
    new_nonce,
)

# One valid header per message type, every required field filled in.
SAMPLES: list[dict[str, object]] = [{"type": t, **{k: f"{k}-value" for k in fields}} for t, fields in MESSAGES.items()]


def raw_frame(header: bytes, payload: bytes = b"", hlen: int | None = None, plen: int | None = None) -> bytes:
    """A frame built by hand, so tests can lie about lengths and send non-JSON headers."""
    return PREFIX.pack(len(header) if hlen is None else hlen, len(payload) if plen is None else plen) + header + payload


def assert_broken(dec: FrameDecoder) -> None:
    """Once a decoder has raised, it refuses everything, even a perfectly valid frame."""
    with pytest.raises(RemoteProtocolError):
        dec.feed(encode_frame({"type": "keepalive"}))


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", SAMPLES, ids=[s["type"] for s in SAMPLES])
def test_round_trip_without_payload(header: dict[str, object]) -> None:
    dec = FrameDecoder()
    frames = dec.feed(encode_frame(header))
    assert len(frames) == 1
    assert frames[0].header == header
    assert frames[0].payload == b""
    assert frames[0].type == header["type"]
    assert dec.pending == 0


@pytest.mark.parametrize("payload", [b"\x00", b"hello world", bytes(range(256)) * 300, b"\x00\x00\x00\x00" * 5])
def test_round_trip_with_payload(payload: bytes) -> None:
    header = {"type": "file_chunk", "name": "file-md5-x", "extra": [1, 2.5, None, "é"]}
    frames = FrameDecoder().feed(encode_frame(header, payload))
    assert [(f.header, f.payload) for f in frames] == [(header, payload)]
    assert frames[0]["name"] == "file-md5-x"
    assert frames[0].get("missing", 7) == 7


def test_payload_of_exactly_max_size_is_accepted_by_the_decoder_prefix() -> None:
    # Only the prefix is fed: the decoder must wait for the payload, not reject it.
    dec = FrameDecoder()
    assert dec.feed(raw_frame(b'{"type":"keepalive"}', plen=MAX_PAYLOAD)) == []
    assert dec.pending == PREFIX.size + len(b'{"type":"keepalive"}')


def _stream(rng: random.Random, n: int) -> tuple[bytes, list[tuple[dict[str, object], bytes]]]:
    expected = []
    for i in range(n):
        header = dict(rng.choice(SAMPLES))
        header["seq"] = i
        payload = rng.randbytes(rng.choice([0, 0, 1, 17, 4096]))
        expected.append((header, payload))
    return b"".join(encode_frame(h, p) for h, p in expected), expected


def test_stream_fed_one_byte_at_a_time() -> None:
    data, expected = _stream(random.Random(1), 12)
    dec = FrameDecoder()
    got = []
    for i in range(len(data)):
        got.extend(dec.feed(data[i : i + 1]))
    assert [(f.header, f.payload) for f in got] == expected
    assert dec.pending == 0


def test_stream_fed_in_random_slices() -> None:
    rng = random.Random(2)
    for _ in range(30):
        data, expected = _stream(rng, rng.randint(1, 8))
        dec = FrameDecoder()
        got = []
        pos = 0
        while pos < len(data):
            step = rng.randint(0, 64)
            got.extend(dec.feed(data[pos : pos + step]))
            pos += step
        assert [(f.header, f.payload) for f in got] == expected
        assert dec.pending == 0


def test_empty_feed_is_harmless() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    assert dec.pending == 0


# --- truncated frames ----------------------------------------------------------------------------


def test_every_truncation_leaves_pending_bytes_and_no_frame() -> None:
    frame = encode_frame({"type": "complete", "id": 3, "result": 0, "exit_code": 0}, b"stdout bytes")
    for cut in range(1, len(frame)):
        dec = FrameDecoder()
        assert dec.feed(frame[:cut]) == []
        assert dec.pending == cut, cut
        # and the rest completes it
        assert len(dec.feed(frame[cut:])) == 1
        assert dec.pending == 0


def test_complete_frame_followed_by_a_partial_one() -> None:
    one = encode_frame({"type": "alive"})
    two = encode_frame({"type": "unlink", "name": "x"})
    dec = FrameDecoder()
    frames = dec.feed(one + two[:-3])
    assert [f.type for f in frames] == ["alive"]
    assert dec.pending == len(two) - 3


# --- garbage from the peer ------------------------------------------------------------------------


GARBAGE = [
    (raw_frame(b"", hlen=0), "header length 0"),
    (PREFIX.pack(MAX_HEADER + 1, 0), "header length over MAX_HEADER"),
    (PREFIX.pack(0xFFFFFFFF, 0), "header length uint32 max"),
    (PREFIX.pack(20, MAX_PAYLOAD + 1), "payload over MAX_PAYLOAD"),
    (PREFIX.pack(20, 0xFFFFFFFFFFFFFFFF), "payload uint64 max"),
    (raw_frame(b"not json at all"), "not JSON"),
    (raw_frame(b"\xff\xfe\xfd"), "not UTF-8"),
    (raw_frame(b"[1, 2, 3]"), "a JSON array"),
    (raw_frame(b'"keepalive"'), "a JSON string"),
    (raw_frame(b"null"), "JSON null"),
    (raw_frame(b"{}"), "no type"),
    (raw_frame(b'{"type": 5}'), "type not a string"),
    (raw_frame(b'{"type": ["hello"]}'), "type unhashable"),
    (raw_frame(b'{"type": "launch_missiles"}'), "unknown type"),
    (raw_frame(b'{"type": "hello", "version": 1}'), "missing fields"),
    (raw_frame(b'{"type": "complete", "id": 1, "result": 0}'), "missing exit_code"),
    (raw_frame(b"[" * 100_000), "nesting deep enough to overflow the parser"),
    (raw_frame(b'{"type": "alive"'), "unterminated object"),
]


@pytest.mark.parametrize("data, why", GARBAGE, ids=[why for _, why in GARBAGE])
def test_garbage_raises_remote_error_and_breaks_the_decoder(data: bytes, why: str) -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        dec.feed(data)
    assert_broken(dec)


def test_garbage_after_valid_frames_still_raises() -> None:
    dec = FrameDecoder()
    good = encode_frame({"type": "alive"})
    assert len(dec.feed(good)) == 1
    with pytest.raises(RemoteProtocolError):
        dec.feed(raw_frame(b"{nope}"))
    assert_broken(dec)


def test_garbage_fed_byte_by_byte_raises_at_the_prefix() -> None:
    dec = FrameDecoder()
    bad = PREFIX.pack(0, 0)
    for b in bad[:-1]:
        assert dec.feed(bytes([b])) == []
    with pytest.raises(RemoteProtocolError):
        dec.feed(bad[-1:])
    assert_broken(dec)


def test_random_bytes_never_raise_anything_but_remote_protocol_error() -> None:
    rng = random.Random(1234)
    valid = encode_frame({"type": "alive"})
    for i in range(2000):
        n = rng.choice([1, 5, 12, 13, 40, 300])
        data = rng.randbytes(n)
        if i % 3 == 0:
            # A plausible prefix with small lengths, so the header parser sees random bytes too.
            hlen = rng.randint(0, 40)
            data = PREFIX.pack(hlen, rng.randint(0, 3)) + rng.randbytes(hlen + 3)
        elif i % 3 == 1:
            # Flip one byte of a valid frame.
            pos = rng.randrange(len(valid))
            data = valid[:pos] + bytes([valid[pos] ^ (1 + rng.randrange(255))]) + valid[pos + 1 :]
        dec = FrameDecoder()
        try:
            frames = dec.feed(data)
        except RemoteProtocolError:
            assert_broken(dec)
            continue
        for f in frames:  # whatever got through is a well-formed message
            assert f.type in MESSAGES
            assert all(k in f.header for k in MESSAGES[f.type])


def test_remote_and_local_errors_are_protocol_errors() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# --- what we refuse to send --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        {"type": "launch_missiles"},
        {},
        {"type": None},
        {"type": ["keepalive"]},
        {"type": "kill", "id": object()},
        {"type": "kill", "id": {1, 2}},
        {"type": "kill", "id": b"bytes"},
        {"type": "kill"},  # missing a required field: the peer would reject it, so it is our bug
        {"type": "hello", "version": 1, "role": "worker"},
    ],
)
def test_encode_refuses_with_local_error(header: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(header)


def test_encode_refuses_a_circular_header() -> None:
    header: dict[str, object] = {"type": "status_reply"}
    header["data"] = header
    with pytest.raises(LocalProtocolError):
        encode_frame(header)


def test_encode_refuses_a_header_nested_too_deep() -> None:
    data: object = 1
    for _ in range(100_000):
        data = [data]
    with pytest.raises(LocalProtocolError):
        encode_frame({"type": "status_reply", "data": data})


def test_encode_refuses_oversized_header_and_payload() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame({"type": "status_reply", "data": "x" * MAX_HEADER})
    with pytest.raises(LocalProtocolError):
        encode_frame({"type": "file_chunk", "name": "n"}, b"\0" * (MAX_PAYLOAD + 1))


def test_encode_uses_compact_json() -> None:
    frame = encode_frame({"type": "unlink", "name": "a b"})
    hlen, plen = PREFIX.unpack_from(frame)
    assert plen == 0
    assert json.loads(frame[PREFIX.size : PREFIX.size + hlen]) == {"type": "unlink", "name": "a b"}
    assert b", " not in frame and b": " not in frame


# --- authentication proofs -------------------------------------------------------------------------


def test_nonces_are_fresh() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 32 for n in nonces)


def test_proof_checks_with_the_right_password_role_and_nonce() -> None:
    nonce = new_nonce()
    proof = auth_proof(b"secret", "client", nonce)
    assert check_proof(b"secret", "client", nonce, proof)


def test_proof_fails_with_wrong_password() -> None:
    nonce = new_nonce()
    assert not check_proof(b"other", "client", nonce, auth_proof(b"secret", "client", nonce))
    assert not check_proof(b"", "client", nonce, auth_proof(b"secret", "client", nonce))


def test_proof_fails_with_wrong_role() -> None:
    nonce = new_nonce()
    assert not check_proof(b"secret", "server", nonce, auth_proof(b"secret", "client", nonce))


def test_proof_fails_with_another_nonce() -> None:
    assert not check_proof(b"secret", "client", new_nonce(), auth_proof(b"secret", "client", new_nonce()))


def test_reflected_proof_fails() -> None:
    # An attacker without the password echoes the server's own proof back as its answer.
    client_nonce, server_nonce = new_nonce(), new_nonce()
    server_proof = auth_proof(b"secret", "server", client_nonce)
    assert not check_proof(b"secret", "client", server_nonce, server_proof)
    # Even if the attacker picked the server's nonce as its own, the role keeps the proofs apart.
    assert not check_proof(b"secret", "client", client_nonce, server_proof)


@pytest.mark.parametrize("proof", [None, 5, b"bytes", ["x"], "", "0" * 64])
def test_proof_of_wrong_type_or_value_fails(proof: object) -> None:
    assert not check_proof(b"secret", "client", new_nonce(), proof)
