"""The wire protocol as a pure codec: bytes in, frames out; frames in, bytes out.

A frame is::

    +----------------+------------------+-------------------+----------------------+
    | header length  | payload length   | header            | payload              |
    | uint32, big-e. | uint64, big-e.   | UTF-8 JSON object | raw bytes (optional) |
    +----------------+------------------+-------------------+----------------------+

The header is a JSON object whose ``"type"`` names the message; every message, with its fields, is
declared in :mod:`core.wire.messages` (``Frame.message`` is the header decoded and checked as one).
Payloads carry file chunks and captured output; a file larger than one chunk travels as a
``file_begin`` / ``file_chunk``... / ``file_end`` sequence, so nothing is ever held whole in memory.

Nothing here touches a socket. A malformed frame raises :class:`RemoteProtocolError`, which the
connection owner turns into "close this peer, log why"; it never propagates further.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LocalProtocolError, RemoteProtocolError
from .messages import Message, decode, required_fields

PROTOCOL_VERSION = 2  # 2: the accepting side proves the password only after the connecting side has
PREFIX = struct.Struct(">IQ")
MAX_HEADER = 1 << 20  # 1 MiB of JSON is far beyond any legitimate message
MAX_PAYLOAD = 64 << 20  # chunks are 1 MiB; stdout up to this size travels inline
CHUNK_SIZE = 1 << 20
# Before the handshake has finished, a peer is a stranger: its frames (hello, auth, error) are a few
# hundred bytes, so anything larger is refused at its length prefix, before its bytes are buffered.
# Without this, 48 strangers each announcing a 64 MiB payload held over 3 GB of the manager's memory.
PREAUTH_MAX_HEADER = 8 << 10
PREAUTH_MAX_PAYLOAD = 0

# Every message type and the header fields it must carry (from core.wire.messages, where each message
# is declared with all its fields). Unknown types are a protocol error.
MESSAGES: dict[str, tuple[str, ...]] = required_fields()


PAGE_BYTES = 256 << 10  # what grows with the work (a worker's cache listing) goes in frames of about this much


def pages_of(entries: dict[str, Any], page_bytes: int = PAGE_BYTES) -> list[dict[str, Any]]:
    """``entries`` split into dicts of about ``page_bytes`` of JSON each (at least one, maybe empty)."""
    pages: list[dict[str, Any]] = [{}]
    size = 0
    for key, value in entries.items():
        cost = len(key) + len(json.dumps(value)) + 6
        if pages[-1] and size + cost > page_bytes:
            pages.append({})
            size = 0
        pages[-1][key] = value
        size += cost
    return pages


@dataclass
class Frame:
    """One decoded frame: a JSON header (type and required fields present) and an optional raw payload.

    ``message`` is the header as its typed message (core.wire.messages), checked on first use: a
    missing or mistyped field raises RemoteProtocolError there, naming the message and the field.
    """

    header: dict[str, Any]
    payload: bytes = b""
    _message: Message | None = field(default=None, repr=False, compare=False)

    @property
    def type(self) -> str:
        return str(self.header["type"])

    @property
    def message(self) -> Message:
        msg = self._message
        if msg is None:
            msg = self._message = decode(self.header)
        return msg

    def __getitem__(self, key: str) -> Any:
        return self.header[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)


def encode_message(msg: Message, payload: bytes = b"") -> bytes:
    """Serialise one message (and payload) as a frame: how our side builds every frame it sends.
    Its header is complete by construction (``to_header`` writes the type and every required
    field), so only what a message object cannot guarantee is checked: JSON and the size bounds."""
    return _frame(msg.TYPE, msg.to_header(), payload)


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Serialise one frame from a raw header (tests and tools that speak the protocol by hand; our own
    peers send messages through :func:`encode_message`). Raises :class:`LocalProtocolError` for
    unsendable input."""
    mtype = header.get("type")
    if not isinstance(mtype, str) or mtype not in MESSAGES:
        raise LocalProtocolError(f"unknown message type {mtype!r}")
    # The peer would reject the frame anyway; failing here blames the right side.
    missing = [k for k in MESSAGES[mtype] if k not in header]
    if missing:
        raise LocalProtocolError(f"message {mtype!r} lacks field(s) {', '.join(missing)}")
    return _frame(mtype, header, payload)


