"""Hostile peers, as fault tables: a connected worker that writes where it was not asked to,
strangers that try to make the manager (or a worker's transfer port) buffer a lot before they have
authenticated, strangers that collect password proofs, and strangers that hold file descriptors.

Each row is one fault; after each, the harm must not have happened and the real worker must still
run a task. The hostile side is a raw socket speaking our framing (``core.wire.protocol`` crafts the
frames); the manager and the real worker are the real ones.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import core as vine
from core.manager.links import STREAM_SLACK
from core.wire.protocol import PREFIX, PROTOCOL_VERSION, Frame, FrameDecoder, auth_proof, check_proof, encode_frame, new_nonce
from tests.conftest import ROOT, WorkerProcess, proc_status, run, wait_for_workers, wait_until

MB = 1 << 20
LIMIT_OF_1MB_DISK = 2 * MB + STREAM_SLACK  # what a worker reporting 1 MB of disk may send in one stream


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    return encode_frame(header, payload)


def hello(**over: Any) -> bytes:
    return frame({"type": "hello", "version": PROTOCOL_VERSION, "role": "worker", "nonce": new_nonce(), **over})


class HostileWorker:
    """Joins a manager like a worker (resources, features), is given tasks, then does as a row says."""

    def __init__(self, port: int, name: str, features: tuple[str, ...] = (), password: bytes | None = None,
                 cores: int = 1, disk: int = 1) -> None:
        self.id = f"worker-hostile-{name}"
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.dec = FrameDecoder()
        self.pending: list[Frame] = []
        nonce = new_nonce()
        self.sock.sendall(hello(nonce=nonce))
        welcome = self.recv()
        assert welcome.type == "welcome", welcome.header
        if welcome["auth"]:
            assert password is not None
            self.sock.sendall(frame({"type": "auth", "proof": auth_proof(password, "client", welcome["nonce"])}))
            proof = self.recv()
            assert proof.type == "auth" and check_proof(password, "server", nonce, proof["proof"]), proof.header
        self.sock.sendall(frame({"type": "ready", "resources": {"cores": cores, "memory": 1000, "disk": disk, "gpus": 0},
                                 "cache": {}, "hostname": "hostile", "worker_id": self.id, "features": list(features)}))

    def recv(self) -> Frame:
        while not self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("manager closed the connection")
            self.pending += self.dec.feed(chunk)
        return self.pending.pop(0)

    def until(self, mtype: str) -> Frame:
        while True:
            f = self.recv()
            if f.type == mtype:
                return f

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self._sendall(frame(header, payload))

    def stream(self, name: str, data: bytes, **extra: Any) -> None:
        """A whole file stream, as a worker returns an output."""
        self._sendall(frame({"type": "file_begin", "name": name, "size": len(data), **extra})
                      + frame({"type": "file_chunk", "name": name}, data) + frame({"type": "file_end", "name": name}))

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the manager hung up on us mid-send: what a hostile row expects

    def closed_by_manager(self, timeout: float = 15) -> bool:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def assert_still_works(m: Any) -> None:
    t = run(m, vine.Task("echo still working"), timeout=30)
    assert (t.result, t.exit_code, t.output) == ("success", 0, "still working\n")


# --- 1. a connected worker writes only the outputs it was asked for ---------------------------------


@dataclass
class Scene:
    """One row's world: a task given to the hostile worker, and a task given to nobody."""

    m: Any
    tmp: str
    victim: str  # a path no peer may create
    input_path: str
    input_name: str  # the cache name of the task's input (a user's file)
    task_id: int
    watched_name: str  # the task's watched output
    watched_path: str
    plain_name: str  # the task's other output
    plain_path: str
    other_id: int  # a task not given to this worker
    other_name: str
    other_path: str


@dataclass
class FileAttack:
    name: str
    attack: Callable[[HostileWorker, Scene], None]
    refused: str  # words the manager's log line about the disconnection must hold
    plain_after: bytes | None = None  # what the plain output holds afterwards (None: absent)


