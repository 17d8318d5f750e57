"""Hostile peers, as fault tables: a connected worker that writes where it was not asked to,
strangers that try to make the manager (or a worker's transfer port) buffer a lot before they have
authenticated, strangers that collect password proofs, and strangers that hold file descriptors.

Each row is one fault; after each, the harm must not have happened and the real worker must still
run a task. The hostile side is a raw socket speaking our framing (``core.protocol`` crafts the
frames); the manager and the real worker are the real ones.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import core as vine
from core.links import STREAM_SLACK
from core.protocol import PROTOCOL_VERSION, Frame, FrameDecoder, auth_proof, check_proof, encode_frame, new_nonce
from tests.conftest import run, wait_for_workers, wait_until

MB = 1 << 20
LIMIT_OF_1MB_DISK = 2 * MB + STREAM_SLACK  # what a worker reporting 1 MB of disk may send in one stream


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    return encode_frame(header, payload)


def hello(**over: Any) -> bytes:
    return frame({"type": "hello", "version": PROTOCOL_VERSION, "role": "worker", "nonce": new_nonce(), **over})


class HostileWorker:
    """Joins a manager like a worker (resources, features), is given tasks, then does as a row says."""

    def __init__(self, port: int, name: str, features: tuple[str, ...] = (), password: bytes | None = None) -> None:
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
        self.sock.sendall(frame({"type": "ready", "resources": {"cores": 1, "memory": 1000, "disk": 1, "gpus": 0},
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
