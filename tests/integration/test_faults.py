"""Faults, as tables run by one helper each: workers that die or hang mid-task, peers that send
garbage, impostor workers that vanish mid-protocol, and password mismatches.

After every fault the manager must still run a real task to completion.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import core as vine
from core.wire.protocol import PREFIX, PROTOCOL_VERSION, FrameDecoder, auth_proof, encode_frame, new_nonce
from tests.conftest import drain, run, wait_for_workers, wait_until
from tests.integration.conftest import records


def assert_still_works(m, start_worker=None) -> None:
    """A fresh task runs to success (starting a worker if none is connected)."""
    if start_worker is not None and m.stats.workers_connected == 0:
        start_worker(m, cores=1)
    t = run(m, vine.Task("echo still working"))
    assert (t.result, t.exit_code, t.output) == ("success", 0, "still working\n")


def first_attempt_hangs(tmp_path) -> tuple[str, object]:
    """A command whose first run records its pid and hangs; later runs succeed at once."""
    attempts = tmp_path / "attempts"
    cmd = f"echo $$ >> {attempts}; if [ $(wc -l < {attempts}) -eq 1 ]; then exec sleep 60; fi; echo recovered"
    return cmd, attempts


# --- workers that die or hang mid-task ---------------------------------------------------------------


@dataclass
class WorkerFault:
    name: str
    inflict: Callable[[object], None]  # receives the WorkerProcess
    tunes: tuple[tuple[str, float], ...] = ()


WORKER_FAULTS = [
    WorkerFault("sigkill", lambda w: w.kill(signal.SIGKILL)),
    WorkerFault("sigterm", lambda w: w.kill(signal.SIGTERM)),
    # A stopped worker keeps its socket open: only the keepalive notices it.
    WorkerFault("sigstop", lambda w: w.kill(signal.SIGSTOP), (("keepalive-interval", 1), ("keepalive-timeout", 2))),
]


@pytest.mark.parametrize("fault", WORKER_FAULTS, ids=lambda f: f.name)
def test_task_survives_worker_fault(fault, manager, start_worker, tmp_path, orphans):
    for name, value in fault.tunes:
        manager.tune(name, value)
    first = start_worker(manager, cores=1)
    cmd, attempts = first_attempt_hangs(tmp_path)
    tid = manager.submit(vine.Task(cmd, cores=1))
    wait_until(attempts.exists, 30, "the first attempt to start")
    orphans.append(int(attempts.read_text().split()[0]))
    fault.inflict(first)
    second = start_worker(manager, cores=1)
    t = manager.wait_for_task_id(tid, 60)
    assert t is not None, "the task was lost with its worker"
    assert (t.result, t.exit_code, t.output) == ("success", 0, "recovered\n")
    assert len(attempts.read_text().split()) == 2
    wait_until(lambda: manager.stats.workers_connected == 1, 30, "the faulty worker to be removed")
    assert manager.stats.workers_lost >= 1
    assert second.proc.poll() is None
    assert_still_works(manager)


def test_hung_worker_is_cut_off_mid_transfer(manager, start_worker, tmp_path):
    """A stopped worker with unsent input bytes queued for it is still disconnected on time.

    Closing (rather than aborting) that connection would wait forever to flush to a peer that no
    longer reads, leaving the link behind with no DISCONNECTION record.
    """
    manager.tune("keepalive-interval", 1)
    manager.tune("keepalive-timeout", 2)
    hung = start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    hung.kill(signal.SIGSTOP)
    src = tmp_path / "big.dat"
    src.write_bytes(b"\0" * 30_000_000)  # far more than the socket buffers hold
    t = vine.Task("wc -c < big.dat")
    t.add_input(manager.declare_file(str(src)), "big.dat")
    tid = manager.submit(t)
    wait_until(lambda: manager.stats.workers_connected == 0, 30, "the hung worker to be removed")
    start_worker(manager, cores=1)
    t = manager.wait_for_task_id(tid, 60)
    assert (t.result, t.output.strip()) == ("success", "30000000")
    wait_until(
        lambda: [r for r in records(manager, "WORKER") if r[2] == "DISCONNECTION"] != [],
        10,
        "the hung worker's DISCONNECTION record",
    )


def test_task_killing_its_workers_ends_with_max_retries(manager, start_worker):
    """Worker loss is retried, but not forever (REFERENCE §8.6): the attempt bound ends it."""
    manager.tune("max-task-attempts", 2)
    workers = [start_worker(manager, cores=1) for _ in range(2)]
    wait_for_workers(manager, 2)
    t = run(manager, vine.Task("kill -9 $PPID; sleep 30"), timeout=60)
    assert (t.result, t.exit_code) == ("max retries", -1)
    for w in workers:
        assert w.proc.wait(10) == -signal.SIGKILL
    assert_still_works(manager, start_worker)


def test_killed_task_process_reports_signal(manager, start_worker, tmp_path):
    start_worker(manager, cores=1)
    pidfile = tmp_path / "pid"
    tid = manager.submit(vine.Task(f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 30"))
    wait_until(pidfile.exists, 30, "the task to start")
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    t = manager.wait_for_task_id(tid, 30)
    assert (t.result, t.exit_code) == ("signal", signal.SIGTERM)
    assert_still_works(manager)


# --- garbage on the manager's port ---------------------------------------------------------------


def frame(header: dict, payload: bytes = b"") -> bytes:
    return encode_frame(header, payload)


def hello(**over) -> bytes:
    return frame({"type": "hello", "version": PROTOCOL_VERSION, "role": "worker", "nonce": new_nonce(), **over})


def raw_header(obj: bytes) -> bytes:
    return PREFIX.pack(len(obj), 0) + obj


def ready(**over) -> bytes:
    h = {
        "type": "ready",
        "resources": {"cores": 1, "memory": 1000, "disk": 2000, "gpus": 0},
        "cache": {},
        "hostname": "impostor",
        "worker_id": "worker-impostor",
    }
    h.update(over)
    return frame(h)


@dataclass
class Garbage:
    name: str
    data: bytes
    close_after_send: bool = False  # half-close our side (EOF) after sending
    expect_reply: str | None = None  # a frame type the manager should answer with before closing


GARBAGE = [
    Garbage("random-bytes", bytes(range(256)) * 4 + os.urandom(4096)),
    Garbage("huge-header-length", PREFIX.pack(0xFFFFFFFF, 0)),
    Garbage("huge-payload-length", PREFIX.pack(16, 1 << 62) + b"{}" * 8),
    Garbage("zero-header-length", PREFIX.pack(0, 0)),
    Garbage("header-not-json", raw_header(b"\xff\xfe not json at all")),
    Garbage("header-not-object", raw_header(b"[1, 2, 3]")),
    Garbage("unknown-message-type", raw_header(b'{"type": "bogus"}')),
    Garbage("hello-missing-fields", raw_header(b'{"type": "hello"}')),
    Garbage("wrong-protocol-version", hello(version=PROTOCOL_VERSION + 99), expect_reply="error"),
    Garbage("wrong-first-message", frame({"type": "keepalive"})),
    Garbage("unknown-role", hello(role="emperor"), expect_reply="welcome"),
    Garbage("truncated-frame-then-eof", hello()[:7], close_after_send=True),
    Garbage("hello-then-eof", hello(), close_after_send=True, expect_reply="welcome"),
    Garbage("ready-resources-not-a-dict", hello() + ready(resources="lots"), expect_reply="welcome"),
    Garbage("ready-bad-resource-value", hello() + ready(resources={"cores": "many"}), expect_reply="welcome"),
    Garbage("ready-cache-not-a-dict", hello() + ready(cache=[1, 2, 3]), expect_reply="welcome"),
    Garbage("ready-features-not-a-list", hello() + ready(features=5), expect_reply="welcome"),
    # Arrives in one read: the decoder rejects the whole chunk, so no welcome is owed.
    Garbage("ready-then-garbage", hello() + ready() + os.urandom(64)),
    Garbage("status-unknown-request", hello(role="status") + frame({"type": "status", "what": "secrets"}), expect_reply="welcome"),
    Garbage("silent", b""),  # connects and says nothing: the handshake timeout closes it
]


def poke(port: int, g: Garbage, timeout: float = 15) -> list[str]:
    """Send ``g`` and read until the manager closes the connection; returns the frame types it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if g.data:
            s.sendall(g.data)
        if g.close_after_send:
            s.shutdown(socket.SHUT_WR)
        dec = FrameDecoder()
        types: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"{g.name}: the manager kept the connection open for {timeout}s") from None
            if not chunk:
                break
            types += [f.type for f in dec.feed(chunk)]
        return types


