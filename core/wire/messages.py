"""Every message of the manager <-> worker, worker <-> peer and status links, as a typed dataclass.

A frame's JSON header is one of these messages: ``{"type": <wire name>, <field>: <value>, ...}``
(the codec that frames it is :mod:`core.wire.protocol`). This module is the one place where a
message's wire name, its fields, their types and the defaults of the optional ones are written::

    peer A                                                         peer B
    ──────                                                         ──────
    Complete(id=3, result=0, exit_code=0)
      └─ to_header() ─► {"type": "complete", "id": 3, ...} ─json─► decode(header)
                                                                     └─► Complete(id=3, ...)

- Encoding (``msg.to_header()``, used by ``Connection.send``) is the only way our side builds a
  header; optional fields left at their default are not sent (the receiver restores them).
- Decoding (:func:`decode`) checks that each required field is present and that every field
  present has its declared type, and raises :class:`~core.errors.RemoteProtocolError` naming the
  message and the field. Fields a message does not declare are ignored (a newer peer may send more).
  Nested values are checked one level down (``dict[str, int]``: each value an int); what lies
  deeper (a task's spec, a status reply's rows) is the receiver's to check.

Decoding runs in the manager's I/O thread for every completion, so it costs one dict lookup and
one exact-type test per field, from a table computed once per class (:data:`REGISTRY`): JSON gives
only ``dict, list, str, int, float, bool, None``, so ``type(value) in accepted`` is a full check
(and ``True`` is not taken for an int).
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any, ClassVar, TypeVar

from ..errors import RemoteProtocolError

_NON_NEGATIVE = "non-negative"
ByteCount = Annotated[int, _NON_NEGATIVE]
"""An ``int`` field that must also be >= 0 (a size, a count of bytes)."""

_NONE = type(None)


@dataclass(frozen=True, slots=True)
class WireField:
    """How one field of a message is checked when decoded (computed once per message class)."""

    name: str
    required: bool
    accepted: frozenset[type] | None  # exact types taken (None: any JSON value)
    describe: str  # what the field must be, for the error message ("a byte count")
    non_negative: bool = False  # a ByteCount
    elements: frozenset[type] | None = None  # the exact types of a dict's values or a list's items
    elements_describe: str = ""
    default: Any = None  # the value an optional field takes when absent (compared on encoding)


class Message:
    """Base of every wire message. ``TYPE`` is the wire name; ``FIELDS`` the decoding table."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[WireField, ...]] = ()
    # FIELDS as plain tuples, for decode's loop: (name, required, accepted, non_negative, elements,
    # default, whether the default is a dict or list to copy)
    DECODE_TABLE: ClassVar[tuple[tuple[str, bool, frozenset[type] | None, bool, frozenset[type] | None, Any, bool], ...]] = ()

    def to_header(self) -> dict[str, Any]:
        """The JSON header for this message: its type, every required field, and each optional field
        whose value is not its default."""
        header: dict[str, Any] = {"type": self.TYPE}
        for f in self.FIELDS:
            value = getattr(self, f.name)
            if f.required or value != f.default:
                header[f.name] = value
        return header


REGISTRY: dict[str, type[Message]] = {}
"""Wire name -> message class, for decoding and dispatch."""

M = TypeVar("M", bound=type[Message])

_SCALARS: dict[Any, tuple[frozenset[type], str]] = {
    int: (frozenset({int}), "an integer"),
    float: (frozenset({int, float}), "a number"),
    str: (frozenset({str}), "a string"),
    bool: (frozenset({bool}), "true or false"),
}


def _kind(hint: Any) -> tuple[frozenset[type] | None, str, frozenset[type] | None, str]:
    """(accepted types, description, element types, element description) for a type hint."""
    if hint is Any:
        return None, "any value", None, ""
    if typing.get_origin(hint) is Annotated and _NON_NEGATIVE in hint.__metadata__:
        return frozenset({int}), "a byte count", None, ""
    if hint in _SCALARS:
        accepted, describe = _SCALARS[hint]
        return accepted, describe, None, ""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not _NONE]
        if len(rest) != 1:
            raise TypeError(f"unsupported union {hint!r} in a message field")
        inner, describe, elements, edescribe = _kind(rest[0])
        return (None if inner is None else inner | {_NONE}), f"{describe} or null", elements, edescribe
    if origin is dict or hint is dict:
        value = args[1] if args else Any
        elements, edescribe, _, _ = _kind(value)
        return frozenset({dict}), "an object", elements, edescribe
    if origin is list or hint is list:
        item = args[0] if args else Any
        elements, edescribe, _, _ = _kind(item)
        return frozenset({list}), "a list", elements, edescribe
    raise TypeError(f"unsupported type {hint!r} in a message field")


