"""How a worker obtains the files its tasks need, and serves its cache to peers.

A file comes from the manager (streamed on the manager connection), from a URL (downloaded in a
thread), from another worker's transfer server (authenticated with the same password as the
manager, and over TLS when the worker uses TLS with its manager: every worker of a TLS manager does,
so each serves its transfer port with TLS and fetches from peers with TLS), or is made by a mini-task
in a sandbox of its own. Each lands in the cache under its
cache name and is announced with ``cache_update``; a failure is announced with ``cache_invalid``.
A member of :class:`core.worker.Worker` (``worker.transfers``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import Any, Callable, Coroutine

from .. import constants as C
from ..errors import AuthenticationError, ProtocolError, TransferError
from ..wire import messages as M
from ..wire.connection import Connection, client_handshake, open_connection, send_bytes, send_path, server_handshake
from ..wire.preauth import leave_preauth_gate
from ..wire.receive import FileReceiver, MemoryReceiver
from .cache import MEMORY_FILE_MAX, MEMORY_LIMIT, WorkerCache
from .running import RunningTask, close_stdout
from .sandbox import WorkerSandboxes

log = logging.getLogger("vine_worker")

PEER_BATCH = 64  # gets in flight on one peer connection


class _PeerMissing(TransferError):
    """The peer answered, but does not hold the file (the connection stays usable)."""


class WorkerTransfers:
    """Fetching inputs (URL, peer, mini-task) and the peer transfer server.

    Given the cache and the sandboxes, and from the worker: its ``send``, its manager connection
    (``conn()``, None between managers), ``spawn`` (run a coroutine in the background, held),
    ``execute`` (run a mini-task's command), and the TLS context and password peers share.
    """

    def __init__(self, cache: WorkerCache, sandboxes: WorkerSandboxes, send: Callable[..., None],
                 conn: Callable[[], Connection | None], spawn: Callable[[Coroutine[Any, Any, None]], None],
                 execute: Callable[[RunningTask], Coroutine[Any, Any, int]], tls_client: Any, password: bytes | None) -> None:
        self.cache = cache
        self.sandboxes = sandboxes
        self.send = send
        self._conn = conn
        self._spawn = spawn
        self._execute = execute
        self.tls_client = tls_client
        self.password = password
        self.peer_failures: set[str] = set()  # inputs whose peer transfer broke: the cluster's fault, not the task's
        self.url_failures: dict[str, str] = {}  # input -> why its URL could not be fetched (the task forsakes itself)
        self._peer_queues: dict[str, list[tuple[str, int]]] = {}  # peer address -> (name, level) still to get from it

    async def send_back(self, name: str, request: Any) -> None:
        path = self.cache.path(name)
        data = self.cache.memory.get(name)
        if not self.cache.verify(name, "a running task") or name not in self.cache.entries or (data is None and not os.path.lexists(path)):
            self.send(M.CacheInvalid(name, "not in cache", request=request))
            return
        assert self._conn() is not None
        if data is not None:
            await send_bytes(self._conn(), name, data, request=request)
        else:
            await send_path(self._conn(), name, path, request=request)

    # -- obtaining inputs ------------------------------------------------------------------------------
    async def fetch_url(self, name: str, url: str, level: int) -> None:
        target = self.cache.path(name)
        tmp = target + ".part"
        try:
            await asyncio.get_running_loop().run_in_executor(None, _download, url, tmp)
            os.replace(tmp, target)
        except Exception as exc:  # noqa: BLE001 - any failure of the fetch is reported, not raised
            if os.path.exists(tmp):
                os.unlink(tmp)
            reason = f"cannot fetch {url}: {exc}"
            # Kept for the task that needed it: it forsakes itself with this reason (Worker.run_task).
            self.url_failures[name] = reason
            self.cache.failed(name, reason)
            return
        self.cache.ready(name, level)

    def fetch_peer(self, name: str, source: str, level: int) -> None:
        """Queue ``name`` for fetching from peer ``source``; one connection per peer carries the queue.

        A fan-in task may need thousands of small files from one peer: a connection (and password
        handshake) per file cost more than the files. The queue's gets are pipelined, PEER_BATCH at
        a time, over one connection that the peer serves in order.
        """
        queues = self._peer_queues
        queue = queues.get(source)
        if queue is None:
            queue = queues[source] = []
            self._spawn(self._peer_fetcher(source, queue))  # held: see Worker._spawn
        queue.append((name, level))

    async def _peer_fetcher(self, source: str, queue: list[tuple[str, int]]) -> None:
        queues = self._peer_queues
        host, _, port = source.rpartition(":")
        conn: Connection | None = None
        batch: list[tuple[str, int]] = []
        try:
            conn = await open_connection(host, int(port), ssl=self.tls_client, timeout=10)
            await client_handshake(conn, "peer", self.password, timeout=30)
            while queue:
                batch, queue[:PEER_BATCH] = queue[:PEER_BATCH], []
                for name, _level in batch:
                    conn.send(M.Get(name))
                await conn.drain()
                while batch:
                    name, level = batch[0]
                    try:
                        await self._receive_from_peer(conn, source, name, level)
                    except _PeerMissing as exc:
                        batch.pop(0)
                        self.peer_failures.add(name)
                        self.cache.failed(name, str(exc))
                        continue
                    batch.pop(0)
                    self.cache.ready(name, level)
        except Exception as exc:  # noqa: BLE001 - every file still queued fails, and is reported
            failed = batch + queue
            queue.clear()
            for name, _level in failed:
                self.peer_failures.add(name)
                self.cache.failed(name, f"peer transfer from {source} failed: {exc}")
        finally:
            if queues.get(source) is queue:
                del queues[source]
            if conn is not None:
                conn.close()

    async def _receive_from_peer(self, conn: Connection, source: str, name: str, level: int) -> None:
        begin = await conn.recv()
        if begin is None:
            raise TransferError(f"peer {source} closed before sending {name}")
        announced = begin.message
        if isinstance(announced, M.Error):
            raise _PeerMissing(f"peer transfer from {source} failed: peer {source} does not have {name}: {announced.reason}")
        if not isinstance(announced, M.FileBegin) or announced.name != name:
            raise TransferError(f"peer {source} sent {begin.type} for {begin.get('name')!r} while {name} was expected")
        size = announced.size
        # Only files that end with the workflow may live in memory: worker- and forever-level files
        # must be on disk to outlive the connection (and, forever, the worker itself).
        in_memory = (level <= C.VINE_CACHE_LEVEL_WORKFLOW and not announced.dir and size <= MEMORY_FILE_MAX
                     and self.cache.memory_bytes + size <= MEMORY_LIMIT)
        receiver = MemoryReceiver(begin) if in_memory else FileReceiver(begin, self.cache.path(name))
        try:
            while True:
                fr = await conn.recv()
                if fr is None:
                    raise TransferError(f"peer {source} closed during {name}")
                piece = fr.message
                if isinstance(piece, M.FileChunk) and piece.name == name:
                    receiver.chunk(fr)
                elif isinstance(piece, M.FileEnd) and piece.name == name:
                    receiver.finish()
                    break
                else:
                    raise TransferError(f"peer {source} sent {fr.type} in the middle of {name}")
        except BaseException:
            receiver.abort()
            raise
        if isinstance(receiver, MemoryReceiver):
            self.cache.keep_in_memory(name, receiver.data)

    async def serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        try:
            await server_handshake(conn, self.password, timeout=30)
            while True:
                fr = await conn.recv()
                if fr is None:
                    return
                get = fr.message
                if not isinstance(get, M.Get):
                    raise ProtocolError(f"peer sent {fr.type!r}, only 'get' is served")
                leave_preauth_gate()  # a peer asking for files, no longer counted among strangers
                name = get.name
                path = self.cache.path(name)
                data = self.cache.memory.get(name)
                if not self.cache.verify(name, "a running task") or name not in self.cache.entries or (data is None and not os.path.lexists(path)):
                    conn.send(M.Error(f"{name} not in cache"))
                    await conn.drain()
                    continue
                if data is not None:
                    await send_bytes(conn, name, data)
                else:
                    await send_path(conn, name, path)
        except (ProtocolError, AuthenticationError, OSError, asyncio.TimeoutError) as exc:
            log.info("peer %s: %s", conn.peer, exc)
        finally:
            conn.close()

    async def run_minitask(self, name: str, mini: M.MinitaskDefinition, level: int) -> None:
        spec = mini.as_task(-abs(hash(name)) % (1 << 30) - 1)
        rt = RunningTask(spec.id, spec, self.sandboxes.make(f"m.{name}"), {}, is_minitask=True)
        try:
            if not await self.cache.gather(spec):
                raise TransferError("inputs of the mini-task are missing")
            self.sandboxes.link_inputs(rt)
            code = await self._execute(rt)
            produced = os.path.join(rt.sandbox, mini.source)
            if code != 0 or not os.path.lexists(produced):
                out = _read_head(os.path.join(rt.sandbox, ".vine-stdout"), 2000)
                raise TransferError(f"mini-task `{mini.command}` exited {code}: {out}")
            os.replace(produced, self.cache.path(name))
        except Exception as exc:  # noqa: BLE001
            self.cache.failed(name, str(exc))
            return
        finally:
            self.sandboxes.verify_linked(rt)
            close_stdout(rt)  # (a mini-task's stdout is read by path, above, if at all)
            shutil.rmtree(rt.sandbox, ignore_errors=True)
        self.cache.ready(name, level)

def _download(url: str, target: str) -> None:
    import urllib.request  # only workers that fetch URLs pay for loading it

    with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)


def _read_head(path: str, n: int) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(n).decode("utf-8", errors="replace")
    except OSError:
        return ""
