"""Asking a manager for its status over its own port: what ``vine_status`` and the factory use.

A status client connects like a worker does (same handshake, password proof and TLS), sends one
``status`` request and reads the reply, which comes in pages when it is long.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from typing import Any

from ..errors import RemoteProtocolError
from . import messages as M
from .connection import Connection, client_handshake, open_connection

WHAT = {"manager", "workers", "tasks"}


def client_ssl_context() -> ssl_module.SSLContext:
    """TLS for talking to a manager with ``ssl=``; like TaskVine, the certificate is not verified."""
    ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl_module.CERT_NONE
    return ctx


def read_password(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read().strip()


async def _reply(conn: Connection, timeout: float) -> M.StatusReply:
    frame = await conn.expect("status_reply", timeout)
    reply = frame.message
    assert isinstance(reply, M.StatusReply)  # expect() checked the type
    return reply


async def query_status_async(host: str, port: int, what: str = "manager", password: bytes | None = None,
                             use_ssl: bool = False, timeout: float = 10) -> Any:
    """Ask the manager at ``host:port`` for ``what`` (``manager``, ``workers`` or ``tasks``)."""
    if what not in WHAT:
        raise ValueError(f"unknown status request {what!r}; use one of {sorted(WHAT)}")
    conn = await open_connection(host, port, ssl=client_ssl_context() if use_ssl else None, timeout=timeout)
    try:
        await client_handshake(conn, "status", password, timeout)
        conn.send(M.Status(what))
        await conn.drain()
        reply = await _reply(conn, timeout)
        if not reply.more:
            return reply.data
        # A list too big for one frame (tens of thousands of tasks) comes in pages, the last without "more".
        if not isinstance(reply.data, list):
            raise RemoteProtocolError(f"status reply page is a {type(reply.data).__name__}, not a list of rows")
        rows = list(reply.data)
        while reply.more:
            reply = await _reply(conn, timeout)
            if not isinstance(reply.data, list):
                raise RemoteProtocolError(f"status reply page is a {type(reply.data).__name__}, not a list of rows")
            rows.extend(reply.data)
        return rows
    finally:
        await conn.aclose()  # before asyncio.run ends: a TLS close would outlive the loop


def query_status(host: str, port: int, what: str = "manager", password: bytes | None = None,
                 use_ssl: bool = False, timeout: float = 10) -> Any:
    """Blocking :func:`query_status_async`. Raises OSError, TimeoutError or a ``VineError`` on failure."""
    return asyncio.run(asyncio.wait_for(query_status_async(host, port, what, password, use_ssl, timeout), timeout + 1))
