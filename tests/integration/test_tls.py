"""TLS everywhere it is asked for: manager port, peer transfers, catalog discovery, and every refusal.

The wire test records every TCP segment on the loopback interface with a raw AF_PACKET socket
(root needed), so it checks the bytes that really crossed between the two workers, not a flag in
our own objects; a plain-TCP run of the same transfer is the control that shows the capture sees
the content when it is not encrypted. The relay tests put a TLS-terminating man in the middle
(its own self-signed certificate on each side): certificates are not verified, so TLS alone does
not stop it, but the password proofs are bound to the TLS channel and must fail through it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import core as vine
from core.deploy import catalog
from core.errors import AuthenticationError, RemoteProtocolError
from core.tools.status import query_status
from core.wire.connection import client_handshake, open_connection
from core.wire.messages import Get
from core.wire.tls import client_context, self_signed_server_context
from tests.conftest import ROOT, WorkerProcess, drain, wait_for_workers, wait_until

ETH_P_ALL = 0x0003
FILE_BYTES = 400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_log(w: WorkerProcess) -> str:
    try:
        with open(w.log_file, errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


class LoopbackCapture:
    """Every TCP payload on ``lo`` to or from ``ports``, as ``(src_port, dst_port, bytes)`` in arrival order."""

    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.segments: list[tuple[int, int, bytes]] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: no drops while the test is busy
        _attach_port_filter(self._sock, sorted(ports))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, name="test-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Once stopped, read what is already queued for a moment more (other programs' loopback
        # traffic may never leave the socket idle, so "until a read times out" could last forever).
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            if deadline is None and self._stop.is_set():
                deadline = time.monotonic() + 0.3
            try:
                data, addr = self._sock.recvfrom(1 << 17)
            except socket.timeout:
                if self._stop.is_set():
                    return  # stopped, and nothing left in the socket's queue
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows each packet twice: keep the copy that was received
            self._record(data)

    def _record(self, frame: bytes) -> None:
        if frame[12:14] != b"\x08\x00":
            return  # not IPv4
        ip = frame[14:]
        if ip[9] != socket.IPPROTO_TCP:
            return
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload and (sport in self.ports or dport in self.ports):
            self.segments.append((sport, dport, payload))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()

    def on_port(self, port: int) -> list[tuple[int, int, bytes]]:
        return [s for s in self.segments if port in (s[0], s[1])]


SO_ATTACH_FILTER = 26


def _attach_port_filter(sock: socket.socket, ports: list[int]) -> None:
    """Keep only IPv4 TCP to or from ``ports`` (two of them) in the kernel: other programs' loopback
    traffic must neither fill the capture's buffer nor cost this process time.

    Classic BPF over the Ethernet header that ``lo`` shows packet sockets; jumps are relative.
    """
    p1, p2 = ports
    program = [
        (0x28, 0, 0, 12),       # 0  ldh [12]              ethertype
        (0x15, 0, 11, 0x0800),  # 1  jeq IPv4, else drop
        (0x30, 0, 0, 23),       # 2  ldb [23]              IP protocol
        (0x15, 0, 9, 6),        # 3  jeq TCP, else drop
        (0x28, 0, 0, 20),       # 4  ldh [20]              fragment offset
        (0x45, 7, 0, 0x1FFF),   # 5  jset: a later fragment has no ports: drop
        (0xB1, 0, 0, 14),       # 6  ldxb 4*([14]&0xf)     IP header length
        (0x48, 0, 0, 14),       # 7  ldh [x+14]            source port
        (0x15, 5, 0, p1),       # 8
        (0x15, 4, 0, p2),       # 9
        (0x48, 0, 0, 16),       # 10 ldh [x+16]            destination port
        (0x15, 2, 0, p1),       # 11
        (0x15, 1, 0, p2),       # 12
        (0x06, 0, 0, 0),        # 13 drop
        (0x06, 0, 0, 0x40000),  # 14 accept (whole packet)
    ]
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), ctypes.addressof(buf)))


def _pinned_temp_pair(m: vine.Manager, marker: str) -> tuple[vine.Task, vine.Task]:
    """A producer on the worker with feature ``src`` writing a temp full of ``marker``, a consumer on ``dst``."""
    temp = m.declare_temp()
    producer = vine.Task(f"yes {marker} 2>/dev/null | head -c {FILE_BYTES} > out && md5sum out | cut -c1-32")
    producer.add_output(temp, "out")
    producer.add_feature("src")
    consumer = vine.Task("md5sum in | cut -c1-32")
    consumer.add_input(temp, "in")
    consumer.add_feature("dst")
    return producer, consumer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain-control"])
def test_peer_transfer_bytes_on_the_wire(tls, tmp_path, start_worker):
    if os.geteuid() != 0:
        pytest.skip("capturing loopback packets needs root (AF_PACKET)")
    m = vine.Manager(port=0, ssl=tls, run_info_path=str(tmp_path / "run-info"))
    try:
        xfer = free_port()
        flag = ["--ssl"] if tls else []
        start_worker(m, extra=[*flag, "--feature", "src", "--transfer-port", str(xfer)])
        start_worker(m, extra=[*flag, "--feature", "dst"])
        wait_for_workers(m, 2)
        marker = f"VINE-WIRE-MARKER-{uuid.uuid4().hex}"
        capture = LoopbackCapture({xfer, m.port})
        try:
            producer, consumer = _pinned_temp_pair(m, marker)
            m.submit(producer)
            m.submit(consumer)
            done = {t.id: t for t in drain(m, 40)}
        finally:
            capture.stop()
        p, c = done[producer.id], done[consumer.id]
        assert p.result == "success" and c.result == "success", (p.result, c.result, c.std_output)
        assert c.std_output.strip() == p.std_output.strip()  # the consumer got the producer's bytes
        assert m.stats.peer_transfers >= 1 and m.stats.bytes_peer >= FILE_BYTES
    finally:
        m.close()

    peer = capture.on_port(xfer)
    assert sum(len(s[2]) for s in peer) >= FILE_BYTES, "the temp must have crossed the producer's transfer port"
    to_server = [s for s in peer if s[1] == xfer]
    needle = marker.encode()
    streams = {}
    for sport, dport, data in capture.segments:
        streams.setdefault((sport, dport), []).append(data)
    seen = [key for key, parts in streams.items() if needle in b"".join(parts)]
    if tls:
        assert to_server[0][2][:2] == b"\x16\x03", "the fetching worker must open with a TLS handshake record"
        assert not seen, f"the file's content crossed in the clear on {seen}"
        # The manager port carried the producer's command line (which holds the marker): encrypted too.
        assert capture.on_port(m.port), "the capture must have seen the manager's connections"
    else:
        assert to_server[0][2][:1] != b"\x16"
        assert any(xfer in key for key in seen), "control: a plain transfer must show the content on the wire"


def test_worker_with_manager_name_learns_tls_from_the_catalog(tmp_path, monkeypatch):
    catalog_dir = str(tmp_path / "catalog")
    monkeypatch.setenv("VINE_CATALOG", catalog_dir)
    name = f"tls-named-{os.getpid()}"
    m = vine.Manager(port=0, ssl=True, name=name, run_info_path=str(tmp_path / "run-info"))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    workers = []
    try:
        [entry] = catalog.find(name, catalog_dir)
        assert entry["ssl"] is True
        for i in range(2):  # no --ssl: both learn it from the entry, and so serve their transfer ports with TLS
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "core.worker", "-M", name, "--catalog", catalog_dir, "--cores", "1",
                 "--memory", "300", "--disk", "500", "--feature", ("src", "dst")[i], "--timeout", "30",
                 "--workdir", str(tmp_path / f"w{i}")],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        wait_for_workers(m, 2)
        producer, consumer = _pinned_temp_pair(m, "learned")
        m.submit(producer)
        m.submit(consumer)
        done = {t.id: t for t in drain(m, 40)}
        assert done[consumer.id].result == "success", done[consumer.id].std_output
        assert done[consumer.id].std_output.strip() == done[producer.id].std_output.strip()
        assert m.stats.peer_transfers >= 1
    finally:
        m.close()
        for w in workers:
            w.kill()
            w.wait(10)
            w.stderr.close()


@pytest.mark.timeout(60)
def test_factory_with_manager_name_learns_tls_from_the_catalog(tmp_path, monkeypatch):
    catalog_dir = str(tmp_path / "catalog")
    monkeypatch.setenv("VINE_CATALOG", catalog_dir)
    name = f"tls-factory-{os.getpid()}"
    m = vine.Manager(port=0, ssl=True, name=name, run_info_path=str(tmp_path / "run-info"))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # -w 0: the factory submits a worker only once it has read the waiting task from the manager,
    # which it can only do over TLS.
    proc = subprocess.Popen([sys.executable, "-m", "core.deploy.factory", "-T", "local", "-M", name, "--catalog", catalog_dir,
                             "-w", "0", "-W", "1", "--factory-period", "0.5", "-S", str(tmp_path / "scratch"),
                             "--cores", "1", "--memory", "300", "--disk", "500", "-t", "30"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t = vine.Task("echo through-a-tls-factory")
        m.submit(t)
        done = drain(m, 45)
        assert done[0].result == "success" and done[0].std_output.strip() == "through-a-tls-factory"
    finally:
        m.close()
        proc.terminate()
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stderr.close()


async def _peer_session(port: int, tls: ssl.SSLContext | None, password: bytes | None, get: str | None = None) -> int:
    """Handshake with a transfer port as a peer would; with ``get``, fetch that cache name and return its size."""
    conn = await open_connection("127.0.0.1", port, ssl=tls, timeout=5)
    try:
        await client_handshake(conn, "peer", password, timeout=10)
        if get is None:
            return 0
        conn.send(Get(get))
        await conn.drain()
        begin = await conn.expect("file_begin", 10)
        got = 0
        while True:
            fr = await conn.recv()
            assert fr is not None, "the peer closed in the middle of the file"
            if fr.type == "file_end":
                return got if got == int(begin["size"]) else -1
            got += len(fr.payload)
    finally:
        await conn.aclose()


def test_plain_tcp_to_a_tls_transfer_port_is_refused_and_logged(tmp_path, start_worker):
    m = vine.Manager(port=0, ssl=True, run_info_path=str(tmp_path / "run-info"))
    try:
        xfer = free_port()
        w = start_worker(m, extra=["--ssl", "--transfer-port", str(xfer)])
        wait_for_workers(m, 1)
        with pytest.raises(AuthenticationError, match="refused plain TCP: this transfer port requires TLS"):
            asyncio.run(_peer_session(xfer, None, None))
        wait_until(lambda: "transfer port refused plain TCP from 127.0.0.1" in read_log(w), 10, "the refusal in the worker's log")
        asyncio.run(_peer_session(xfer, client_context(), None))  # the same port still serves TLS peers
    finally:
        m.close()


def test_tls_hello_to_a_plain_transfer_port_fails_cleanly(manager, tmp_path, start_worker):
    xfer = free_port()
    w = start_worker(manager, extra=["--transfer-port", str(xfer)])
    wait_for_workers(manager, 1)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        asyncio.run(_peer_session(xfer, client_context(), None))
    wait_until(lambda: "transfer port refused a TLS hello from 127.0.0.1" in read_log(w), 10, "the refusal in the worker's log")
    asyncio.run(_peer_session(xfer, None, None))  # and still serves plain peers


class TLSRelay:
    """A man in the middle: terminates TLS with its own certificate and opens its own TLS to ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.connections = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-tls-relay", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0, ssl=self_signed_server_context("relay"))
        return self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target, ssl=client_context())

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def tls_relay() -> Iterator[list[TLSRelay]]:
    made: list[TLSRelay] = []
    yield made
    for r in made:
        r.close()


