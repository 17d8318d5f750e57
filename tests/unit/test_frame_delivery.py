"""Connection.deliver_frames and WriteBatch (core/wire/connection.py) over real localhost sockets.

A worker's frames are handed to the manager's handler in the socket's read callback once the link is
up; these check that nothing is lost or reordered at the switch from ``recv``, how the stream ends,
that the writer's flow control still works afterwards, and when a write batch's frames leave.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from core.errors import ProtocolError, RemoteProtocolError
from core.wire import messages as M
from core.wire.connection import Connection, WriteBatch
from core.wire.protocol import MAX_HEADER, MAX_PAYLOAD, Frame, FrameDecoder, encode_message

pytestmark = pytest.mark.timeout(30)


def _frames(*ids: int) -> bytes:
    return b"".join(encode_message(M.Kill(i)) for i in ids)


async def _pair(serve: Callable[[Connection], Awaitable[None]]) -> tuple[socket.socket, asyncio.Task[None]]:
    """A server connection (authenticated, handed to ``serve``) and the raw client socket talking to it."""
    done: asyncio.Future[asyncio.Task[None]] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        conn.authenticated()
        task = asyncio.current_task()
        assert task is not None
        done.set_result(task)  # type: ignore[arg-type]
        try:
            await serve(conn)
        finally:
            conn.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # Small, fixed socket buffers: with the kernel's autotuning (tcp_rmem up to 32 MiB here) a
    # loopback connection could take in a whole "slow reader" test's bytes without the reader.
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    client.connect(("127.0.0.1", port))
    client.setblocking(False)
    task = await done
    server.close()
    return client, task


async def _send(client: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(client, data)


def test_frames_already_read_and_buffered_are_delivered_first_then_the_rest_in_order() -> None:
    got: list[int] = []

    async def serve(conn: Connection) -> None:
        first = await conn.recv()  # the "handshake": frame 2 came in the same read, decoded and held
        assert first is not None and first.message == M.Kill(1)
        await asyncio.sleep(0.3)  # frames 3 and the start of 4 arrive meanwhile: the stream reader holds them
        await conn.deliver_frames(lambda f: got.append(f.message.id))  # type: ignore[attr-defined]

    async def main() -> None:
        client, task = await _pair(serve)
        await _send(client, _frames(1, 2))
        await asyncio.sleep(0.1)
        rest = _frames(3, 4)
        cut = len(rest) - 5  # frame 4 split across two sends
        await _send(client, rest[:cut])
        await asyncio.sleep(0.5)
        await _send(client, rest[cut:] + _frames(5, 6))
        await asyncio.sleep(0.05)
        client.close()
        await asyncio.wait_for(task, 10)  # a clean end: returns

    asyncio.run(main())
    assert got == [2, 3, 4, 5, 6]


def test_a_frame_cut_off_at_the_end_raises() -> None:
    async def serve(conn: Connection) -> None:
        await conn.deliver_frames(lambda f: None)

    async def main() -> None:
        client, task = await _pair(serve)
        await _send(client, _frames(1) + _frames(2)[:7])
        await asyncio.sleep(0.05)
        client.close()
        with pytest.raises(RemoteProtocolError, match="in the middle of a frame"):
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_what_the_handler_raises_ends_the_delivery_and_no_later_frame_is_handled() -> None:
    got: list[int] = []

    def handle(frame: Frame) -> None:
        got.append(frame.message.id)  # type: ignore[attr-defined]
        if frame.message.id == 2:  # type: ignore[attr-defined]
            raise ProtocolError("frame 2 is bad")

    async def serve(conn: Connection) -> None:
        await conn.deliver_frames(handle)

    async def main() -> None:
        client, task = await _pair(serve)
        await _send(client, _frames(1, 2, 3))
        with pytest.raises(ProtocolError, match="frame 2 is bad"):
            await asyncio.wait_for(task, 10)
        client.close()

    asyncio.run(main())
    assert got == [1, 2]


def test_garbage_from_the_peer_raises_remote_protocol_error() -> None:
    async def serve(conn: Connection) -> None:
        await conn.deliver_frames(lambda f: None)

    async def main() -> None:
        client, task = await _pair(serve)
        await _send(client, b"\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x00hello")
        with pytest.raises(RemoteProtocolError):
            await asyncio.wait_for(task, 10)
        client.close()

    asyncio.run(main())


def test_the_writer_still_waits_for_a_slow_reader_and_answers_go_out_after_each_read() -> None:
    """Flow control goes through the replaced stream protocol: drain() blocks while the peer does not
    read and returns once it does; a frame queued by the handler through a write batch is written
    at the end of the read that brought the frame it answers."""
    big = b"x" * (4 << 20)

    async def serve(conn: Connection) -> None:
        conn.write_batch = WriteBatch(asyncio.get_running_loop())
        delivering = asyncio.ensure_future(conn.deliver_frames(lambda f: conn.send(M.Kill(f.message.id + 100))))  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)
        conn.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        conn.writer.transport.set_write_buffer_limits(high=1 << 16)
        conn.send(M.Unlink("big"), big)
        draining = asyncio.ensure_future(conn.drain())
        await asyncio.sleep(0.2)
        assert not draining.done()  # the client reads nothing yet
        await asyncio.wait_for(draining, 10)
        await delivering

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, task = await _pair(serve)
        await _send(client, _frames(7))
        dec = FrameDecoder(MAX_HEADER, MAX_PAYLOAD)
        frames: list[Frame] = []
        while not frames:
            frames += dec.feed(await loop.sock_recv(client, 1 << 16))
        assert frames[0].message == M.Kill(107)  # answered at the end of that read
        await asyncio.sleep(0.4)  # the server's drain waits meanwhile
        while len(frames) < 2:
            frames += dec.feed(await loop.sock_recv(client, 1 << 20))
        assert frames[1].message == M.Unlink("big") and frames[1].payload == big
        client.close()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_a_write_batch_writes_every_connection_once_per_turn_or_at_flush() -> None:
    async def serve(conn: Connection) -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        conn.write_batch = batch
        conn.send(M.Kill(1))
        conn.send(M.Kill(2))
        assert conn.writer.transport.get_write_buffer_size() == 0 and conn._outgoing is not None  # noqa: SLF001 - queued, not written
        batch.flush()
        assert conn._outgoing is None  # noqa: SLF001 - written now, in one write
        conn.send(M.Kill(3))  # left to the batch's own callback at the end of this turn
        await asyncio.sleep(0)
        assert conn._outgoing is None  # noqa: SLF001
        await conn.deliver_frames(lambda f: None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, task = await _pair(serve)
        dec = FrameDecoder(MAX_HEADER, MAX_PAYLOAD)
        frames: list[Frame] = []
        while len(frames) < 3:
            frames += dec.feed(await loop.sock_recv(client, 1 << 16))
        assert [f.message.id for f in frames] == [1, 2, 3]  # type: ignore[attr-defined]
        client.close()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
