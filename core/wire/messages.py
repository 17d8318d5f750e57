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
  Containers are checked one level down (``dict[str, int]``: each value an int). A field may also
  hold a *record* (a dataclass declared with :func:`record`: a task's definition, its inputs and
  outputs, its Python call) or a tuple of them: each is checked the same way, all the way down, and
  the error names the path (``message 'task' lacks field 'task.inputs[2].name'``). Records are
  frozen: what a worker is told to run is read, never changed, by the worker.

Decoding runs in the manager's I/O thread for every completion, so it costs one dict lookup and
one exact-type test per field, from a table computed once per class (:data:`REGISTRY`): JSON gives
only ``dict, list, str, int, float, bool, None``, so ``type(value) in accepted`` is a full check
(and ``True`` is not taken for an int).
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any, Callable, ClassVar, TypeVar

from ..errors import RemoteProtocolError

_NON_NEGATIVE = "non-negative"
ByteCount = Annotated[int, _NON_NEGATIVE]
"""An ``int`` field that must also be >= 0 (a size, a count of bytes)."""

_NONE = type(None)

Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class WireField:
    """How one field of a message or record is checked when decoded (computed once per class)."""

    name: str
    required: bool
    accepted: frozenset[type] | None  # exact types taken (None: any JSON value)
    describe: str  # what the field must be, for the error message ("a byte count")
    non_negative: bool = False  # a ByteCount
    elements: frozenset[type] | None = None  # the exact types of a dict's values or a list's items
    elements_describe: str = ""
    default: Any = None  # the value an optional field takes when absent (compared on encoding)
    convert: Convert | None = None  # the checked JSON value -> the field's value (a nested record, a tuple)
    encode: Convert | None = None  # the field's value -> its JSON value (a nested record's object)




class WireRecord:
    """Base of every checked wire structure: a message, or a record nested inside one (a task's
    definition and its parts). ``FIELDS`` is its decoding table, built once by :func:`message` or
    :func:`record` from the dataclass's annotations."""

    __slots__ = ()
    KIND: ClassVar[str] = ""  # what a value of this class is, for error messages ("a task definition")
    FIELDS: ClassVar[tuple[WireField, ...]] = ()
    FILL: ClassVar[Callable[[dict[str, Any]], Any]]  # JSON object -> instance, checked (written by _compile_fill)

    def to_wire(self) -> dict[str, Any]:
        """This record as a JSON object: every required field, and each optional field whose value
        is not its default (nested records as objects of their own)."""
        return self._put_fields({})

    def _put_fields(self, out: dict[str, Any]) -> dict[str, Any]:
        return out  # each class gets its own, written out from its fields (_compile_put)


