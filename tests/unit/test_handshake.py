"""The handshake of core.wire.connection over a real socket pair: passwords, mismatches, versions."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core.errors import AuthenticationError, RemoteProtocolError
from core.wire import messages as M
from core.wire.connection import Connection, client_handshake, server_handshake
from core.wire.protocol import PROTOCOL_VERSION, auth_proof, new_nonce

TIMEOUT = 5.0


async def _pair() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    return Connection(ra, wa), Connection(rb, wb)


async def _close(conn: Connection) -> None:
    conn.close()
    try:
        await conn.writer.wait_closed()
    except (OSError, ConnectionError):
        pass


def run_sides(
    client: Callable[[Connection], Awaitable[Any]], server: Callable[[Connection], Awaitable[Any]]
) -> tuple[Any, Any]:
    """Run both sides concurrently; each hangs up when it fails, as the real worker and manager do.

    Returns (client outcome, server outcome); an outcome is the return value or the exception.
    """

    async def side(fn: Callable[[Connection], Awaitable[Any]], conn: Connection) -> Any:
        try:
            return await fn(conn)
        except BaseException:
            await _close(conn)
            raise

    async def main() -> tuple[Any, Any]:
        c, s = await _pair()
        try:
            got = await asyncio.wait_for(asyncio.gather(side(client, c), side(server, s), return_exceptions=True), TIMEOUT * 2)
        finally:
            await _close(c)
            await _close(s)
        return got[0], got[1]

    return asyncio.run(main())


def handshake(client_pw: bytes | None, server_pw: bytes | None) -> tuple[Any, Any]:
    return run_sides(
        lambda c: client_handshake(c, "worker", client_pw, timeout=TIMEOUT, worker_id="w-1"),
        lambda s: server_handshake(s, server_pw, TIMEOUT),
    )


@pytest.mark.timeout(20)
@pytest.mark.parametrize("password", [None, b"s3cret", b"\x00binary\xff"])
def test_handshake_succeeds_with_matching_passwords(password: bytes | None) -> None:
    welcome, hello = handshake(password, password)
    assert not isinstance(welcome, BaseException), welcome
    assert not isinstance(hello, BaseException), hello
    assert welcome.type == "welcome" and welcome["version"] == PROTOCOL_VERSION
    assert welcome["auth"] is (password is not None)
    assert hello.type == "hello" and hello["role"] == "worker"
    assert hello["worker_id"] == "w-1"  # extra info travels in the hello
    # The password itself never travels; only proofs do.
    if password is not None:
        assert password.hex() not in str(welcome.header)


@pytest.mark.timeout(20)
def test_server_with_password_rejects_client_without() -> None:
    client, server = handshake(None, b"s3cret")
    assert isinstance(client, AuthenticationError), client
    assert "password" in str(client)
    assert isinstance(server, AuthenticationError), server
    assert "--password" in str(server)


@pytest.mark.timeout(20)
def test_different_passwords_fail_on_both_sides() -> None:
    client, server = handshake(b"alpha", b"beta")
    assert isinstance(client, AuthenticationError), client
    assert isinstance(server, AuthenticationError), server
    assert "mismatch" in str(server)


@pytest.mark.timeout(20)
def test_client_with_password_refuses_server_without() -> None:
    client, server = handshake(b"s3cret", None)
    assert isinstance(client, AuthenticationError), client
    # The server's part of the handshake had nothing to check; it learns of the refusal next.
    assert not isinstance(server, BaseException)


@pytest.mark.timeout(20)
def test_server_rejects_a_wrong_proof() -> None:
    """A client that skips checking the server and answers with a guess is refused."""

    async def liar(c: Connection) -> Any:
        c.send(M.Hello(PROTOCOL_VERSION, "worker", new_nonce()))
        welcome = await c.expect("welcome", TIMEOUT)
        c.send(M.Auth(auth_proof(b"guess", "client", welcome["nonce"])))
        return await c.expect("nothing-comes", TIMEOUT)

    client, server = run_sides(liar, lambda s: server_handshake(s, b"s3cret", TIMEOUT))
    assert isinstance(server, AuthenticationError), server
    assert isinstance(client, RemoteProtocolError) and "password mismatch" in str(client), client


@pytest.mark.timeout(20)
def test_server_proves_nothing_to_a_client_that_has_not_proven_itself() -> None:
    """No password oracle: a stranger choosing its nonce gets no HMAC of the password over it."""
    chosen = "00" * 16
    server_proof = auth_proof(b"s3cret", "server", chosen)
    seen: list[Any] = []

    async def collector(c: Connection) -> Any:
        c.send(M.Hello(PROTOCOL_VERSION, "worker", chosen))
        welcome = await c.expect("welcome", TIMEOUT)
        seen.append(welcome.header)
        c.send(M.Auth(auth_proof(b"guess", "client", welcome["nonce"])))
        while (f := await c.recv()) is not None:
            seen.append(f.header)

    _client, server = run_sides(collector, lambda s: server_handshake(s, b"s3cret", TIMEOUT))
    assert isinstance(server, AuthenticationError), server
    assert [h["type"] for h in seen] == ["welcome", "error"], seen
    assert server_proof not in str(seen)


@pytest.mark.timeout(20)
def test_server_proves_itself_after_the_client_has() -> None:
    async def client(c: Connection) -> Any:
        nonce = new_nonce()
        c.send(M.Hello(PROTOCOL_VERSION, "worker", nonce))
        welcome = await c.expect("welcome", TIMEOUT)
        assert "proof" not in welcome.header
        c.send(M.Auth(auth_proof(b"s3cret", "client", welcome["nonce"])))
        theirs = await c.expect("auth", TIMEOUT)
        return theirs["proof"] == auth_proof(b"s3cret", "server", nonce)

    proved, hello = run_sides(client, lambda s: server_handshake(s, b"s3cret", TIMEOUT))
    assert proved is True, proved
    assert not isinstance(hello, BaseException), hello


@pytest.mark.timeout(20)
def test_client_rejects_a_server_that_does_not_know_the_password() -> None:
    async def impostor(s: Connection) -> Any:
        hello = await s.expect("hello", TIMEOUT)
        s.send(M.Welcome(PROTOCOL_VERSION, new_nonce(), True))
        await s.expect("auth", TIMEOUT)
        s.send(M.Auth(auth_proof(b"guess", "server", hello["nonce"])))
        return await s.expect("nothing-comes", TIMEOUT)

    client, server = run_sides(lambda c: client_handshake(c, "worker", b"s3cret", timeout=TIMEOUT), impostor)
    assert isinstance(client, AuthenticationError), client
    # The impostor is told why. (It did get the client's proof over its nonce: the connecting side
    # proves first, to the address it chose to connect to; see server_handshake.)
    assert isinstance(server, RemoteProtocolError) and "password mismatch" in str(server), server


@pytest.mark.timeout(20)
def test_server_rejects_a_wrong_protocol_version() -> None:
    async def old_client(c: Connection) -> Any:
        c.send(M.Hello(PROTOCOL_VERSION + 41, "worker", new_nonce()))
        return await c.expect("welcome", TIMEOUT)

    client, server = run_sides(old_client, lambda s: server_handshake(s, None, TIMEOUT))
    assert isinstance(server, RemoteProtocolError) and str(PROTOCOL_VERSION + 41) in str(server), server
    # The client hears why, as an error frame, rather than a bare hang-up.
    assert isinstance(client, RemoteProtocolError) and "unsupported" in str(client), client


@pytest.mark.timeout(20)
def test_client_rejects_a_wrong_protocol_version() -> None:
    async def future_server(s: Connection) -> Any:
        await s.expect("hello", TIMEOUT)
        s.send(M.Welcome(PROTOCOL_VERSION + 1, new_nonce(), False))
        return await s.expect("auth", TIMEOUT)

    client, _server = run_sides(lambda c: client_handshake(c, "worker", None, timeout=TIMEOUT), future_server)
    assert isinstance(client, RemoteProtocolError) and "protocol" in str(client), client


@pytest.mark.timeout(20)
def test_server_times_out_on_a_silent_client() -> None:
    async def silent(c: Connection) -> Any:
        return await c.recv()  # says nothing; returns when the server hangs up

    _client, server = run_sides(silent, lambda s: server_handshake(s, None, 0.05))
    assert isinstance(server, asyncio.TimeoutError), server


@pytest.mark.timeout(20)
def test_server_drops_garbage_instead_of_a_hello() -> None:
    async def garbage(c: Connection) -> Any:
        c.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await c.drain()
        return await c.recv()

    _client, server = run_sides(garbage, lambda s: server_handshake(s, None, TIMEOUT))
    assert isinstance(server, RemoteProtocolError), server