@pytest.mark.parametrize("g", GARBAGE, ids=lambda g: g.name)
def test_garbage_client_is_dropped(g, m, caplog):
    """One manager and worker take the whole table: the worker must outlive every bad client."""
    caplog.set_level(logging.WARNING)
    m.tune("handshake-timeout", 1)
    wait_for_workers(m, 1)
    types = poke(m.port, g)
    if g.expect_reply:
        assert types[:1] == [g.expect_reply], types
    assert_still_works(m)
    assert m.stats.workers_connected == 1
    assert m.stats.workers_joined == 1  # the same worker all along; no impostor was counted
    # Nothing escaped as an unhandled exception in the I/O thread.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_many_garbage_clients_at_once(manager, start_worker):
    manager.tune("handshake-timeout", 1)
    socks = [socket.create_connection(("127.0.0.1", manager.port), timeout=10) for _ in range(20)]
    try:
        for i, s in enumerate(socks):
            s.sendall(os.urandom(32) if i % 2 else PREFIX.pack(100, 0))  # half junk, half stalled frames
        start_worker(manager, cores=1)
        assert_still_works(manager)
        for s in socks:
            s.settimeout(10)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()


# --- impostor workers that vanish or misbehave mid-task ------------------------------------------


class FakeWorker:
    """Speaks just enough of the worker protocol to be given a task, then misbehaves."""

    def __init__(self, port: int, password: bytes | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.dec = FrameDecoder()
        self.pending: list = []
        nonce = new_nonce()
        self.sock.sendall(hello(nonce=nonce))
        welcome = self.recv()
        assert welcome.type == "welcome"
        if welcome["auth"]:
            assert password is not None
            self.sock.sendall(frame({"type": "auth", "proof": auth_proof(password, "client", welcome["nonce"])}))
        self.sock.sendall(ready(worker_id=f"worker-fake-{id(self):x}"))

    def recv(self):
        while not self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("manager closed the connection")
            self.pending += self.dec.feed(chunk)
        return self.pending.pop(0)

    def until(self, mtype: str):
        while True:
            f = self.recv()
            if f.type == mtype:
                return f

    def closed_by_manager(self, timeout: float = 15) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def vanish(fw: FakeWorker, task: dict) -> None:
    fw.close()


def corrupt_frame(fw: FakeWorker, task: dict) -> None:
    fw.sock.sendall(PREFIX.pack(50, 0) + b"x" * 50)
    assert fw.closed_by_manager()


def chunk_without_begin(fw: FakeWorker, task: dict) -> None:
    fw.sock.sendall(frame({"type": "file_chunk", "name": "nothing"}, b"data"))
    assert fw.closed_by_manager()


def truncated_output(fw: FakeWorker, task: dict) -> None:
    # Starts returning the task's output file, then dies in the middle of the stream.
    name = task["outputs"][0]["name"]
    fw.sock.sendall(
        frame({"type": "file_begin", "name": name, "size": 1000, "task": task["id"]})
        + frame({"type": "file_chunk", "name": name}, b"z" * 10)
    )
    fw.close()


def oversized_chunk(fw: FakeWorker, task: dict) -> None:
    name = task["outputs"][0]["name"]
    fw.sock.sendall(
        frame({"type": "file_begin", "name": name, "size": 4, "task": task["id"]})
        + frame({"type": "file_chunk", "name": name}, b"way more than four bytes")
    )
    assert fw.closed_by_manager()


def complete_for_unknown_task(fw: FakeWorker, task: dict) -> None:
    # Reports about a task it was never given (ignored), then vanishes without finishing its own.
    fw.sock.sendall(frame({"type": "complete", "id": task["id"] + 1000, "result": 0, "exit_code": 0}))
    fw.close()


IMPOSTOR_FAULTS = [vanish, corrupt_frame, chunk_without_begin, truncated_output, oversized_chunk, complete_for_unknown_task]


@pytest.mark.parametrize("misbehave", IMPOSTOR_FAULTS, ids=lambda f: f.__name__)
def test_task_moves_off_misbehaving_worker(misbehave, manager, start_worker, tmp_path):
    fw = FakeWorker(manager.port)
    try:
        wait_for_workers(manager, 1)
        out = tmp_path / "out.txt"
        src = tmp_path / "in.txt"
        src.write_text("payload\n")
        t = vine.Task("cat in.txt > out.txt; echo done")
        t.add_input(manager.declare_file(str(src)), "in.txt")
        t.add_output(manager.declare_file(str(out)), "out.txt")
        tid = manager.submit(t)
        spec = fw.until("task")["task"]
        assert spec["id"] == tid
        misbehave(fw, spec)
        wait_until(lambda: manager.stats.workers_connected == 0, 15, "the impostor to be dropped")
        start_worker(manager, cores=1)
        t = manager.wait_for_task_id(tid, 30)
        assert (t.result, t.exit_code, t.output) == ("success", 0, "done\n")
        assert out.read_text() == "payload\n"
    finally:
        fw.close()
    assert_still_works(manager)


# --- passwords ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "manager_pw, worker_pw",
    [("a", "b"), ("a", None), (None, "b")],
    ids=["mismatch", "worker-without-password", "manager-without-password"],
)
def test_password_mismatch_rejects_worker(manager_pw, worker_pw, manager, start_worker, tmp_path):
    if manager_pw is not None:
        manager.set_password(manager_pw)
    extra = []
    if worker_pw is not None:
        pwfile = tmp_path / "pw.txt"
        pwfile.write_text(worker_pw + "\n")
        extra = ["--password", str(pwfile)]
    bad = start_worker(manager, cores=1, extra=extra)
    assert bad.proc.wait(30) == 1
    assert b"password" in bad.proc.stderr.read()
    assert manager.stats.workers_connected == 0
    # A worker holding the manager's password (or none, if it has none) works.
    good_extra = []
    if manager_pw is not None:
        good = tmp_path / "good.txt"
        good.write_text(manager_pw)
        good_extra = ["--password", str(good)]
    start_worker(manager, cores=1, extra=good_extra)
    assert_still_works(manager)