class Message(WireRecord):
    """Base of every wire message. ``TYPE`` is the wire name; ``FIELDS`` the decoding table."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""

    def to_header(self) -> dict[str, Any]:
        """The JSON header for this message: its type, every required field, and each optional field
        whose value is not its default."""
        return self._put_fields({"type": self.TYPE})


REGISTRY: dict[str, type[Message]] = {}
"""Wire name -> message class, for decoding and dispatch."""

M = TypeVar("M", bound=type[Message])
R = TypeVar("R", bound=type[WireRecord])

_SCALARS: dict[Any, tuple[frozenset[type], str]] = {
    int: (frozenset({int}), "an integer"),
    float: (frozenset({int, float}), "a number"),
    str: (frozenset({str}), "a string"),
    bool: (frozenset({bool}), "true or false"),
}


@dataclass(frozen=True, slots=True)
class _Kind:
    """What a type hint means on the wire (see WireField)."""

    accepted: frozenset[type] | None
    describe: str
    elements: frozenset[type] | None = None
    elements_describe: str = ""
    convert: Convert | None = None
    encode: Convert | None = None


def _kind(hint: Any) -> _Kind:  # noqa: C901 - one branch per kind of annotation
    """How a field annotated ``hint`` is checked, converted and encoded."""
    if hint is Any:
        return _Kind(None, "any value")
    if typing.get_origin(hint) is Annotated and _NON_NEGATIVE in hint.__metadata__:
        return _Kind(frozenset({int}), "a byte count")
    if hint in _SCALARS:
        return _Kind(*_SCALARS[hint])
    if isinstance(hint, type) and issubclass(hint, WireRecord):
        if not hint.KIND:
            raise TypeError(f"{hint.__name__} is used in a field before it is declared a @record")
        return _Kind(frozenset({dict}), hint.KIND, convert=hint.FILL, encode=_record_to_wire)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not _NONE]
        if len(rest) != 1:
            raise TypeError(f"unsupported union {hint!r} in a message field")
        inner = _kind(rest[0])
        accepted = None if inner.accepted is None else inner.accepted | {_NONE}
        return _Kind(accepted, f"{inner.describe} or null", inner.elements, inner.elements_describe, inner.convert, inner.encode)
    if origin in (dict, list) or hint in (dict, list):
        item = _kind((args[1] if origin is dict else args[0]) if args else Any)
        if item.convert is not None or item.elements is not None:
            raise TypeError(f"unsupported {hint!r} in a message field: records or containers nest in tuples only")
        return _Kind(frozenset({dict if dict in (origin, hint) else list}), "an object" if dict in (origin, hint) else "a list",
                     item.accepted, item.describe)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _kind(args[0])
        if item.elements is not None:
            raise TypeError(f"unsupported {hint!r} in a message field: a tuple of containers")
        if item.convert is None:  # a tuple of scalars: a JSON list, kept as a tuple
            return _Kind(frozenset({list}), "a list", item.accepted, item.describe, convert=tuple)
        return _Kind(frozenset({list}), "a list", item.accepted, item.describe, convert=_records(args[0]), encode=_records_to_wire)
    raise TypeError(f"unsupported type {hint!r} in a message field")


def _build_tables(cls: type[WireRecord]) -> None:
    hints = typing.get_type_hints(cls, globalns=globals(), include_extras=True)
    table = []
    for f in fields(cls):  # type: ignore[arg-type]
        kind = _kind(hints[f.name])
        required = f.default is MISSING and f.default_factory is MISSING
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        table.append(WireField(f.name, required, kind.accepted, kind.describe, kind.describe.startswith("a byte count"),
                               kind.elements, kind.elements_describe, default, kind.convert, kind.encode))
    cls.FIELDS = tuple(table)
    cls.FILL = _compile_fill(cls)
    cls._put_fields = _compile_put(cls)  # type: ignore[method-assign,assignment]


def _compile_put(cls: type[WireRecord]) -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    """The encoder of ``cls`` (``_put_fields``), written out field by field like its decoder:
    every required field, each optional one whose value is not its default, records as objects."""
    scope: dict[str, Any] = {}
    lines = ["def put(self, out):"]
    for i, f in enumerate(cls.FIELDS):
        scope[f"default{i}"] = f.default
        value = f"self.{f.name}"
        if f.encode is not None:
            scope[f"encode{i}"] = f.encode
        indent = "    "
        if not f.required:
            lines += [f"    v = {value}", "    if v is not None:" if f.default is None else f"    if v != default{i}:"]
            value, indent = "v", "        "
        if f.encode is not None:
            value = f"encode{i}({value})" if not f.required or f.accepted is None or type(None) not in f.accepted else \
                f"None if {value} is None else encode{i}({value})"
        lines.append(f"{indent}out[{f.name!r}] = {value}")
    lines.append("    return out")
    exec("\n".join(lines), scope)  # noqa: S102 - source written above from the class's own fields
    put: Callable[[Any, dict[str, Any]], dict[str, Any]] = scope["put"]
    return put


def _compile_fill(cls: type[WireRecord]) -> Callable[[dict[str, Any]], Any]:
    """The decoder of ``cls``: a function written out field by field from its table, as dataclasses
    writes ``__init__`` (a loop over the table cost four times as much per task definition).

    For each field: absent -> its default (or _Misfit if required); present -> its exact type
    checked, then its sign (a byte count), its items (a container) and its conversion (a nested
    record, a tuple). It is set through the slot's own setter, which fills a frozen record too
    (instances are made without ``__init__``).
    """
    scope: dict[str, Any] = {"cls": cls, "new": object.__new__, "ABSENT": _ABSENT, "Misfit": _Misfit, "is_not": _is_not,
                             "holds": _holds}
    lines = ["def fill(data):", "    obj = new(cls)", "    get = data.get"]
    for i, f in enumerate(cls.FIELDS):
        scope[f"set{i}"] = cls.__dict__[f.name].__set__
        scope[f"default{i}"] = f.default
        name = repr(f.name)
        lines += [f"    v = get({name}, ABSENT)", "    if v is ABSENT:"]
        if f.required:
            lines.append(f"        raise Misfit({name}, None)")
        else:
            lines.append(f"        v = default{i}.copy()" if isinstance(f.default, (dict, list)) else f"        v = default{i}")
        lines.append("    else:")
        body = []
        if f.accepted is not None:
            scope[f"accepted{i}"] = f.accepted
            only = next(iter(f.accepted)) if len(f.accepted) == 1 else None
            test = f"type(v) is not {only.__name__}" if only in (int, str, bool, dict, list) else f"type(v) not in accepted{i}"
            body += [f"        if {test}:", f"            raise Misfit({name}, is_not(cls, {name}, v))"]
        if f.non_negative:
            body += ["        if v is not None and v < 0:", f"            raise Misfit({name}, is_not(cls, {name}, v))"]
        if f.elements is not None:
            scope[f"elements{i}"] = f.elements
            items = "v.values()" if f.accepted is not None and dict in f.accepted else "v"
            body += ["        if v:", f"            for item in {items}:", f"                if type(item) not in elements{i}:",
                     f"                    raise Misfit({name}, holds(cls, {name}, item))"]
        if f.convert is not None:
            scope[f"convert{i}"] = f.convert
            body += ["        if v is not None:", "            try:", f"                v = convert{i}(v)",
                     "            except Misfit as exc:", f"                raise exc.under({name}) from None"]
        lines += body or ["        pass"]
        lines.append(f"    set{i}(obj, v)")
    lines.append("    return obj")
    exec("\n".join(lines), scope)  # noqa: S102 - source written above from the class's own annotations
    fill: Callable[[dict[str, Any]], Any] = scope["fill"]
    return fill


def message(wire_name: str) -> typing.Callable[[M], M]:
    """Class decorator: register a message dataclass under ``wire_name`` and build its field table."""

    def register(cls: M) -> M:
        if wire_name in REGISTRY:
            raise TypeError(f"two messages named {wire_name!r}")
        cls.TYPE = wire_name
        _build_tables(cls)
        REGISTRY[wire_name] = cls
        return cls

    return register


def record(kind: str) -> typing.Callable[[R], R]:
    """Class decorator: a dataclass nested inside messages, checked field by field like a message;
    ``kind`` says what a value of it is ("an input reference"), for error messages."""

    def declare(cls: R) -> R:
        cls.KIND = kind
        _build_tables(cls)
        if getattr(cls, "__dataclass_params__").frozen:
            cls.__init__ = _compile_frozen_init(cls)  # type: ignore[method-assign]
        return cls

    return declare


_FACTORY = object()


def _compile_frozen_init(cls: type[WireRecord]) -> Callable[..., None]:
    """An ``__init__`` for frozen record ``cls`` with the dataclass's own signature that sets each
    field through its slot's setter: the manager makes a definition per task sent, and the
    dataclass's frozen ``__init__`` (``object.__setattr__`` per field) cost twice as much."""
    scope: dict[str, Any] = {"FACTORY": _FACTORY}
    params, body = ["self"], []
    for i, f in enumerate(fields(cls)):  # type: ignore[arg-type]
        scope[f"set{i}"] = cls.__dict__[f.name].__set__
        if f.default is not MISSING:
            scope[f"default{i}"] = f.default
            params.append(f"{f.name}=default{i}")
            body.append(f"    set{i}(self, {f.name})")
        elif f.default_factory is not MISSING:
            scope[f"factory{i}"] = f.default_factory
            params.append(f"{f.name}=FACTORY")
            body.append(f"    set{i}(self, factory{i}() if {f.name} is FACTORY else {f.name})")
        else:
            params.append(f.name)
            body.append(f"    set{i}(self, {f.name})")
    exec(f"def __init__({', '.join(params)}):\n" + "\n".join(body or ["    pass"]), scope)  # noqa: S102 - written from the fields
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