def _twice(fw: HostileWorker, s: Scene) -> None:
    fw.stream(s.plain_name, b"first", task=s.task_id)
    fw.stream(s.plain_name, b"second", task=s.task_id)


FILE_ATTACKS = [
    FileAttack("absolute-name", lambda fw, s: fw.stream(s.victim, b"pwned", task=s.task_id), "not an output"),
    FileAttack("dotdot-name", lambda fw, s: fw.stream(
        os.path.relpath(s.victim, os.path.join(s.m.staging_directory, "outputs")), b"pwned", task=s.task_id), "not an output"),
    FileAttack("dotdot-name-as-fetch", lambda fw, s: fw.stream(
        os.path.relpath(s.victim, os.path.join(s.m.staging_directory, "outputs")), b"pwned", request=1), "fetch"),
    FileAttack("input-cache-name", lambda fw, s: fw.stream(s.input_name, b"pwned", task=s.task_id), "not an output"),
    FileAttack("output-of-a-task-it-was-not-given", lambda fw, s: fw.stream(s.other_name, b"pwned", task=s.other_id),
               "not an output"),
    FileAttack("other-output-claimed-as-its-own", lambda fw, s: fw.stream(s.other_name, b"pwned", task=s.task_id),
               "not an output"),
    FileAttack("output-without-task", lambda fw, s: fw.stream(s.plain_name, b"pwned"), "not an output"),
    FileAttack("fetch-never-asked", lambda fw, s: fw.stream(s.plain_name, b"pwned", request=777), "fetch"),
    FileAttack("announced-size-over-its-disk", lambda fw, s: fw.send(
        {"type": "file_begin", "name": s.plain_name, "size": 1 << 50, "task": s.task_id}), "announced"),
    FileAttack("size-not-a-number", lambda fw, s: fw.send(
        {"type": "file_begin", "name": s.plain_name, "size": "5", "task": s.task_id}), "byte count"),
    FileAttack("same-output-twice", _twice, "not an output", plain_after=b"first"),
    FileAttack("watch-offset-2-to-the-40", lambda fw, s: fw.send(
        {"type": "watch", "id": s.task_id, "name": s.watched_name, "offset": 1 << 40}, b"x"), "offset"),
    FileAttack("watch-an-unwatched-output", lambda fw, s: fw.send(
        {"type": "watch", "id": s.task_id, "name": s.plain_name, "offset": 0}, b"pwned"), "not asked to watch"),
    FileAttack("watch-an-input", lambda fw, s: fw.send(
        {"type": "watch", "id": s.task_id, "name": s.input_name, "offset": 0}, b"pwned"), "not asked to watch"),
    FileAttack("watch-a-task-it-does-not-run", lambda fw, s: fw.send(
        {"type": "watch", "id": s.other_id, "name": s.other_name, "offset": 0}, b"pwned"), "not asked to watch"),
    # Reporting 1 MB of disk, it may send 2 MB + STREAM_SLACK (16 MB) in one stream or watched file.
    FileAttack("watch-past-its-disk", lambda fw, s: [fw.send(
        {"type": "watch", "id": s.task_id, "name": s.watched_name, "offset": i * 4 * MB}, b"w" * 4 * MB) for i in range(6)],
        "over the"),
]


def _scene(m: Any, tmp_path: Any, feature: str) -> Scene:
    tmp = str(tmp_path)
    inp = os.path.join(tmp, "precious.txt")
    with open(inp, "w") as fh:
        fh.write("precious\n")
    f_in = m.declare_file(inp)
    watched, plain, other = (os.path.join(tmp, n) for n in ("watched.txt", "plain.txt", "other.txt"))
    f_watched, f_plain, f_other = m.declare_file(watched), m.declare_file(plain), m.declare_file(other)
    t = vine.Task("cat in.txt > plain.txt; echo w > watched.txt")
    t.add_input(f_in, "in.txt")
    t.add_output(f_watched, "watched.txt", watch=True)
    t.add_output(f_plain, "plain.txt")
    t.add_feature(feature)
    nobody = vine.Task("echo o > other.txt")
    nobody.add_output(f_other, "other.txt", watch=True)
    nobody.add_feature("a-feature-no-worker-has")
    return Scene(m, tmp, os.path.join(tmp, "victim.txt"), inp, f_in.cache_name, m.submit(t), f_watched.cache_name, watched,
                 f_plain.cache_name, plain, m.submit(nobody), f_other.cache_name, other)