# One encoder and one decoder for every frame: json.dumps/json.loads given any option build a new
# JSONEncoder/JSONDecoder (and its C scanner) per call, which cost more than the frame's own JSON
# (~12 us of a ~20 us header decode). Both are safe to share between threads: neither keeps state
# across calls (the decoder's key memo is only an interning cache, cleared after each document).
# allow_nan=False: the peer refuses NaN/Infinity (see validate_header), so refuse them here first.
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _c_header_encoder() -> Callable[[dict[str, Any]], str]:
    """``_HEADER_ENCODER.encode`` through its C encoder made once: ``JSONEncoder.encode`` makes a new
    one at every call, through two Python calls (4.1 -> 2.8 us for a task frame's header). Same
    text; without the check for circular references (a header is a tree our side builds; a cycle
    ends in RecursionError, refused like the check's ValueError)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without json's C accelerator
        return _HEADER_ENCODER.encode
    encode = make(None, _HEADER_ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    return lambda header: "".join(encode(header, 0))


_encode_header = _c_header_encoder()


def _frame(mtype: str, header: dict[str, Any], payload: bytes) -> bytes:
    try:
        head = _encode_header(header).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"message {mtype!r} is not JSON-serialisable: {exc}") from exc
    if len(head) > MAX_HEADER:
        raise LocalProtocolError(f"message {mtype!r} header is {len(head)} bytes, over {MAX_HEADER}")
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}; send it in chunks")
    return PREFIX.pack(len(head), len(payload)) + head + payload


# Python's json reads NaN, Infinity and 1e999 (a float that overflows) as numbers, and integers of any
# size; no message has a use for them, and one such "resource" or "size" stops every comparison and
# rounding made with it (a worker reporting NaN cores once stopped all scheduling). Refused at decode,
# so every frame from every peer is covered, not only the fields someone remembered to check.
_INT_BOUND = 1 << 64  # file sizes are uint64 in the frame prefix; nothing in a header is larger


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number this protocol accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is not a finite number")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 21:  # before int(): a 4,000-digit integer costs time to convert
        raise ValueError(f"integer of {len(text)} digits is out of range")
    value = int(text)
    if not -_INT_BOUND <= value <= _INT_BOUND:
        raise ValueError(f"{text} is out of range")
    return value


_HEADER_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)


def validate_header(raw: bytes | bytearray) -> dict[str, Any]:
    """Parse and check a header; every failure is the remote side's fault."""
    try:
        header = _HEADER_DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nesting
        raise RemoteProtocolError(f"frame header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise RemoteProtocolError(f"frame header is a {type(header).__name__}, not an object")
    mtype = header.get("type")
    if not isinstance(mtype, str) or mtype not in MESSAGES:
        raise RemoteProtocolError(f"unknown message type {mtype!r}")
    missing = [k for k in MESSAGES[mtype] if k not in header]
    if missing:
        raise RemoteProtocolError(f"message {mtype!r} lacks field(s) {', '.join(missing)}")
    return header


@dataclass
class FrameDecoder:
    """Incremental decoder: ``feed`` any slice of the stream, get back every complete frame.

    Once it has raised, the stream is unusable (framing is lost) and the peer must be dropped.
    ``max_header``/``max_payload`` bound each frame; a connection starts with the small pre-handshake
    bounds and raises them with :meth:`set_limits` once the peer has authenticated.
    """

    max_header: int = MAX_HEADER
    max_payload: int = MAX_PAYLOAD
    _buf: bytearray = field(default_factory=bytearray)
    _need: tuple[int, int] | None = None
    _broken: bool = False

    def set_limits(self, max_header: int, max_payload: int) -> None:
        """Bound the frames decoded from now on (a frame whose prefix was already read keeps its check)."""
        if not 0 < max_header <= MAX_HEADER or not 0 <= max_payload <= MAX_PAYLOAD:
            raise LocalProtocolError(f"frame limits {max_header}/{max_payload} are outside 1..{MAX_HEADER} / 0..{MAX_PAYLOAD}")
        self.max_header, self.max_payload = max_header, max_payload

    def release(self) -> None:
        """Drop whatever is buffered (the peer is gone); the decoder is unusable afterwards."""
        self._buf = bytearray()
        self._need = None
        self._broken = True

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken:
            raise RemoteProtocolError("stream already failed to decode")
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0  # what is decoded is cut from the buffer once, after the loop, not frame by frame
        try:
            while True:
                if self._need is None:
                    if len(buf) - pos < PREFIX.size:
                        break
                    hlen, plen = PREFIX.unpack_from(buf, pos)
                    if hlen == 0 or hlen > self.max_header:
                        raise RemoteProtocolError(f"frame header length {hlen} is out of range (1..{self.max_header})"
                                                  + _preauth_note(self.max_header < MAX_HEADER))
                    if plen > self.max_payload:
                        raise RemoteProtocolError(f"frame payload length {plen} is over {self.max_payload}"
                                                  + _preauth_note(self.max_payload < MAX_PAYLOAD))
                    self._need = (hlen, plen)
                    pos += PREFIX.size
                hlen, plen = self._need
                if len(buf) - pos < hlen + plen:
                    break
                header = validate_header(buf[pos : pos + hlen])
                payload = bytes(buf[pos + hlen : pos + hlen + plen]) if plen else b""
                pos += hlen + plen
                self._need = None
                frames.append(Frame(header, payload))
        except RemoteProtocolError:
            self._broken = True
            raise
        finally:
            if pos:
                del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame (non-zero at EOF = truncated)."""
        return len(self._buf) + (PREFIX.size if self._need else 0)


def _preauth_note(before_handshake: bool) -> str:
    return " (the limit before the handshake has finished)" if before_handshake else ""


# --- authentication -------------------------------------------------------------------------------


def new_nonce() -> str:
    return os.urandom(16).hex()


def auth_proof(password: bytes, role: str, nonce: str) -> str:
    """HMAC-SHA256 proof that the sender knows ``password``, bound to the other side's fresh nonce.

    ``role`` differs per direction so a proof can never be reflected back to its sender.
    """
    return hmac.new(password, f"{role}:{nonce}".encode(), hashlib.sha256).hexdigest()


def check_proof(password: bytes, role: str, nonce: str, proof: object) -> bool:
    return isinstance(proof, str) and hmac.compare_digest(auth_proof(password, role, nonce), proof)