def message(wire_name: str) -> typing.Callable[[M], M]:
    """Class decorator: register a message dataclass under ``wire_name`` and build its field table."""

    def register(cls: M) -> M:
        if wire_name in REGISTRY:
            raise TypeError(f"two messages named {wire_name!r}")
        hints = typing.get_type_hints(cls, globalns=globals(), include_extras=True)
        table = []
        for f in fields(cls):  # type: ignore[arg-type]
            accepted, describe, elements, edescribe = _kind(hints[f.name])
            required = f.default is MISSING and f.default_factory is MISSING
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
            table.append(WireField(f.name, required, accepted, describe, describe.startswith("a byte count"),
                                   elements, edescribe, default))
        cls.TYPE = wire_name
        cls.FIELDS = tuple(table)
        cls.DECODE_TABLE = tuple((f.name, f.required, f.accepted, f.non_negative, f.elements, f.default,
                                  isinstance(f.default, (dict, list))) for f in table)
        REGISTRY[wire_name] = cls
        return cls

    return register


_ABSENT = object()


def decode(header: dict[str, Any]) -> Message:
    """The message a header carries, checked (module docstring); RemoteProtocolError if it is not one."""
    mtype = header.get("type")
    cls = REGISTRY.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {mtype!r}")
    # Filled field by field (no __init__): a third of the cost, and every field is set below.
    msg = object.__new__(cls)
    for name, required, accepted, non_negative, elements, default, copy_default in cls.DECODE_TABLE:
        value = header.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise RemoteProtocolError(f"message {mtype!r} lacks field {name!r}")
            value = default.copy() if copy_default else default
        elif accepted is not None and type(value) not in accepted:
            raise _mistyped(cls, name, value)
        elif non_negative and value is not None and value < 0:
            raise _mistyped(cls, name, value)
        elif elements is not None and value:
            for item in value.values() if type(value) is dict else value:
                if type(item) not in elements:
                    described = next(f.elements_describe for f in cls.FIELDS if f.name == name)
                    raise RemoteProtocolError(f"message {mtype!r} field {name!r} holds {_show(item)}, not {described}")
        setattr(msg, name, value)
    return msg


def _mistyped(cls: type[Message], name: str, value: Any) -> RemoteProtocolError:
    described = next(f.describe for f in cls.FIELDS if f.name == name)
    return RemoteProtocolError(f"message {cls.TYPE!r} field {name!r} is {_show(value)}, not {described}")


def required_fields() -> dict[str, tuple[str, ...]]:
    """Wire name -> the fields a header of that type must carry (what the codec checks)."""
    return {name: tuple(f.name for f in cls.FIELDS if f.required) for name, cls in REGISTRY.items()}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- handshake (see core.wire.handshake) ------------------------------------------------------------------


@message("hello")
@dataclass(slots=True)
class Hello(Message):
    """Connecting side, first: its protocol version, what it is (worker, peer, status) and a fresh nonce."""

    version: int
    role: str
    nonce: str
    worker_id: str | None = None


@message("welcome")
@dataclass(slots=True)
class Welcome(Message):
    """Accepting side's answer: its version, its nonce, whether a password proof is owed, and whether
    the proofs are bound to the TLS channel."""

    version: int
    nonce: str
    auth: bool
    tls_bound: bool = False


@message("auth")
@dataclass(slots=True)
class Auth(Message):
    """A password proof: HMAC-SHA256 over the other side's nonce (core.wire.protocol.auth_proof)."""

    proof: str


@message("error")
@dataclass(slots=True)
class Error(Message):
    """Why the sender hangs up (either direction, in the handshake or on a peer's get)."""

    reason: str
    tls_required: bool = False


@message("ready")
@dataclass(slots=True)
class Ready(Message):
    """A worker, once authenticated: its resources, its cache listing (first page) and how to reach it."""

    resources: dict[str, float]
    cache: dict[str, ByteCount]
    hostname: str
    worker_id: str | None = None
    features: list[str] = field(default_factory=list)
    cache_more: bool = False  # the rest of the cache follows in CachePage messages
    transfer_port: int | None = None
    end_time: float = 0.0
    workdir: str | None = None
    pid: int | None = None
    batch_job_id: str | None = None


@message("cache_page")
@dataclass(slots=True)
class CachePage(Message):
    """More of a worker's cache listing, after a Ready with ``cache_more`` (the last has ``more`` false)."""

    entries: dict[str, ByteCount]
    more: bool


# --- manager -> worker --------------------------------------------------------------------------------------


@message("task")
@dataclass(slots=True)
class Task(Message):
    """Run a task: its spec as the worker reads it (command or function, inputs, outputs, allocation)."""

    task: dict[str, Any]


@message("kill")
@dataclass(slots=True)
class Kill(Message):
    """Stop task ``id`` (or drop it from the worker's queue)."""

    id: int