_ABSENT = object()


class _Misfit(RemoteProtocolError):
    """A field of a record is missing (``problem`` None) or wrong; ``path`` names it from the record
    it was raised in, and grows as it passes out through the records around it, up to decode."""

    def __init__(self, path: str, problem: str | None) -> None:
        super().__init__(path)
        self.path = path
        self.problem = problem

    def under(self, outer: str) -> _Misfit:
        self.path = outer + (self.path if self.path.startswith("[") else "." + self.path)
        return self

    def describe(self, mtype: str) -> str:
        if self.problem is None:
            return f"message {mtype!r} lacks field {self.path!r}"
        return f"message {mtype!r} field {self.path!r} {self.problem}"


def decode(header: dict[str, Any]) -> Message:
    """The message a header carries, checked (module docstring); RemoteProtocolError if it is not one."""
    mtype = header.get("type")
    cls = REGISTRY.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {mtype!r}")
    try:
        msg: Message = cls.FILL(header)
    except _Misfit as exc:
        raise RemoteProtocolError(exc.describe(cls.TYPE)) from None
    return msg


def _records(cls: type[WireRecord]) -> Convert:
    """The converter of a tuple of ``cls`` records: each item filled, a wrong one named by its index."""

    def convert(items: list[dict[str, Any]]) -> tuple[Any, ...]:
        fill = cls.FILL
        try:
            return tuple([fill(item) for item in items])
        except _Misfit:
            for i, item in enumerate(items):  # the error path only: which item was it?
                try:
                    fill(item)
                except _Misfit as exc:
                    raise exc.under(f"[{i}]") from None
            raise

    return convert


