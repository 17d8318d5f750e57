"""The handshake state machines of core.wire.handshake, fed by hand: every branch, no sockets."""

from __future__ import annotations

import pytest

from core.errors import AuthenticationError, RemoteProtocolError
from core.wire import messages as M
from core.wire.handshake import ClientHandshake, ServerHandshake, Step
from core.wire.protocol import PROTOCOL_VERSION, auth_proof

PW = b"s3cret"
CN, SN = "c" * 32, "5" * 32  # the two sides' nonces, fixed so proofs can be computed here
BINDING = ":" + "ab" * 16


def client(password: bytes | None = PW, binding: str | None = None) -> ClientHandshake:
    c = ClientHandshake("worker", password, binding, "peer:1", worker_id="w-1", nonce=CN)
    step = c.start()
    assert step.send == [M.Hello(PROTOCOL_VERSION, "worker", CN, worker_id="w-1")] and not step.done
    return c


def server(password: bytes | None = PW, binding: str | None = None) -> ServerHandshake:
    return ServerHandshake(password, binding, "peer:2", nonce=SN)


def welcome(auth: bool = True, tls_bound: bool = False, version: int = PROTOCOL_VERSION) -> M.Welcome:
    return M.Welcome(version, SN, auth, tls_bound=tls_bound)


def failed(step: Step, kind: type[Exception], text: str, told: str | None = None) -> None:
    """The step fails with ``kind`` mentioning ``text``, and tells the peer ``told`` (or nothing)."""
    assert isinstance(step.error, kind), step.error
    assert text in str(step.error), step.error
    assert not step.done
    assert step.send == ([M.Error(told)] if told is not None else [])


# --- the connecting side ----------------------------------------------------------------------------


def test_client_without_password_is_done_at_the_welcome() -> None:
    c = client(None)
    step = c.receive(welcome(auth=False))
    assert step == Step(done=True) and c.state == "done" and c.welcome == welcome(auth=False)


def test_client_proves_itself_then_checks_the_server() -> None:
    c = client()
    step = c.receive(welcome())
    assert step.send == [M.Auth(auth_proof(PW, "client", SN))] and not step.done and c.state == "await_proof"
    assert c.receive(M.Auth(auth_proof(PW, "server", CN))) == Step(done=True)


def test_client_binds_both_proofs_to_tls_when_the_server_says_so() -> None:
    c = client(binding=BINDING)
    assert c.receive(welcome(tls_bound=True)).send == [M.Auth(auth_proof(PW, "client", SN + BINDING))]
    failed(c.receive(M.Auth(auth_proof(PW, "server", CN))), AuthenticationError, "relay in the middle", "password mismatch")


def test_client_ignores_its_tls_binding_when_the_server_does_not_bind() -> None:
    c = client(binding=BINDING)
    assert c.receive(welcome()).send == [M.Auth(auth_proof(PW, "client", SN))]
    assert c.receive(M.Auth(auth_proof(PW, "server", CN))).done


def test_client_on_plain_tcp_refuses_a_tls_bound_server() -> None:
    failed(client().receive(welcome(tls_bound=True)), AuthenticationError, "our connection to it is plain",
           "the proofs are bound to a TLS channel, but this side's connection is not TLS")


@pytest.mark.parametrize("proof", [auth_proof(b"guess", "server", CN), auth_proof(PW, "client", CN), auth_proof(PW, "server", SN)])
def test_client_refuses_a_wrong_server_proof(proof: str) -> None:
    c = client()
    c.receive(welcome())
    failed(c.receive(M.Auth(proof)), AuthenticationError, "does not know our password", "password mismatch")
    assert c.state == "failed"


def test_client_without_password_at_a_server_with_one() -> None:
    failed(client(None).receive(welcome()), AuthenticationError, "requires a password",
           "password required, but this side was started without one")


def test_client_with_password_at_a_server_without() -> None:
    failed(client().receive(welcome(auth=False)), AuthenticationError, "does not use a password",
           "this side was given a password, but the other side uses none")


def test_client_version_mismatch() -> None:
    failed(client().receive(welcome(version=PROTOCOL_VERSION + 1)), RemoteProtocolError, f"peer speaks protocol {PROTOCOL_VERSION + 1}")


@pytest.mark.parametrize("msg, kind, text", [
    (None, RemoteProtocolError, "closed while waiting for 'welcome'"),
    (M.Error("protocol version 9 unsupported"), RemoteProtocolError, "peer reported: protocol version 9"),
    (M.Error("this manager port requires TLS", tls_required=True), AuthenticationError, "refused plain TCP"),
    (M.Keepalive(), RemoteProtocolError, "expected 'welcome', got 'keepalive'"),
])
def test_client_at_the_welcome_gets_something_else(msg: M.Message | None, kind: type[Exception], text: str) -> None:
    failed(client().receive(msg), kind, text)


@pytest.mark.parametrize("msg, kind, text", [
    (None, RemoteProtocolError, "closed the connection instead of proving the password"),
    (M.Error("password mismatch"), AuthenticationError, "does not know our password"),
    (M.Error("going away"), RemoteProtocolError, "peer reported: going away"),
    (M.Welcome(PROTOCOL_VERSION, SN, True), RemoteProtocolError, "expected 'auth', got 'welcome'"),
])
def test_client_awaiting_the_proof_gets_something_else(msg: M.Message | None, kind: type[Exception], text: str) -> None:
    c = client()
    c.receive(welcome())
    failed(c.receive(msg), kind, text)