@pytest.mark.timeout(60)
def test_wrong_password_and_a_tls_relay_are_refused_on_manager_and_peer_ports(tmp_path, start_worker, tls_relay, caplog):
    right, wrong = tmp_path / "right.pw", tmp_path / "wrong.pw"
    right.write_text("the-right-secret\n")
    wrong.write_text("not-the-secret\n")
    m = vine.Manager(port=0, ssl=True, run_info_path=str(tmp_path / "run-info"))
    m.set_password_file(str(right))
    try:
        xfer = free_port()
        start_worker(m, extra=["--ssl", "--password", str(right), "--feature", "src", "--transfer-port", str(xfer)])
        wait_for_workers(m, 1)
        temp = m.declare_temp()
        t = vine.Task(f"head -c {FILE_BYTES} /dev/urandom > out")
        t.add_output(temp, "out")
        m.submit(t)
        assert drain(m, 30)[0].result == "success"

        # Manager port: a wrong password, and the right one through a TLS-terminating relay.
        bad = start_worker(m, extra=["--ssl", "--password", str(wrong)])
        assert bad.proc.wait(20) == 1
        assert "does not know our password" in bad.proc.stderr.read().decode()
        relay = TLSRelay(m.port)
        tls_relay.append(relay)
        relayed = WorkerProcess(relay.port, str(tmp_path / "relayed"), extra=["--ssl", "--password", str(right)])
        try:
            assert relayed.proc.wait(20) == 1
            assert "a relay in the middle terminates TLS" in relayed.proc.stderr.read().decode()
        finally:
            relayed.reap()
        assert relay.connections >= 1
        wait_until(lambda: sum("password mismatch" in r.getMessage() for r in caplog.records) >= 2, 10,
                   "the manager to log both refusals")
        assert m.stats.workers_connected == 1

        # Peer port: the right password fetches the temp; a wrong one and the relay are refused.
        pw = right.read_bytes().strip()
        assert asyncio.run(_peer_session(xfer, client_context(), pw, get=temp.cache_name)) == FILE_BYTES
        with pytest.raises(AuthenticationError, match="does not know our password"):
            asyncio.run(_peer_session(xfer, client_context(), wrong.read_bytes().strip(), get=temp.cache_name))
        peer_relay = TLSRelay(xfer)
        tls_relay.append(peer_relay)
        with pytest.raises(AuthenticationError, match="a relay in the middle terminates TLS"):
            asyncio.run(_peer_session(peer_relay.port, client_context(), pw, get=temp.cache_name))
        assert peer_relay.connections == 1
    finally:
        m.close()