def _record_to_wire(value: WireRecord) -> dict[str, Any]:
    return value.to_wire()


def _records_to_wire(values: tuple[WireRecord, ...]) -> list[dict[str, Any]]:
    return [v.to_wire() for v in values]


def _is_not(cls: type[WireRecord], name: str, value: Any) -> str:
    described = next(f.describe for f in cls.FIELDS if f.name == name)
    return f"is {_show(value)}, not {described}"


def _holds(cls: type[WireRecord], name: str, item: Any) -> str:
    described = next(f.elements_describe for f in cls.FIELDS if f.name == name)
    return f"holds {_show(item)}, not {described}"


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


# --- a task's definition (inside Task and Minitask messages) -----------------------------------------------
# Built by the manager in one place (core/manager/definitions.py), read by the worker, never changed
# there: what changes while a task runs (started from the queue, its command rewritten when the fork
# server is gone, a library's extra environment) is the worker's RunningTask's, not the definition's.


@record("an input reference")
@dataclass(frozen=True, slots=True)
class InputRef(WireRecord):
    """A cache entry a task reads, placed in its sandbox as ``remote``."""

    name: str  # the cache name
    remote: str  # its path in the sandbox
    level: int = 0  # its cache level: a task-level (0) input goes once no task here needs it
    kind: str = "file"  # file, url, buffer, temp, ... (a temp or url that did not arrive is not the task's fault)
    mode: int | None = None
    symlink: bool = False  # linked into the sandbox, never copied (VINE_MOUNT_SYMLINK)
    in_place: bool = False  # a PythonTask's function: the fork server reads it from the cache, it is not linked


@record("an output reference")
@dataclass(frozen=True, slots=True)
class OutputRef(WireRecord):
    """A file a task leaves in its sandbox as ``remote``, kept in the cache as ``name``."""

    name: str
    remote: str
    level: int
    kind: str  # file, buffer, temp, ...
    send_back: bool = False  # streamed to the manager when the task ends (file and buffer outputs)
    watch: bool = False  # its growth is streamed while the task runs (Watch messages)
    failure_only: bool = False  # kept only when the task failed
    success_only: bool = False  # kept only when it succeeded