def test_client_steps_out_of_order_are_refused() -> None:
    c = client(None)
    with pytest.raises(RemoteProtocolError):
        c.start()
    c.receive(welcome(auth=False))
    with pytest.raises(RemoteProtocolError, match="in state done"):
        c.receive(M.Keepalive())


# --- the accepting side --------------------------------------------------------------------------------


def hello(version: int = PROTOCOL_VERSION) -> M.Hello:
    return M.Hello(version, "worker", CN)


def test_server_without_password_welcomes_and_is_done() -> None:
    s = server(None, binding=BINDING)
    step = s.receive(hello())
    assert step == Step([M.Welcome(PROTOCOL_VERSION, SN, False)], done=True) and s.hello == hello()


def test_server_with_password_proves_nothing_before_the_client_has() -> None:
    s = server()
    step = s.receive(hello())
    assert step.send == [M.Welcome(PROTOCOL_VERSION, SN, True)] and not step.done and s.state == "await_auth"
    assert all(not isinstance(m, M.Auth) for m in step.send)


def test_server_proves_itself_over_the_clients_nonce_once_checked() -> None:
    s = server()
    s.receive(hello())
    assert s.receive(M.Auth(auth_proof(PW, "client", SN))) == Step([M.Auth(auth_proof(PW, "server", CN))], done=True)


def test_server_binds_to_tls_only_with_a_password() -> None:
    s = server(binding=BINDING)
    assert s.receive(hello()).send == [M.Welcome(PROTOCOL_VERSION, SN, True, tls_bound=True)]
    assert s.receive(M.Auth(auth_proof(PW, "client", SN + BINDING))).send == [M.Auth(auth_proof(PW, "server", CN + BINDING))]


def test_server_bound_to_tls_refuses_an_unbound_proof_and_names_the_relay() -> None:
    s = server(binding=BINDING)
    s.receive(hello())
    failed(s.receive(M.Auth(auth_proof(PW, "client", SN))), AuthenticationError, "relay in the middle", "password mismatch")


@pytest.mark.parametrize("proof", [auth_proof(b"guess", "client", SN), auth_proof(PW, "server", SN), auth_proof(PW, "client", CN), "", "0" * 64])
def test_server_refuses_a_wrong_proof(proof: str) -> None:
    s = server()
    s.receive(hello())
    failed(s.receive(M.Auth(proof)), AuthenticationError, "password mismatch; start it with --password FILE", "password mismatch")


def test_server_version_mismatch_tells_the_client() -> None:
    failed(server().receive(hello(PROTOCOL_VERSION + 41)), RemoteProtocolError, f"protocol version {PROTOCOL_VERSION + 41}",
           f"protocol version {PROTOCOL_VERSION + 41} unsupported; this manager speaks {PROTOCOL_VERSION}")


@pytest.mark.parametrize("msg, text", [
    (None, "closed while waiting for 'hello'"),
    (M.Error("bye"), "peer reported: bye"),
    (M.Keepalive(), "expected 'hello', got 'keepalive'"),
])
def test_server_at_the_hello_gets_something_else(msg: M.Message | None, text: str) -> None:
    failed(server().receive(msg), RemoteProtocolError, text)


@pytest.mark.parametrize("msg, text", [
    (None, "closed while waiting for 'auth'"),
    (M.Error("password mismatch"), "peer reported: password mismatch"),
    (M.Ready({}, {}, "h"), "expected 'auth', got 'ready'"),
])
def test_server_awaiting_the_proof_gets_something_else(msg: M.Message | None, text: str) -> None:
    s = server()
    s.receive(hello())
    failed(s.receive(msg), AuthenticationError, text)


def test_garbage_is_a_protocol_error_before_the_hello_and_no_proof_after() -> None:
    garbage = RemoteProtocolError("frame header is not UTF-8 JSON")
    failed(server().refused(garbage), RemoteProtocolError, "not UTF-8 JSON")
    s = server()
    s.receive(hello())
    failed(s.refused(garbage), AuthenticationError, "did not prove the password (frame header is not UTF-8 JSON)")


def test_server_steps_after_the_end_are_refused() -> None:
    s = server(None)
    s.receive(hello())
    with pytest.raises(RemoteProtocolError, match="in state done"):
        s.receive(hello())


# --- both machines, wired to each other ---------------------------------------------------------------


@pytest.mark.parametrize("client_pw, server_pw, binding, ok", [
    (None, None, None, True), (PW, PW, None, True), (PW, PW, BINDING, True),
    (PW, b"other", None, False), (None, PW, None, False), (PW, None, None, False),
])
def test_the_two_machines_agree(client_pw: bytes | None, server_pw: bytes | None, binding: str | None, ok: bool) -> None:
    c = ClientHandshake("peer", client_pw, binding, "server")
    s = ServerHandshake(server_pw, binding, "client")
    to_server, to_client = list(c.start().send), []
    errors = []
    for _ in range(4):
        for msg in to_server:
            if s.state in ("done", "failed"):
                break  # a finished server reads what follows as its link's first frames, not here
            step = s.receive(msg)
            to_client += step.send
            errors += [step.error] if step.error else []
        to_server = []
        for msg in to_client:
            if c.state in ("done", "failed"):
                break
            step = c.receive(msg)
            to_server += step.send
            errors += [step.error] if step.error else []
        to_client = []
        if c.state in ("done", "failed") and s.state in ("done", "failed") and not to_server:
            break
    assert (c.state == "done" and s.state == "done") is ok, (c.state, s.state, errors)
    assert bool(errors) is not ok
    if not ok:
        assert any(isinstance(e, AuthenticationError) for e in errors)
