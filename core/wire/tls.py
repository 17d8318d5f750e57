"""TLS for the manager's port and the workers' transfer ports, and a listener that tells TLS from plain TCP.

Both kinds of port are served by :class:`GatedListener`: it looks at the first bytes of every new
connection before anything else reads them. A TLS client's first byte is 0x16 (a handshake record);
ours never is (a frame starts with a header length far below 0x16000000). So a port that requires
TLS can refuse a plain client *with a reason it can read* (a plain ``error`` frame saying TLS is
required), and a plain port can log that a TLS client knocked, instead of both sides failing with
an opaque handshake error that asyncio only reports in debug mode.

Certificates are not verified (as in TaskVine): workers accept the manager's and each other's
self-signed certificates. What TLS gives here is privacy of the bytes on the wire. Authentication
is the shared password, whose proofs (:mod:`core.wire.connection`) are bound to the TLS channel, so a
relay that terminates TLS in the middle cannot pass them on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl as ssl_module
import subprocess
import tempfile
from collections.abc import Awaitable, Callable

from ..errors import VineError
from . import messages as M
from .preauth import PreAuthGate, RateLimitedLog
from .protocol import encode_message

TLS_HANDSHAKE_RECORD = 0x16
SNIFF_TIMEOUT = 30.0  # by default, a client that sends nothing (or does not finish TLS) is dropped after this long
CLOSE_TIMEOUT = 2.0  # how long a closed TLS connection may wait for the peer's close_notify

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TLSSetupError(VineError):
    """A TLS context could not be made (no openssl command, unreadable key or certificate)."""


def client_context() -> ssl_module.SSLContext:
    """TLS for connecting to a manager or a peer: encrypts, does not verify the certificate (see module doc)."""
    ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl_module.CERT_NONE
    return ctx


def self_signed_server_context(common_name: str | None = None) -> ssl_module.SSLContext:
    """A server context with a fresh self-signed EC P-256 certificate, made by ``openssl`` for this run.

    The key is loaded into the context and its files removed at once, so no private key is left on
    disk. (EC rather than RSA: it is made in milliseconds, which every worker start pays.)
    """
    if shutil.which("openssl") is None:
        raise TLSSetupError("TLS needs the openssl command to make a self-signed certificate; install openssl")
    d = tempfile.mkdtemp(prefix="vine-tls-")
    try:
        key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={common_name or socket.gethostname()}"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise TLSSetupError(f"openssl could not make a self-signed certificate: {exc} {detail.decode(errors='replace')}") from exc
        return server_context(key, cert)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def server_context(key: str, cert: str) -> ssl_module.SSLContext:
    """A server-side TLS context holding the PEM key and certificate at these paths (TLSSetupError
    naming both if they cannot be loaded)."""
    ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl_module.SSLError) as exc:
        raise TLSSetupError(f"cannot load TLS key {key} / certificate {cert}: {exc}") from exc
    return ctx


def looks_like_tls(first: bytes) -> bool:
    """True when ``first`` (the first bytes a client sent) opens a TLS handshake record."""
    return bool(first) and first[0] == TLS_HANDSHAKE_RECORD


def tls_required_frame(what: str) -> bytes:
    """The plain frame a TLS-only port sends a plain client before hanging up (see ``client_handshake``)."""
    return encode_message(M.Error(f"this {what} requires TLS; connect with --ssl (a worker or factory using "
                                  "-M NAME learns it from the catalog)", tls_required=True))


class GatedListener:
    """Accepts connections on a bound socket, sorts TLS from plain by the first byte, then runs ``handler``.

    With ``ssl``, plain clients are refused (logged, and told why); without, TLS clients are refused
    (logged). ``what`` names the port in log lines ("manager", "transfer port"). ``timeout`` (seconds,
    or a function giving them, read at each accept: the manager's ``handshake-timeout`` may be tuned
    after it started) bounds both the wait for a client's first bytes and its TLS handshake. Offers
    the part of :class:`asyncio.Server` that its owners use: ``sockets`` and ``close()``.
    """

    def __init__(self, handler: Handler, sock: socket.socket, ssl: ssl_module.SSLContext | None, *,
                 what: str, log: logging.Logger, limit: int = 1 << 20, backlog: int = 512,
                 timeout: float | Callable[[], float] = SNIFF_TIMEOUT, gate: PreAuthGate | None = None) -> None:
        self._handler = handler
        # Connections not yet authenticated are capped (the oldest goes first), and a failing accept
        # is logged once a minute: 1,021 idle strangers at ulimit -n 1024 once stopped the manager.
        self.gate = gate if gate is not None else PreAuthGate()
        self._accept_failures = RateLimitedLog(log)
        self._sock = sock
        self.ssl = ssl
        self.what = what
        self._log = log
        self._limit = limit
        self._timeout = timeout
        self._clients: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        sock.listen(backlog)
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_loop())

    @property
    def sockets(self) -> list[socket.socket]:
        return [self._sock]

    def close(self) -> None:
        """Stop accepting (connections already handed to ``handler`` carry on, as with asyncio.Server)."""
        self._acceptor.cancel()
        self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, addr = await loop.sock_accept(self._sock)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as exc:
                if self._sock.fileno() < 0:
                    return  # closed under us
                # Out of file descriptors, most likely: free one held by a stranger, back off.
                evicted = self.gate.evict_oldest()
                self._accept_failures.warning(f"{self.what}: cannot accept a connection: {exc}"
                                              + ("; closed the oldest unauthenticated one" if evicted else ""))
                await asyncio.sleep(0.5)
                continue
            task = loop.create_task(self._route(client, addr))
            self._clients.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._clients.discard)
            self.gate.admit(task)

    async def _route(self, client: socket.socket, addr: object) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            streams = await self._open(client, addr)
            if streams is not None:
                reader, writer = streams
                await self._handler(reader, writer)
        except Exception as exc:  # noqa: BLE001 - one client's failure must not reach the acceptor
            self._log.warning("%s: connection from %s failed: %s: %s", self.what, addr, type(exc).__name__, exc)
        finally:
            # Also when cancelled (the owner is shutting down): no socket may outlive its connection.
            if writer is None:
                client.close()
            else:
                await close_stream(writer)

    async def _open(self, client: socket.socket, addr: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The streams to hand to the handler, or None when the client was refused (or hung up)."""
        loop = asyncio.get_running_loop()
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        timeout = float(self._timeout() if callable(self._timeout) else self._timeout)
        try:
            first = await asyncio.wait_for(_peek(client), timeout)
        except (OSError, asyncio.TimeoutError):
            return None
        if not first:
            return None  # connected and hung up (a port probe)
        tls = looks_like_tls(first)
        if self.ssl is not None and not tls:
            self._log.warning("%s refused plain TCP from %s: this %s requires TLS", self.what, peer, self.what)
            _refuse(client, tls_required_frame(self.what))
            return None
        if self.ssl is None and tls:
            self._log.warning("%s refused a TLS hello from %s: this %s speaks plain TCP (the other side uses --ssl, "
                              "this side does not)", self.what, peer, self.what)
            _refuse(client, b"")
            return None
        try:
            # Small frames must not wait for a delayed ACK (asyncio sets this only on sockets made
            # with proto=IPPROTO_TCP, which not every listener here is).
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        reader = asyncio.StreamReader(limit=self._limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, client, ssl=self.ssl, ssl_handshake_timeout=timeout if self.ssl else None)
        except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
            self._log.warning("%s: TLS handshake with %s failed: %s", self.what, peer, exc)
            return None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_gated_server(handler: Handler, *, ssl: ssl_module.SSLContext | None, what: str, log: logging.Logger,
                             sock: socket.socket | None = None, host: str = "0.0.0.0", port: int = 0,
                             limit: int = 1 << 20, timeout: float | Callable[[], float] = SNIFF_TIMEOUT) -> GatedListener:
    """Serve ``handler`` on ``sock`` (bound, maybe not listening) or on a new socket bound to ``host:port``."""
    if sock is None:
        sock = socket.create_server((host, port), family=socket.AF_INET, backlog=512)
    return GatedListener(handler, sock, ssl, what=what, log=log, limit=limit, timeout=timeout)


async def _peek(sock: socket.socket, n: int = 8) -> bytes:
    """The first bytes waiting on ``sock``, left in place for whoever reads the stream next."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return sock.recv(n, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        ready = loop.create_future()
        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(sock.fileno(), wake)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


async def close_stream(writer: asyncio.StreamWriter, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close a connection for good. A TLS close waits for the peer's close_notify, which a peer that
    has already gone never sends: abort after ``timeout``, so that the socket is not left to an event
    loop that is about to be closed (asyncio.run does not wait for transports)."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (OSError, asyncio.TimeoutError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


def _refuse(client: socket.socket, message: bytes) -> None:
    """Hang up on a client of the wrong kind, after reading what it sent (closing a socket with unread
    bytes sends a reset, which can destroy ``message`` before the client reads it)."""
    try:
        while client.recv(1 << 16):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass
    try:
        if message:
            client.send(message)
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    client.close()