@record("a Python run")
@dataclass(frozen=True, slots=True)
class PythonRun(WireRecord):
    """A PythonTask: which sandbox files hold the function, its arguments and its result."""

    function: str
    args: str
    output: str | None = None
    serialize: bool = True  # the result is pickled (False: written as it is)
    warm_imports: tuple[str, ...] = ()  # modules the fork server imports before forking
    result_inline: bool = False  # the result may come back through the fork server's channel
    args_inline: str | None = None  # the pickled arguments (base64), instead of the ``args`` file
    # A result (sent back, from the fork server's channel) of at most this many bytes travels inside
    # the task's ``complete`` (Complete.result_name), not as a stream before it; 0: always a stream.
    result_in_complete: ByteCount = 0


@record("a function call")
@dataclass(frozen=True, slots=True)
class CallRef(WireRecord):
    """A FunctionCall: ``function`` of library ``library``, with its arguments inline or in a file."""

    library: str
    function: str
    args: str | None = None  # the pickled arguments (base64)
    args_file: str | None = None  # or the sandbox file that holds them
    mode: str | None = None  # fork or direct (None: the library's own)
    output: str | None = None  # the sandbox file its result goes to, when it is a temp for other tasks


@record("a library start")
@dataclass(frozen=True, slots=True)
class LibraryStart(WireRecord):
    """The task is an instance of library ``name``, serving ``slots`` calls at once."""

    name: str
    mode: str = "fork"
    slots: int = 1


@record("monitoring options")
@dataclass(frozen=True, slots=True)
class MonitorOptions(WireRecord):
    """Measure the task's process tree every ``interval`` seconds; with ``watchdog``, kill it over its allocation."""

    watchdog: bool = False
    interval: float = 1.0


@record("a task definition")
@dataclass(frozen=True, slots=True)
class TaskDefinition(WireRecord):
    """A task as the worker runs it: a command (or a Python run, a function call, a library), its
    inputs and outputs, its allocation and its limits."""

    id: int
    command: str
    resources: dict[str, float] = field(default_factory=dict)  # the allocation
    inputs: tuple[InputRef, ...] = ()
    outputs: tuple[OutputRef, ...] = ()
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset that variable
    environments: tuple[str, ...] = ()  # cache names of the environments (poncho, starch) it runs in
    time_max: float = 0  # seconds of wall time (0: no limit)
    time_end: int = 0  # microseconds since the epoch it must end by (0: none)
    stdout_limit: ByteCount | None = None  # bytes of stdout kept (None: the worker's default)
    monitor: MonitorOptions | None = None
    queued: bool = False  # may wait in the worker's queue until its allocation fits (prefetched)
    library_instance: int | None = None  # the library instance a function call goes to
    python: PythonRun | None = None
    function_call: CallRef | None = None
    library: LibraryStart | None = None


@record("a mini-task definition")
@dataclass(frozen=True, slots=True)
class MinitaskDefinition(WireRecord):
    """A command whose sandbox file ``source`` becomes a cache entry (a mini-task's output)."""

    command: str
    source: str
    inputs: tuple[InputRef, ...] = ()
    env: dict[str, str | None] = field(default_factory=dict)

    def as_task(self, task_id: int) -> TaskDefinition:
        """The mini-task as the worker runs it: a task with only a command, its inputs and environment."""
        return TaskDefinition(task_id, self.command, inputs=self.inputs, env=self.env)


# --- manager -> worker --------------------------------------------------------------------------------------


@message("task")
@dataclass(slots=True)
class Task(Message):
    """Run a task: its definition (command or function, inputs, outputs, allocation)."""

    task: TaskDefinition


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
    task: MinitaskDefinition
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
    bytes of it were streamed before this message; its returned outputs were streamed before too,
    except one small result the manager allowed inline (``PythonRun.result_in_complete``): then
    the payload begins with output ``result_name``'s ``result_size`` bytes, and its stdout follows."""

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
    result_name: str | None = None  # the output (cache name) whose bytes open the payload
    result_size: ByteCount = 0  # how many bytes of the payload are that output's


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
