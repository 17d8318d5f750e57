"""An asyncio connection speaking the frame codec, plus the handshake and file sending.

Receiving streams is core.wire.receive (its FileReceiver and MemoryReceiver are importable from
here too).

Used by the manager, the worker, the worker's transfer server and the tools, so that every peer
authenticates and streams files the same way.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl as ssl_module
import tarfile
import tempfile
from collections.abc import Callable, Iterator

from ..errors import LocalProtocolError, RemoteProtocolError
from . import messages as M
from .handshake import ClientHandshake, ServerHandshake, Step
from .protocol import (
    CHUNK_SIZE,
    MAX_HEADER,
    MAX_PAYLOAD,
    PREAUTH_MAX_HEADER,
    PREAUTH_MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    encode_message,
)
from .receive import FileReceiver, MemoryReceiver  # noqa: F401 - re-exported: receiving lives in core.wire.receive
from .tls import close_stream

READ_SIZE = 256 * 1024
PREAUTH_READ_SIZE = 16 * 1024  # a stranger's bytes are read (and buffered) in small bites


class Connection:
    """Frames over an asyncio stream pair. ``recv`` returns None at a clean EOF.

    Until :meth:`authenticated` (called by both handshake functions when they succeed), frames are
    limited to the handshake's few KB (``PREAUTH_MAX_*``), so a stranger cannot make us buffer more.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_header=PREAUTH_MAX_HEADER, max_payload=PREAUTH_MAX_PAYLOAD)
        self.is_authenticated = False
        self._read_size = PREAUTH_READ_SIZE
        self._closed = False
        self._frames: collections.deque[Frame] = collections.deque()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.bytes_sent = 0
        self.bytes_received = 0
        self._outgoing: list[bytes] | None = None
        # The loop this connection's streams belong to, found at the first send: asking asyncio for
        # the running loop costs a getpid() system call per call on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.write_batch: WriteBatch | None = None  # shared with the other connections of its loop (set by the owner)

    def send(self, msg: M.Message, payload: bytes = b"") -> None:
        """Queue a message (and its payload) as a frame. Frames queued in one event-loop turn leave in
        one write: on loopback a send costs ~100 us of system time, more than a small task's own bookkeeping."""
        if not isinstance(msg, M.Message):
            raise LocalProtocolError(f"Connection.send takes a message of core.wire.messages, not {type(msg).__name__}")
        data = encode_message(msg, payload)
        self.bytes_sent += len(data)
        if self._outgoing is None:
            self._outgoing = [data]
            batch = self.write_batch
            if batch is not None:
                batch.add(self)
                return
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)
        else:
            self._outgoing.append(data)

    def flush(self) -> None:
        out, self._outgoing = self._outgoing, None
        if out and not self.writer.is_closing():
            self.writer.write(b"".join(out) if len(out) > 1 else out[0])

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    def authenticated(self) -> None:
        """The handshake succeeded: lift the pre-handshake frame limits."""
        self.is_authenticated = True
        self.decoder.set_limits(MAX_HEADER, MAX_PAYLOAD)
        self._read_size = READ_SIZE

    async def recv(self) -> Frame | None:
        while not self._frames:
            data = await self.reader.read(self._read_size)
            if self._closed:
                return None  # closed by our side while this read waited: an end, not a bad stream
            if not data:
                if self.decoder.pending:
                    raise RemoteProtocolError(f"connection closed in the middle of a frame ({self.decoder.pending} bytes)")
                return None
            self.bytes_received += len(data)
            self._frames.extend(self.decoder.feed(data))
        return self._frames.popleft()

    def recv_nowait(self) -> Frame | None:
        """The next frame already received and decoded, or None without waiting."""
        return self._frames.popleft() if self._frames else None

    async def deliver_frames(self, handle: Callable[[Frame], None], answered: Callable[[], None] | None = None) -> None:
        """From now on, hand each frame to ``handle`` as soon as its bytes arrive, in the transport's
        read callback, instead of through :meth:`recv` (which the caller must not use any more);
        return at the peer's clean end (or our own close), or raise what ended the stream (a frame
        cut off at EOF, a connection error) or what ``handle`` raised: then no further frame is
        handed over, and the caller closes the connection. ``answered`` runs once the frames of a
        read have been handled (the frames already received count as one read), and may raise as
        ``handle`` may; without it, this connection's write batch is flushed then (the answers to
        those frames leave before anything else the loop does: see WriteBatch).

        For a long-lived peer whose frames are all handled the same way (the manager's workers):
        a frame read through ``recv`` costs a future, a wake-up of the waiting coroutine and a turn
        of the event loop before it is handled, which per small task cost more than decoding it.
        Frames and bytes already received are handed over first."""
        transport = self.writer.transport
        # The stream reader's buffer is not public: without it (another asyncio), frames are read as before.
        held = getattr(self.reader, "_buffer", None)
        if not isinstance(held, bytearray) or not isinstance(transport, asyncio.Transport):
            while True:
                frame = self.recv_nowait() or await self.recv()
                if frame is None:
                    return
                handle(frame)
                if answered is not None:
                    answered()
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivery = _FrameDelivery(self, handle, answered, ended, transport.get_protocol())
        frames, self._frames = list(self._frames), collections.deque()
        data = bytes(held)  # bytes read with the last frames and not yet decoded
        held.clear()
        transport.set_protocol(delivery)
        if getattr(self.reader, "_paused", False):  # the reader paused reading on a full buffer, emptied now
            setattr(self.reader, "_paused", False)
            transport.resume_reading()
        delivery.deliver(frames)
        if data and not ended.done():
            delivery.data_received(data)
        if self.reader.at_eof() and not ended.done():
            delivery.end_of_stream(self.reader.exception())
        await ended

    async def expect(self, mtype: str, timeout: float | None = None) -> Frame:
        """The next frame, which must be a message of type ``mtype`` (its ``message`` decoded and
        checked); RemoteProtocolError for anything else, an ``error`` saying why, or the end."""
        frame = await asyncio.wait_for(self.recv(), timeout)
        if frame is None:
            raise RemoteProtocolError(f"connection closed while waiting for {mtype!r}")
        msg = frame.message
        if isinstance(msg, M.Error):
            raise RemoteProtocolError(f"peer reported: {msg.reason}")
        if msg.TYPE != mtype:
            raise RemoteProtocolError(f"expected {mtype!r}, got {msg.TYPE!r}")
        return frame

    def close(self) -> None:
        try:
            self.flush()
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a broken transport must not raise
            pass
        self._release()

    async def aclose(self) -> None:
        """Close and wait until the socket is released: for a connection whose event loop ends next
        (a TLS close otherwise outlives the loop, waiting for the peer's close_notify)."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - closing a broken transport must not raise
            pass
        await close_stream(self.writer)
        self._release()

    def _release(self) -> None:
        # Whatever the peer left half-sent is garbage now; do not keep it until this object is collected.
        self._closed = True
        self.decoder.release()
        self._frames.clear()


class WriteBatch:
    """The connections of one event loop that have frames queued: written once per loop turn, in
    one callback for all of them (not one per connection), or sooner by :meth:`flush`.

    A connection delivering its frames (Connection.deliver_frames) flushes its batch once it has
    handled the frames of a read: the answers (a worker's next task) leave before the callbacks
    queued meanwhile run, such as the wake-up of a thread waiting for a finished task. Woken
    first, that thread took the interpreter lock as soon as the write let go of it, and the I/O
    thread then waited for it to hand the lock back, once per task."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queued: list[Connection] = []
        self._scheduled = False

    def add(self, conn: Connection) -> None:
        self._queued.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_turn)

    def _flush_turn(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what every queued connection holds (a connection flushed meanwhile has nothing left)."""
        queued, self._queued = self._queued, []
        for conn in queued:
            conn.flush()


class _FrameDelivery(asyncio.Protocol):
    """The transport's protocol once a connection delivers its frames (Connection.deliver_frames):
    decodes what arrives and hands each frame on at once. Flow control of writing and the end of
    the connection are passed on to the stream protocol it replaced, so the connection's writer
    (``drain``, ``close``, ``wait_closed``) works as before."""

    def __init__(self, conn: Connection, handle: Callable[[Frame], None], answered: Callable[[], None] | None,
                 ended: asyncio.Future[None], streams: asyncio.BaseProtocol | None) -> None:
        self._conn = conn
        self._handle = handle
        self._answered = answered
        self._ended = ended
        self._streams = streams

    def handle_frames(self, frames: list[Frame]) -> None:
        handle = self._handle
        try:
            for frame in frames:
                if self._ended.done():
                    return
                handle(frame)
        except Exception as exc:  # noqa: BLE001 - the caller's to judge (a bad frame, a bug): the stream ends with it
            self._finish(exc)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if self._ended.done() or conn._closed:
            return  # ended: the caller is closing the connection; nothing more is taken from it
        conn.bytes_received += len(data)
        try:
            frames = conn.decoder.feed(data)
        except RemoteProtocolError as exc:
            self._finish(exc)
            return
        self.deliver(frames)

    def deliver(self, frames: list[Frame]) -> None:
        """Hand on the frames of one read, then say the read is handled (``answered``: the caller
        may have held back work until then, which ends the stream too if it raises)."""
        self.handle_frames(frames)
        if self._answered is not None:
            try:
                self._answered()
            except Exception as exc:  # noqa: BLE001 - as in handle_frames: the caller's to judge
                self._finish(exc)
        elif self._conn.write_batch is not None:
            self._conn.write_batch.flush()  # the answers to these frames, before anything else (see WriteBatch)

    def end_of_stream(self, exc: BaseException | None) -> None:
        conn = self._conn
        if exc is None and conn.decoder.pending and not conn._closed:
            exc = RemoteProtocolError(f"connection closed in the middle of a frame ({conn.decoder.pending} bytes)")
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if not self._ended.done():
            if exc is None:
                self._ended.set_result(None)
            else:
                self._ended.set_exception(exc)

    def eof_received(self) -> bool | None:
        keep_open = self._streams.eof_received() if isinstance(self._streams, asyncio.Protocol) else None
        self.end_of_stream(None)
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        if self._streams is not None:
            self._streams.connection_lost(exc)
        self.end_of_stream(exc)

    def pause_writing(self) -> None:
        if self._streams is not None:
            self._streams.pause_writing()

    def resume_writing(self) -> None:
        if self._streams is not None:
            self._streams.resume_writing()


async def open_connection(host: str, port: int, ssl: ssl_module.SSLContext | None = None, timeout: float = 10) -> Connection:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl, limit=READ_SIZE * 4), timeout
    )
    return Connection(reader, writer)


# --- handshake --------------------------------------------------------------------------------------


async def client_handshake(conn: Connection, role: str, password: bytes | None, timeout: float = 30,
                           worker_id: str | None = None) -> Frame:
    """Connecting side: hello -> welcome [-> auth -> the other side's auth]. Returns the welcome frame.

    Both sides prove knowledge of the password over the other's fresh nonce, so it is never sent.
    The steps and their checks are :class:`core.wire.handshake.ClientHandshake`; this drives it.
    """
    machine = ClientHandshake(role, password, _channel_binding(conn), conn.peer, worker_id=worker_id)
    step = machine.start()
    welcome: Frame | None = None
    while True:
        if await _carry_out(conn, step):
            break
        frame = await asyncio.wait_for(conn.recv(), timeout)
        welcome = welcome or frame
        step = machine.receive(frame.message if frame is not None else None)
    conn.authenticated()
    assert welcome is not None
    return welcome


async def _carry_out(conn: Connection, step: Step) -> bool:
    """Send what a handshake step says to send; raise its error, if any (after sending its reason).
    True once the handshake is complete."""
    for msg in step.send:
        conn.send(msg)
    if step.send:
        await _drain_quietly(conn, step.error is not None)
    if step.error is not None:
        raise step.error
    return step.done


async def _drain_quietly(conn: Connection, failing: bool) -> None:
    """Drain; when the handshake is failing, best effort only (the peer may have hung up already)."""
    if not failing:
        await conn.drain()
        return
    try:
        await conn.drain()
    except (OSError, ConnectionError):
        pass


async def server_handshake(conn: Connection, password: bytes | None, timeout: float) -> Frame:
    """Accepting side: expects hello, answers welcome, checks auth, then proves itself. Returns the hello frame.

    The steps and their checks are :class:`core.wire.handshake.ServerHandshake` (our proof is sent
    only after the peer's has checked); this drives it.
    """
    machine = ServerHandshake(password, _channel_binding(conn), conn.peer)
    hello: Frame | None = None
    while True:
        try:
            frame = await asyncio.wait_for(conn.recv(), timeout)
            step = machine.receive(frame.message if frame is not None else None)
        except RemoteProtocolError as exc:  # bytes that are not a frame, or a frame that is not a message
            frame, step = None, machine.refused(exc)
        hello = hello or frame
        if await _carry_out(conn, step):
            break
    conn.authenticated()
    assert hello is not None
    return hello


def _channel_binding(conn: Connection) -> str | None:
    """``:`` + the TLS channel's tls-unique value in hex, or None on a plain connection.

    Mixed into both password proofs: a relay that terminates TLS and opens its own TLS to the other
    side has two channels with different values, so the proofs it passes on no longer check, and a
    password-protected port cannot be read through such a relay even though certificates are not
    verified.
    """
    obj = conn.writer.get_extra_info("ssl_object")
    if obj is None:
        return None
    value = obj.get_channel_binding("tls-unique")
    return ":" + value.hex() if value else ""


# --- file streaming ---------------------------------------------------------------------------------


def _tar_directory(path: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".vine-tar-", suffix=".tar", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar:
            tar.add(path, arcname=".")
    except OSError:
        # The directory's parent may be read-only: fall back to the system temp dir.
        os.unlink(tmp)
        fd, tmp = tempfile.mkstemp(prefix=".vine-tar-", suffix=".tar")
        os.close(fd)
        with tarfile.open(tmp, "w") as tar:
            tar.add(path, arcname=".")
    return tmp


async def send_path(conn: Connection, name: str, path: str, *, level: int | None = None, task: int | None = None,
                    request: int | None = None) -> int:
    """Stream a file or directory as file_begin/chunk/end. Returns bytes of content sent.

    ``level`` (a file for the cache), ``task`` (an output of that task) or ``request`` (the answer
    to that get) say what the stream is for (see core.wire.messages.FileBegin)."""
    is_dir = os.path.isdir(path)
    src = _tar_directory(path) if is_dir else path
    try:
        size = os.path.getsize(src)
        mode = os.stat(path).st_mode & 0o777
        conn.send(M.FileBegin(name, size, dir=is_dir, mode=mode, level=level, task=task, request=request))
        piece = M.FileChunk(name)
        with open(src, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK_SIZE)
                if not chunk:
                    break
                conn.send(piece, chunk)
                await conn.drain()
        conn.send(M.FileEnd(name))
        await conn.drain()
        return size
    finally:
        if is_dir:
            os.unlink(src)


def _bytes_frames(name: str, data: bytes, begin: M.FileBegin) -> Iterator[tuple[M.Message, bytes]]:
    """The frames of file ``name`` held in memory: ``begin``, its chunks, the end."""
    yield begin, b""
    piece = M.FileChunk(name)
    for i in range(0, len(data), CHUNK_SIZE):
        yield piece, data[i : i + CHUNK_SIZE]
    yield M.FileEnd(name), b""


def queue_bytes(conn: Connection, name: str, data: bytes, *, task: int | None = None) -> int:
    """Queue ``data`` as file ``name`` (the frames :func:`send_bytes` sends), without waiting for
    the socket: they leave with the next write, in one with whatever follows them in this turn
    (a small task's result and its ``complete``). For data already in memory and at most a few
    chunks long, where waiting between chunks would only add writes. Returns its length."""
    for msg, payload in _bytes_frames(name, data, M.FileBegin(name, len(data), mode=0o644, task=task)):
        conn.send(msg, payload)
    return len(data)


async def send_bytes(conn: Connection, name: str, data: bytes, mode: int = 0o644, *, level: int | None = None,
                     task: int | None = None, request: int | None = None) -> int:
    """Stream ``data`` as file ``name`` (as :func:`send_path` does), waiting for the socket after
    each chunk and the end. Returns its length."""
    begin = M.FileBegin(name, len(data), mode=mode, level=level, task=task, request=request)
    for msg, payload in _bytes_frames(name, data, begin):
        conn.send(msg, payload)
        if msg is not begin:
            await conn.drain()
    return len(data)


def path_size(path: str) -> int:
    """Bytes under ``path`` (a file, or every file in a directory tree)."""
    if os.path.isdir(path) and not os.path.islink(path):
        total = 0
        for root, _dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total
    return os.lstat(path).st_size
