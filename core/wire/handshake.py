"""The opening of every connection as two small pure state machines: messages in, messages out.

No sockets, no clocks: :func:`core.wire.connection.client_handshake` and ``server_handshake`` feed
these the messages they read and send what they return; the unit tests feed them by hand.

::

    connecting side (ClientHandshake)              accepting side (ServerHandshake)
    ─────────────────────────────────              ────────────────────────────────
    start() ──── Hello(version, role, nonce) ────►  AWAIT_HELLO: version checked
                                                    (else Error "protocol version ..." and fail)
    AWAIT_WELCOME ◄── Welcome(version, nonce, auth, tls_bound) ──
      no password on either side: DONE             no password: DONE
      with one:  ─── Auth(proof over its nonce) ──► AWAIT_AUTH: proof checked
                                                    (else Error "password mismatch" and fail)
    AWAIT_PROOF ◄──── Auth(proof over our nonce) ── then proves itself: DONE
      proof checked: DONE (else Error and fail)

The accepting side proves itself only after the connecting side has: anyone may connect and pick
the nonce it sends, so proving first would hand every stranger an HMAC of the password over a value
of its choosing, to attack offline. With TLS, both proofs also cover the channel's ``tls-unique``
value (``binding``), so a relay that terminates TLS cannot pass them on.

Every step returns a :class:`Step`: the messages to send now, whether the handshake is done, and
on failure the error to raise (``AuthenticationError`` for passwords, ``RemoteProtocolError`` for
the rest) once those messages (an ``Error`` saying why, when the other side is owed one) are sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import AuthenticationError, RemoteProtocolError, VineError
from . import messages as M
from .protocol import PROTOCOL_VERSION, auth_proof, check_proof, new_nonce

ClientState = Literal["start", "await_welcome", "await_proof", "done", "failed"]
ServerState = Literal["await_hello", "await_auth", "done", "failed"]


@dataclass(slots=True)
class Step:
    """What one step of a handshake asks of its driver: send these messages; then, if ``error`` is
    set, raise it (the peer has been told why); or, if ``done``, the connection is authenticated."""

    send: list[M.Message] = field(default_factory=list)
    done: bool = False
    error: VineError | None = None


class ClientHandshake:
    """The connecting side (a worker, a peer fetching files, a status client).

    ``binding`` is the TLS channel binding of the connection (``":<hex>"``), ``""`` on TLS without
    one, None on a plain connection; ``peer`` names the other side in error messages.
    """

    def __init__(self, role: str, password: bytes | None, binding: str | None, peer: str,
                 worker_id: str | None = None, nonce: str | None = None) -> None:
        self.role = role
        self.password = password
        self.binding = binding
        self.peer = peer
        self.worker_id = worker_id
        self.nonce = nonce if nonce is not None else new_nonce()
        self.state: ClientState = "start"
        self.welcome: M.Welcome | None = None
        self._bound = ""  # the binding mixed into both proofs, once the welcome has said whether to

    def start(self) -> Step:
        self._expect("start")
        self.state = "await_welcome"
        return Step([M.Hello(PROTOCOL_VERSION, self.role, self.nonce, worker_id=self.worker_id)])

    def receive(self, msg: M.Message | None) -> Step:
        """The next message from the accepting side (None: it closed the connection)."""
        if self.state == "await_welcome":
            return self._on_welcome(msg)
        if self.state == "await_proof":
            return self._on_proof(msg)
        raise RemoteProtocolError(f"handshake with {self.peer}: got {_name(msg)} in state {self.state}")

    def _on_welcome(self, msg: M.Message | None) -> Step:
        if isinstance(msg, M.Error) and msg.tls_required:
            # A TLS-only port answered our plain hello (core.wire.tls.GatedListener): retrying cannot help.
            return self._fail(AuthenticationError(f"{self.peer} refused plain TCP: {msg.reason}"))
        if msg is None:
            return self._fail(RemoteProtocolError("connection closed while waiting for 'welcome'"))
        if isinstance(msg, M.Error):
            return self._fail(RemoteProtocolError(f"peer reported: {msg.reason}"))
        if not isinstance(msg, M.Welcome):
            return self._fail(RemoteProtocolError(f"expected 'welcome', got {msg.TYPE!r}"))
        if msg.version != PROTOCOL_VERSION:
            return self._fail(RemoteProtocolError(f"peer speaks protocol {msg.version}, we speak {PROTOCOL_VERSION}"))
        self.welcome = msg
        if not msg.auth:
            if self.password is not None:
                return self._fail(AuthenticationError(f"{self.peer} does not use a password but we were given one"),
                                  "this side was given a password, but the other side uses none")
            self.state = "done"
            return Step(done=True)
        if self.password is None:
            return self._fail(AuthenticationError(f"{self.peer} requires a password; start with --password FILE"),
                              "password required, but this side was started without one")
        if msg.tls_bound:
            if self.binding is None:
                return self._fail(AuthenticationError(f"{self.peer} binds its password proof to TLS, but our connection to it is plain"),
                                  "the proofs are bound to a TLS channel, but this side's connection is not TLS")
            self._bound = self.binding
        self.state = "await_proof"
        return Step([M.Auth(auth_proof(self.password, "client", msg.nonce + self._bound))])

    def _on_proof(self, msg: M.Message | None) -> Step:
        assert self.password is not None
        mismatch = (f"{self.peer} does not know our password (or uses another one"
                    + (", or a relay in the middle terminates TLS)" if self._bound else ")"))
        if msg is None:
            return self._fail(RemoteProtocolError(f"{self.peer} closed the connection instead of proving the password"))
        if isinstance(msg, M.Error):
            if "password" in msg.reason:
                return self._fail(AuthenticationError(mismatch))  # it refused our proof
            return self._fail(RemoteProtocolError(f"peer reported: {msg.reason}"))
        if not isinstance(msg, M.Auth):
            return self._fail(RemoteProtocolError(f"expected 'auth', got {msg.TYPE!r}"))
        if not check_proof(self.password, "server", self.nonce + self._bound, msg.proof):
            return self._fail(AuthenticationError(mismatch), "password mismatch")
        self.state = "done"
        return Step(done=True)

    def _fail(self, error: VineError, tell: str | None = None) -> Step:
        self.state = "failed"
        return Step([M.Error(tell)] if tell is not None else [], error=error)

    def _expect(self, state: ClientState) -> None:
        if self.state != state:
            raise RemoteProtocolError(f"handshake with {self.peer}: step for {state} in state {self.state}")


class ServerHandshake:
    """The accepting side (the manager's port, a worker's transfer port). See the module docstring.

    ``hello`` holds the connecting side's Hello once it has been read (its role, its worker id).
    """

    def __init__(self, password: bytes | None, binding: str | None, peer: str, nonce: str | None = None) -> None:
        self.password = password
        self.binding = binding or ""
        self.peer = peer
        self.nonce = nonce if nonce is not None else new_nonce()
        self.state: ServerState = "await_hello"
        self.hello: M.Hello | None = None

    def receive(self, msg: M.Message | None) -> Step:
        """The next message from the connecting side (None: it closed the connection)."""
        if self.state == "await_hello":
            return self._on_hello(msg)
        if self.state == "await_auth":
            return self._on_auth(msg)
        raise RemoteProtocolError(f"handshake with {self.peer}: got {_name(msg)} in state {self.state}")

    def refused(self, problem: RemoteProtocolError) -> Step:
        """What the driver does when the peer's next frame could not even be decoded (garbage, a
        mistyped field): before the hello it is a protocol error; in place of the proof, a failure
        to authenticate."""
        if self.state == "await_auth":
            return self._fail(AuthenticationError(
                f"{self.peer} rejected: it did not prove the password ({problem}); start it with --password FILE"))
        return self._fail(problem)

    def _on_hello(self, msg: M.Message | None) -> Step:
        if msg is None:
            return self._fail(RemoteProtocolError("connection closed while waiting for 'hello'"))
        if isinstance(msg, M.Error):
            return self._fail(RemoteProtocolError(f"peer reported: {msg.reason}"))
        if not isinstance(msg, M.Hello):
            return self._fail(RemoteProtocolError(f"expected 'hello', got {msg.TYPE!r}"))
        if msg.version != PROTOCOL_VERSION:
            return self._fail(RemoteProtocolError(f"peer speaks protocol version {msg.version}, we speak {PROTOCOL_VERSION}"),
                              f"protocol version {msg.version} unsupported; this manager speaks {PROTOCOL_VERSION}")
        self.hello = msg
        welcome = M.Welcome(PROTOCOL_VERSION, self.nonce, self.password is not None,
                            tls_bound=self.password is not None and bool(self.binding))
        if self.password is None:
            self.state = "done"
            return Step([welcome], done=True)
        self.state = "await_auth"
        return Step([welcome])

    def _on_auth(self, msg: M.Message | None) -> Step:
        assert self.password is not None and self.hello is not None
        if not isinstance(msg, M.Auth):
            # A peer that hangs up (or reports an error) instead of proving the password failed to authenticate.
            why = ("connection closed while waiting for 'auth'" if msg is None
                   else f"peer reported: {msg.reason}" if isinstance(msg, M.Error) else f"expected 'auth', got {msg.TYPE!r}")
            return self._fail(AuthenticationError(f"{self.peer} rejected: it did not prove the password ({why}); "
                                                  "start it with --password FILE"))
        if not check_proof(self.password, "client", self.nonce + self.binding, msg.proof):
            return self._fail(AuthenticationError(f"{self.peer} rejected: password mismatch; start it with --password FILE"
                                                  + (" (or a relay in the middle terminates TLS)" if self.binding else "")),
                              "password mismatch")
        self.state = "done"
        return Step([M.Auth(auth_proof(self.password, "server", self.hello.nonce + self.binding))], done=True)

    def _fail(self, error: VineError, tell: str | None = None) -> Step:
        self.state = "failed"
        return Step([M.Error(tell)] if tell is not None else [], error=error)


def _name(msg: M.Message | None) -> str:
    return "end of stream" if msg is None else repr(msg.TYPE)