def test_password_file_on_manager(manager, start_worker, tmp_path):
    pw = tmp_path / "secret"
    pw.write_text("s3cret\n")
    manager.set_password_file(str(pw))
    start_worker(manager, cores=1, extra=["--password", str(pw)])
    assert_still_works(manager)


def test_wrong_proof_is_rejected_with_reason(manager, start_worker, caplog):
    caplog.set_level(logging.WARNING, logger="core.manager")
    manager.set_password("right")
    with socket.create_connection(("127.0.0.1", manager.port), timeout=10) as s:
        s.sendall(hello())
        dec = FrameDecoder()
        frames: list = []
        s.sendall(frame({"type": "auth", "proof": "0" * 64}))
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            frames += dec.feed(chunk)
    assert [f.type for f in frames] == ["welcome", "error"]
    assert "password" in frames[1]["reason"]
    wait_until(lambda: any("password" in r.getMessage() for r in caplog.records), 10, "the rejection to be logged")
    assert manager.stats.workers_connected == 0


def test_impostor_cannot_steal_a_worker_id(manager, start_worker):
    """A second connection claiming a connected worker's id must not evict or corrupt the real one."""
    start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    real_id = manager.status("workers")[0]["id"]
    with socket.create_connection(("127.0.0.1", manager.port), timeout=10) as s:
        s.sendall(hello() + ready(worker_id=real_id))
        s.settimeout(2)
        try:
            s.recv(65536)
        except TimeoutError:
            pass
    assert_still_works(manager)
    drain(manager, 5)
    assert [w["id"] for w in manager.status("workers")] == [real_id]