def _end_tasks(m: Any, *ids: int) -> None:
    for tid in ids:
        m.cancel_by_task_id(tid)
    for tid in ids:
        assert m.wait_for_task_id(tid, 30) is not None, f"task {tid} was not returned after cancelling it"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _biggest_file(root: str) -> int:
    sizes = [os.lstat(os.path.join(d, f)).st_size for d, _dirs, files in os.walk(root) for f in files]
    return max(sizes, default=0)


@pytest.mark.parametrize("row", FILE_ATTACKS, ids=lambda r: r.name)
def test_worker_writes_only_what_it_was_asked_for(row: FileAttack, m, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="core.manager")
    wait_for_workers(m, 1)
    feature = f"hostile-{row.name}"
    s = _scene(m, tmp_path, feature)
    fw = HostileWorker(m.port, row.name, features=(feature,))
    try:
        spec = fw.until("task")["task"]
        assert spec["id"] == s.task_id
        row.attack(fw, s)
        assert fw.closed_by_manager(), "the hostile worker was not disconnected"
    finally:
        fw.close()
    wait_until(lambda: m.stats.workers_connected == 1, 15, "the hostile worker to be removed")
    lines = [r.getMessage() for r in caplog.records if fw.id in r.getMessage()]
    assert any("disconnecting" in line and row.refused in line for line in lines), lines
    assert not os.path.lexists(s.victim)
    with open(s.input_path) as fh:
        assert fh.read() == "precious\n", "the user's input was overwritten"
    assert not os.path.lexists(s.other_path), "an output of a task the worker was not given was written"
    if row.plain_after is None:
        assert not os.path.lexists(s.plain_path)
    else:
        with open(s.plain_path, "rb") as fh:
            assert fh.read() == row.plain_after
    assert _biggest_file(s.tmp) <= LIMIT_OF_1MB_DISK, "a file was grown past the hostile worker's bound"
    assert _biggest_file(m.staging_directory) < MB, "the staging directory kept the hostile bytes"
    _end_tasks(m, s.task_id, s.other_id)
    assert_still_works(m)


def test_honest_returns_are_accepted(m, tmp_path):
    """The rule's other side: its own outputs, watched pieces in order and a fetch it was asked for
    are all written, and setuid/setgid bits in a stream's mode are dropped."""
    wait_for_workers(m, 1)
    s = _scene(m, tmp_path, "honest")
    fw = HostileWorker(m.port, "honest", features=("honest",))
    try:
        fw.until("task")
        fw.send({"type": "watch", "id": s.task_id, "name": s.watched_name, "offset": 0}, b"piece one\n")
        fw.send({"type": "watch", "id": s.task_id, "name": s.watched_name, "offset": 10}, b"piece two\n")
        fw.send({"type": "watch", "id": s.task_id, "name": s.watched_name, "offset": 10}, b"piece 2\n")  # rewritten
        wait_until(lambda: _read(s.watched_path) == b"piece one\npiece 2\n", 10, "the watched pieces to arrive")
        fw.stream(s.plain_name, b"plain bytes", task=s.task_id, mode=0o6755)
        fw.stream(s.watched_name, b"final\n", task=s.task_id)
        fw.send({"type": "complete", "id": s.task_id, "result": 0, "exit_code": 0})
        t = m.wait_for_task_id(s.task_id, 15)
        assert t is not None and t.result == "success"
        with open(s.plain_path, "rb") as fh:
            assert fh.read() == b"plain bytes"
        assert os.stat(s.plain_path).st_mode & 0o7000 == 0, oct(os.stat(s.plain_path).st_mode)
        with open(s.watched_path, "rb") as fh:
            assert fh.read() == b"final\n"
        assert m.stats.workers_connected == 2, "an honest worker was disconnected"
    finally:
        fw.close()
    wait_until(lambda: m.stats.workers_connected == 1, 15, "the worker to leave")
    _end_tasks(m, s.other_id)
    assert_still_works(m)