@message("fetch_url")
@dataclass(slots=True)
class FetchUrl(Message):
    """Download ``url`` into the cache as ``name``."""

    name: str
    url: str
    level: int


@message("fetch_peer")
@dataclass(slots=True)
class FetchPeer(Message):
    """Fetch cache entry ``name`` from the transfer port at ``source`` (host:port)."""

    name: str
    source: str
    level: int


@message("minitask")
@dataclass(slots=True)
class Minitask(Message):
    """Make cache entry ``name`` by running the mini-task ``task`` in a sandbox of its own."""

    name: str
    task: dict[str, Any]
    level: int


@message("get")
@dataclass(slots=True)
class Get(Message):
    """Send cache entry ``name`` back (to the manager, with its ``request`` id; or to a peer)."""

    name: str
    request: int | None = None


@message("unlink")
@dataclass(slots=True)
class Unlink(Message):
    """Remove cache entry ``name``."""

    name: str


@message("keepalive")
@dataclass(slots=True)
class Keepalive(Message):
    """Are you there? (answered with Alive)."""


@message("exit")
@dataclass(slots=True)
class Exit(Message):
    """The manager releases this worker: it exits."""


# --- worker -> manager --------------------------------------------------------------------------------------


@message("alive")
@dataclass(slots=True)
class Alive(Message):
    """Answer to a Keepalive: what the worker has committed, and how many tasks it runs."""

    committed: dict[str, float] = field(default_factory=dict)
    tasks: int = 0


@message("cache_update")
@dataclass(slots=True)
class CacheUpdate(Message):
    """Cache entry ``name`` (``size`` bytes) is now on the worker."""

    name: str
    size: ByteCount


@message("cache_invalid")
@dataclass(slots=True)
class CacheInvalid(Message):
    """Cache entry ``name`` could not be obtained or sent (``request``: the Get it answers)."""

    name: str
    reason: str
    request: int | None = None


@message("complete")
@dataclass(slots=True)
class Complete(Message):
    """Task ``id`` ended. Its stdout is the frame's payload unless ``stdout_streamed`` says how many
    bytes of it were streamed before this message; its returned outputs were streamed before too."""

    id: int
    result: int
    exit_code: int
    reason: str = ""
    retry: bool = False  # not the task's fault (e.g. its library died before the call started): run it again
    missing_input: bool = False  # a URL input could not be fetched: forsaken without counting a try
    start: float = 0.0
    end: float = 0.0
    outputs: dict[str, ByteCount] = field(default_factory=dict)  # output cache name -> bytes
    cached: dict[str, ByteCount] = field(default_factory=dict)  # the outputs that stay in the worker's cache
    unlinked: list[str] = field(default_factory=list)  # task-level inputs the worker dropped
    measured: dict[str, float] = field(default_factory=dict)  # peak resources, when monitored
    limits: dict[str, float] = field(default_factory=dict)  # what the watchdog found exceeded
    library: str | None = None  # a library instance's name, when one ended
    stdout_streamed: ByteCount | None = None


@message("watch")
@dataclass(slots=True)
class Watch(Message):
    """New bytes (the payload) of a watched output ``name`` of task ``id``, written at ``offset``."""

    id: int
    name: str
    offset: int


@message("idle_disconnecting")
@dataclass(slots=True)
class IdleDisconnecting(Message):
    """The worker leaves after ``timeout`` seconds idle (a planned end, not a loss)."""

    timeout: float


# --- either direction: file streams ----------------------------------------------------------------------------


@message("file_begin")
@dataclass(slots=True)
class FileBegin(Message):
    """A stream of ``size`` bytes named ``name`` begins (a directory travels as a tar: ``dir``).

    What it is for: ``level`` (a file for the cache, from the manager), ``task`` (an output of that
    task, or with ``stdout`` its stdout), ``request`` (the answer to that Get)."""

    name: str
    size: ByteCount
    dir: bool = False
    mode: int | None = None
    level: int | None = None
    task: int | None = None
    request: int | None = None
    stdout: bool = False


@message("file_chunk")
@dataclass(slots=True)
class FileChunk(Message):
    """The next piece (the payload) of stream ``name``."""

    name: str


@message("file_end")
@dataclass(slots=True)
class FileEnd(Message):
    """Stream ``name`` is complete."""

    name: str


# --- status queries (vine_status, the factory) ----------------------------------------------------------------


@message("status")
@dataclass(slots=True)
class Status(Message):
    """Ask a manager for ``what``: manager, workers, tasks or categories."""

    what: str


@message("status_reply")
@dataclass(slots=True)
class StatusReply(Message):
    """A status answer, or one page of it (``more``: another page follows)."""

    data: Any
    more: bool = False