# --- losing the only copy of a temp ---------------------------------------------------------------


@pytest.mark.parametrize("immediate", [0, 1], ids=["on-demand", "immediate"])
def test_lost_temp_is_made_again(immediate, manager, start_worker, tmp_path):
    """Kill the worker holding the only replica of a temp: its producer runs again (REFERENCE §3.7)."""
    manager.tune("immediate-recovery", immediate)
    runs = tmp_path / "producer-runs"
    holder = start_worker(manager, cores=1)
    temp = manager.declare_temp()
    producer = vine.Task(f"echo run >> {runs}; echo made > o")
    producer.add_output(temp, "o")
    assert run(manager, producer).result == "success"
    holder.kill(signal.SIGKILL)
    wait_until(lambda: manager.stats.workers_connected == 0, 30, "the holder to be noticed gone")
    start_worker(manager, cores=1)
    if immediate:
        # Nobody asked for the temp yet, but it is re-made as soon as a worker can run its producer.
        wait_until(lambda: runs.exists() and len(runs.read_text().split()) == 2, 30, "the producer to run again")
    consumer = vine.Task("cat i")
    consumer.add_input(temp, "i")
    t = run(manager, consumer)
    assert (t.result, t.output) == ("success", "made\n")
    assert len(runs.read_text().split()) == 2  # exactly one re-run, hidden from wait()
    assert manager.stats.tasks_recovery >= 1
    assert manager.wait(0) is None and manager.empty()


def test_fetching_a_lost_temp_fails_clearly(manager, start_worker):
    from core.errors import TransferError

    holder = start_worker(manager, cores=1)
    temp = manager.declare_temp()
    t = vine.Task("echo v > o")
    t.add_output(temp, "o")
    assert run(manager, t).result == "success"
    holder.kill(signal.SIGKILL)
    wait_until(lambda: manager.stats.workers_connected == 0, 30, "the holder to be noticed gone")
    with pytest.raises(TransferError):
        manager.fetch_file(temp, timeout=10)