# --- a manager and a worker with a password, for the strangers' tables --------------------------------

PASSWORD = b"correct horse battery staple"


@dataclass
class Guarded:
    m: Any
    worker: WorkerProcess

    def transfer_addr(self) -> tuple[str, int]:
        addrs = [lk.transfer_addr for lk in list(self.m._links.values()) if lk.transfer_addr]
        assert len(addrs) == 1, addrs
        host, _, port = addrs[0].rpartition(":")
        return host, int(port)

    def target(self, what: str) -> tuple[tuple[str, int], int]:
        """(address, pid of the process serving it) of the manager's port or the worker's transfer port."""
        return (("127.0.0.1", self.m.port), os.getpid()) if what == "manager" else (self.transfer_addr(), self.worker.pid)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[Guarded]:
    base = tmp_path_factory.mktemp("guarded")
    pw = base / "pw"
    pw.write_bytes(PASSWORD + b"\n")
    m = vine.Manager(port=0, run_info_path=str(base / "vine-run-info"))
    m.set_password(PASSWORD.decode())
    m.tune("handshake-timeout", 30)  # far longer than any row may take to be refused
    worker = WorkerProcess(m.port, str(base / "worker"), cores=1, extra=["--password", str(pw)])
    try:
        wait_for_workers(m, 1)
        yield Guarded(m, worker)
    finally:
        m.close()
        worker.reap()