@pytest.mark.timeout(60)
def test_missing_tls_is_refused_both_ways(tmp_path, start_worker, manager, caplog):
    m = vine.Manager(port=0, ssl=True, run_info_path=str(tmp_path / "run-info"))
    try:
        plain = start_worker(m)  # no --ssl, to a TLS manager: refused with the reason, and it gives up
        assert plain.proc.wait(20) == 1
        assert "requires TLS" in plain.proc.stderr.read().decode()
        wait_until(lambda: any("manager refused plain TCP from 127.0.0.1" in r.getMessage() for r in caplog.records), 10,
                   "the manager's refusal in its log")
        with pytest.raises(AuthenticationError, match="requires TLS"):
            query_status("127.0.0.1", m.port, "manager", use_ssl=False, timeout=5)
        assert query_status("127.0.0.1", m.port, "manager", use_ssl=True, timeout=5)[0]["port"] == m.port
        assert m.stats.workers_connected == 0
    finally:
        m.close()
    # --ssl to a plain manager (the fixture's): the manager logs it, the worker says what is wrong.
    tls = start_worker(manager, extra=["--ssl", "--connect-timeout", "3"])
    wait_until(lambda: "TLS handshake with localhost" in read_log(tls) and "does that manager use TLS" in read_log(tls),
               15, "the worker to log the failed TLS handshake")
    wait_until(lambda: any("manager refused a TLS hello" in r.getMessage() for r in caplog.records), 10,
               "the plain manager's refusal in its log")
    assert manager.stats.workers_connected == 0
    with pytest.raises((RemoteProtocolError, ssl.SSLError, ConnectionError)):
        query_status("127.0.0.1", manager.port, "manager", use_ssl=True, timeout=5)
    # ...and gives up within its connect timeout (plus one back-off), non-zero, naming TLS.
    assert tls.proc.wait(15) == 1
    assert "does that manager use TLS" in tls.proc.stderr.read().decode()


def test_tls_worker_without_openssl_says_so(tmp_path):
    """A worker that cannot make its transfer port's certificate exits at once with the reason."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "core.worker", "--ssl", "--workdir", str(tmp_path / "w"), "--timeout", "5",
                          "127.0.0.1", "9"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "TLS needs the openssl command" in out.stderr and "Traceback" not in out.stderr


def test_self_signed_manager_leaves_no_private_key_on_disk(tmp_path, monkeypatch):
    """ssl=True makes its key pair in a temp directory and keeps the key in memory only."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp puts the pair, for this test
    m = vine.Manager(port=0, ssl=True, run_info_path=str(tmp_path / "run-info"))
    try:
        assert m.using_ssl
        assert query_status("127.0.0.1", m.port, "manager", use_ssl=True, timeout=5)[0]["port"] == m.port
        left = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files if f.endswith(".pem")]
        assert left == []
    finally:
        m.close()