def _recv_all(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the other side sends until it closes; (bytes, closed within ``timeout``)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return got, False
    return got, True


# --- 7. strangers cannot make a port buffer much before the handshake ----------------------------------


@dataclass
class BigFrame:
    name: str
    data: bytes  # what each stranger sends (it then waits, as if more were coming)
    target: str  # "manager" or "transfer port"
    strangers: int = 16


_JUNK = b"\0" * (4 * MB)
BIG_FRAMES = [
    BigFrame("payload-of-64-MiB-announced", PREFIX.pack(20, 64 * MB) + _JUNK, "manager"),
    BigFrame("header-of-1-MiB-announced", PREFIX.pack(MB, 0) + b" " * (MB - 1), "manager", strangers=32),
    BigFrame("big-auth-after-a-good-hello", hello() + PREFIX.pack(20, 64 * MB) + _JUNK, "manager"),
    BigFrame("payload-of-64-MiB-announced", PREFIX.pack(20, 64 * MB) + _JUNK, "transfer port"),
    BigFrame("header-of-1-MiB-announced", PREFIX.pack(MB, 0) + b" " * (MB - 1), "transfer port", strangers=32),
]


def _peak_rss(pid: int) -> int:
    return int(proc_status(pid, "VmHWM").split()[0]) * 1024


def _reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


@pytest.mark.parametrize("row", BIG_FRAMES, ids=lambda r: f"{r.target.replace(' ', '-')}-{r.name}")
def test_strangers_cannot_make_a_port_buffer(row: BigFrame, guarded: Guarded):
    addr, pid = guarded.target(row.target)
    _reset_peak_rss(pid)
    before = _peak_rss(pid)
    socks = [socket.create_connection(addr, timeout=10) for _ in range(row.strangers)]
    try:
        for s in socks:
            try:
                s.sendall(row.data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before we finished: as it should be
        for s in socks:
            _got, closed = _recv_all(s, 10)
            assert closed, "a stranger announcing a big frame was kept (the handshake timeout is 30 s)"
        grown = _peak_rss(pid) - before
        assert grown < 16 * MB, f"the {row.target} grew by {grown / MB:.0f} MB for {row.strangers} strangers"
    finally:
        for s in socks:
            s.close()
    assert_still_works(guarded.m)


# --- 8. no password oracle: the accepting side proves itself only to a peer that has -----------------


@dataclass
class Probe:
    name: str
    after_welcome: Callable[[socket.socket, Frame], None]
    proves: bool = False  # the control row: with the password, the proof does come


def _auth(proof: str) -> Callable[[socket.socket, Frame], None]:
    return lambda s, welcome: s.sendall(frame({"type": "auth", "proof": proof}))


PROBES = [
    Probe("hangs-up-after-welcome", lambda s, w: s.shutdown(socket.SHUT_WR)),
    Probe("wrong-proof", lambda s, w: s.sendall(frame({"type": "auth", "proof": auth_proof(b"guess", "client", w["nonce"])}))),
    Probe("proof-of-garbage", _auth("0" * 64)),
    Probe("says-error", lambda s, w: s.sendall(frame({"type": "error", "reason": "password mismatch"}))),
    Probe("right-password", lambda s, w: s.sendall(frame({"type": "auth", "proof": auth_proof(PASSWORD, "client", w["nonce"])})),
          proves=True),
]


@pytest.mark.parametrize("target", ["manager", "transfer port"])
@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_no_password_proof_for_strangers(probe: Probe, target: str, guarded: Guarded):
    addr, _pid = guarded.target(target)
    chosen = "5" * 32  # a stranger's nonce of its choosing, the same every time: what an offline attack needs
    oracle = auth_proof(PASSWORD, "server", chosen).encode()
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(hello(nonce=chosen, role="worker" if target == "manager" else "peer"))
        dec = FrameDecoder()
        got = b""
        frames: list[Frame] = []
        while not frames:
            chunk = s.recv(65536)
            assert chunk, "closed before the welcome"
            got += chunk
            frames += dec.feed(chunk)
        welcome = frames[0]
        assert welcome.type == "welcome" and welcome["auth"] is True
        probe.after_welcome(s, welcome)
        if probe.proves:
            while len(frames) < 2:
                chunk = s.recv(65536)
                got += chunk
                frames += dec.feed(chunk)
            assert frames[1].type == "auth" and frames[1]["proof"].encode() == oracle
            return
        rest, closed = _recv_all(s, 10)
        got += rest
    assert closed, "the stranger was not hung up on"
    assert oracle not in got, "the port sent an HMAC of its password over the stranger's nonce"
    assert b"proof" not in got


# --- 9. file descriptors: strangers cannot starve the manager, nor flood its log -----------------------

CHILD_MANAGER = r"""
import logging, os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
import core
m = core.Manager(port=0, run_info_path=sys.argv[2])
m.tune("handshake-timeout", float(sys.argv[3]))
print(m.port, flush=True)
hogged = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "run":
        tid = m.submit(core.Task("echo ok"))
        t = m.wait_for_task_id(tid, float(cmd[1]))
        if t is None:
            m.cancel_by_task_id(tid)
            m.wait_for_task_id(tid, 10)
        print("result", t.result if t is not None else "timeout", flush=True)
    elif cmd[0] == "hog":  # the program itself uses up its descriptors
        try:
            while True:
                hogged.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print("hogged", len(hogged), flush=True)
    elif cmd[0] == "release":
        for fd in hogged:
            os.close(fd)
        hogged.clear()
        print("released", flush=True)
    elif cmd[0] == "quit":
        break
m.close()
"""


class ChildManager:
    """A manager in a process of its own, at a low RLIMIT_NOFILE, driven line by line over stdin."""

    def __init__(self, tmp: str, nofile: int, handshake_timeout: float) -> None:
        self.log_path = os.path.join(tmp, "child-manager.stderr")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - the child writes to it until close()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD_MANAGER, str(nofile), os.path.join(tmp, "run-info"),
                                      str(handshake_timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, text=True)
        self.port = int(self._line())

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the child manager ended: {self.stderr()}"
        return line.strip()

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def stderr(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except (AssertionError, BrokenPipeError):
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


@dataclass
class FdFault:
    name: str
    strangers: int
    hog: bool = False  # the program itself has used up its descriptors while the strangers come
    says_hello: bool = False  # each stranger sends a valid hello (no password: the handshake passes), then idles


FD_FAULTS = [
    # 300 idle strangers at ulimit -n 256 (1,021 at 1024 once stopped the manager serving its worker).
    FdFault("idle-strangers-past-the-descriptor-limit", 300),
    # Without a password the handshake proves nothing: until its ready, a connection is a stranger.
    FdFault("strangers-idle-after-a-valid-hello", 300, says_hello=True),
    # Every accept fails with EMFILE for a while: one log line, not one per retry.
    FdFault("accept-fails-for-want-of-descriptors", 20, hog=True),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("row", FD_FAULTS, ids=lambda r: r.name)
def test_strangers_cannot_starve_the_manager(row: FdFault, tmp_path):
    # The handshake timeout is far beyond the test's patience: the strangers must not be waited out.
    child = ChildManager(str(tmp_path), nofile=256, handshake_timeout=120)
    socks: list[socket.socket] = []
    worker: WorkerProcess | None = None
    try:
        if row.hog:
            assert child.ask("hog").startswith("hogged")
        for _ in range(row.strangers):
            socks.append(socket.create_connection(("127.0.0.1", child.port), timeout=10))
            if row.says_hello:  # one at a time, each welcomed before the next comes
                socks[-1].sendall(hello())
                assert socks[-1].recv(65536), "a stranger was not welcomed"
        if row.hog:
            wait_until(lambda: "cannot accept" in child.stderr(), 15, "the manager to fail an accept")
            time.sleep(2.0)  # an observation window: what is tested is log lines per unit of time
            assert child.ask("release") == "released"
        worker = WorkerProcess(child.port, str(tmp_path / "worker"), cores=1)
        assert child.ask("run 20") == "result success", child.stderr()[-3000:]
        failures = [line for line in child.stderr().splitlines() if "cannot accept" in line]
        assert len(failures) <= 1, failures
        assert "Traceback" not in child.stderr()
        backlog = subprocess.run(["ss", "-Hltn", f"sport = :{child.port}"], capture_output=True, text=True, check=True).stdout
        assert backlog.split()[2] == "512", f"listen backlog is not 512: {backlog!r}"
    finally:
        for s in socks:
            s.close()
        if worker is not None:
            worker.reap()
        child.close()


# --- the two helpers the listeners use, on their own ---------------------------------------------------


def test_preauth_gate_evicts_the_longest_waiting():
    import asyncio

    from core.wire.preauth import PreAuthGate

    async def main() -> tuple[list[bool], int, int]:
        gate = PreAuthGate(limit=3)
        tasks = [asyncio.create_task(asyncio.sleep(30)) for _ in range(5)]
        for t in tasks:
            gate.admit(t)
        await asyncio.sleep(0)
        cancelled = [t.cancelled() for t in tasks]
        waiting, evicted = gate.waiting, gate.evicted
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return cancelled, waiting, evicted

    cancelled, waiting, evicted = asyncio.run(main())
    assert cancelled == [True, True, False, False, False]
    assert (waiting, evicted) == (3, 2)


def test_rate_limited_log_says_once_per_interval_with_a_count(caplog):
    from core.wire.preauth import RateLimitedLog

    caplog.set_level(logging.WARNING, logger="test.ratelimit")
    rl = RateLimitedLog(logging.getLogger("test.ratelimit"), interval=3600)
    said = [rl.warning("cannot accept: EMFILE") for _ in range(1000)]
    assert said.count(True) == 1 and said[0]
    rl._last -= 3600  # an interval later
    assert rl.warning("cannot accept: EMFILE")
    lines = [r.getMessage() for r in caplog.records if r.name == "test.ratelimit"]
    assert lines == ["cannot accept: EMFILE", "cannot accept: EMFILE (999 more like it in the last 3600s)"]
