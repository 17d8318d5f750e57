"""The data plane with real worker processes: cache levels on disk, peer transfers (and their
password), temp files across workers, lineage recovery after SIGKILL/SIGSTOP, and pruning.

Every wait is on an event (a finished task, a counter, a file appearing or vanishing) with a bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import pytest

import core as vine
from core.errors import AuthenticationError
from core.wire.connection import client_handshake, open_connection
from core.wire.protocol import PROTOCOL_VERSION, FrameDecoder, encode_frame, new_nonce
from tests.conftest import drain, run, wait_for_workers, wait_until
from tests.integration.conftest import records

MB = 1 << 20


def cache_dir(workdir) -> str:
    return os.path.join(str(workdir), "cache")


def cached_names(workdir) -> set[str]:
    try:
        return {n for n in os.listdir(cache_dir(workdir)) if not n.startswith(".vine-")}
    except FileNotFoundError:
        return set()


def cache_bytes(workdir) -> int:
    total = 0
    for root, _dirs, files in os.walk(cache_dir(workdir)):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def sent_inputs(m, f) -> list[list[str]]:
    """TRANSFER INPUT records (the manager sending a file to a worker) for ``f``."""
    return [r for r in records(m, "WORKER") if r[2:5] == ["TRANSFER", "INPUT", f.cache_name]]


# --- 1/2. cache levels on the worker's disk ---------------------------------------------------------------


def test_cache_levels_live_as_long_as_promised(manager, start_worker, tmp_path):
    """task: gone after the task; workflow: gone when the manager goes; worker: gone when the worker
    exits; forever: kept on disk."""
    m = manager
    workdir = tmp_path / "ws"
    files = {}
    for level in ("task", "workflow", "worker", "forever"):
        p = tmp_path / f"{level}.dat"
        p.write_text(f"{level} data\n")
        files[level] = m.declare_file(str(p), cache=level)
    w = start_worker(m, extra=["--workdir", str(workdir)])
    t = vine.Task("cat task workflow worker forever")
    for level, f in files.items():
        t.add_input(f, level)
    t = run(m, t)
    assert (t.result, t.output) == ("success", "task data\nworkflow data\nworker data\nforever data\n")
    names = {level: f.cache_name for level, f in files.items()}
    wait_until(lambda: names["task"] not in cached_names(workdir), 10, "the task-level input to be deleted")
    assert {names["workflow"], names["worker"], names["forever"]} <= cached_names(workdir)
    m.close()
    wait_until(lambda: names["workflow"] not in cached_names(workdir), 15, "the workflow file to go with the manager")
    assert {names["worker"], names["forever"]} <= cached_names(workdir)
    w.kill(signal.SIGTERM)
    assert w.proc.wait(15) == 0
    assert cached_names(workdir) == {names["forever"]}


def test_forever_file_is_announced_to_the_next_manager_and_not_sent_again(start_worker, tmp_path):
    src = tmp_path / "reference.dat"
    src.write_bytes(os.urandom(300_000))
    workdir = tmp_path / "ws"

    def one_run(label: str) -> tuple[vine.Task, int, list]:
        with vine.Manager(port=0, run_info_path=str(tmp_path / f"run-{label}")) as m:
            f = m.declare_file(str(src), cache="forever")
            w = start_worker(m, extra=["--workdir", str(workdir)])
            t = vine.Task("wc -c < ref.dat")
            t.add_input(f, "ref.dat")
            t = run(m, t)
            sent, log = m.stats.bytes_sent_files, sent_inputs(m, f)
            w.kill(signal.SIGTERM)
            assert w.proc.wait(15) == 0
        assert f.cache_name in cached_names(workdir)
        return t, sent, log

    first, sent, log = one_run("first")
    assert (first.result, first.output.strip()) == ("success", "300000")
    assert sent == 300_000 and len(log) == 1
    second, sent, log = one_run("second")
    assert (second.result, second.output.strip()) == ("success", "300000")
    assert sent == 0 and log == [], "the new manager must use the worker's forever copy"


# --- 3. peer transfers ----------------------------------------------------------------------------------------


def fan_out(m, start_worker, tmp_path, size: int, n_workers: int = 4, n_tasks: int = 8, peer_transfer: bool = True,
            extra: list[str] | None = None) -> tuple[object, list]:
    """One shared workflow input read by ``n_tasks`` 1-core tasks over ``n_workers`` 1-core workers."""
    src = tmp_path / "shared.dat"
    src.write_bytes(os.urandom(size))
    f = m.declare_file(str(src), cache="workflow", peer_transfer=peer_transfer)
    for _ in range(n_workers):
        start_worker(m, cores=1, extra=extra or [])
    wait_for_workers(m, n_workers)
    for _ in range(n_tasks):
        t = vine.Task("sleep 0.3; wc -c < shared.dat", cores=1)
        t.add_input(f, "shared.dat")
        m.submit(t)
    done = drain(m, 60)
    assert [(t.result, t.output.strip()) for t in done] == [("success", str(size))] * n_tasks
    return f, done


def test_peer_transfers_spread_a_shared_input(manager, start_worker, tmp_path):
    m = manager
    size = 4 * MB
    f, done = fan_out(m, start_worker, tmp_path, size)
    s = m.stats
    assert len({t.addrport for t in done}) >= 2, "tasks should have spread over several workers"
    assert s.bytes_sent_files < 3 * size, f"the manager sent {s.bytes_sent_files} bytes of a {size}-byte file"
    assert s.peer_transfers >= 1
    assert s.bytes_peer >= size and s.bytes_peer % size == 0
    assert len(sent_inputs(m, f)) == s.bytes_sent_files // size


@pytest.mark.parametrize("how", ["disable_peer_transfers", "peer_transfer=False"])
def test_without_peer_transfers_the_manager_sends_to_every_worker(how, manager, start_worker, tmp_path):
    m = manager
    size = 2 * MB
    if how == "disable_peer_transfers":
        m.disable_peer_transfers()
    f, done = fan_out(m, start_worker, tmp_path, size, peer_transfer=how != "peer_transfer=False")
    used = len({t.addrport for t in done})
    s = m.stats
    assert used >= 2
    assert (s.peer_transfers, s.bytes_peer) == (0, 0)
    assert s.bytes_sent_files == used * size
    assert len(sent_inputs(m, f)) == used


# --- 4. peer authentication ------------------------------------------------------------------------------------


def raw_get(addr: str, name: str, timeout: float = 10) -> list[str]:
    """A stranger on a worker's transfer port: hello, then ask for ``name`` without proving any
    password. Returns the frame types it got back before the worker hung up."""
    host, _, port = addr.rpartition(":")
    hello = {"type": "hello", "version": PROTOCOL_VERSION, "role": "peer", "nonce": new_nonce()}
    dec = FrameDecoder()
    got: list[str] = []
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(encode_frame(hello) + encode_frame({"type": "get", "name": name}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            got += [fr.type for fr in dec.feed(chunk)]
            if "file_end" in got:
                break
    return got


def handshake_without_password(addr: str) -> BaseException | None:
    async def attempt() -> None:
        host, _, port = addr.rpartition(":")
        conn = await open_connection(host, int(port), timeout=10)
        try:
            await client_handshake(conn, "peer", None, timeout=10)
        finally:
            conn.close()

    try:
        asyncio.run(attempt())
    except BaseException as exc:  # noqa: BLE001 - returned for the test to inspect
        return exc
    return None


def transfer_addrs(m) -> list[str]:
    return [link.transfer_addr for link in list(m._links.values()) if link.transfer_addr]


@pytest.mark.parametrize("password", [None, "s3cret"], ids=["open", "password"])
def test_peer_transfers_use_the_managers_password(password, manager, start_worker, tmp_path):
    m = manager
    extra = []
    if password is not None:
        m.set_password(password)
        pw = tmp_path / "pw"
        pw.write_text(password + "\n")
        extra = ["--password", str(pw)]
    f, _done = fan_out(m, start_worker, tmp_path, 1 * MB, n_workers=2, n_tasks=4, extra=extra)
    assert m.stats.peer_transfers >= 1, "workers holding the password still fetch from each other"
    addrs = transfer_addrs(m)
    assert len(addrs) == 2
    got = raw_get(addrs[0], f.cache_name)
    err = handshake_without_password(addrs[0])
    if password is None:
        # The probe itself works: without a password a cached file is served to anyone.
        assert got[:2] == ["welcome", "file_begin"] and got[-1] == "file_end", got
        assert err is None
    else:
        assert "file_begin" not in got and "file_chunk" not in got, got
        assert got[:1] == ["welcome"], got
        assert isinstance(err, AuthenticationError), repr(err)
        # The worker is unharmed by the stranger.
        t = vine.Task("wc -c < shared.dat")
        t.add_input(f, "shared.dat")
        assert run(m, t).output.strip() == str(MB)


# --- 5. temp files across workers -------------------------------------------------------------------------------


def test_temp_chain_across_two_workers_and_fetch(manager, start_worker):
    m = manager
    start_worker(m, cores=1, extra=["--feature", "left"])
    start_worker(m, cores=1, extra=["--feature", "right"])
    wait_for_workers(m, 2)
    temps = [m.declare_temp() for _ in range(4)]
    prev = None
    for i, x in enumerate(temps):
        cmd = ("cat in > out; " if prev else "") + f"echo step{i} >> out"
        t = vine.Task(cmd, features=["left" if i % 2 == 0 else "right"])
        if prev:
            t.add_input(prev, "in")
        t.add_output(x, "out")
        m.submit(t)
        prev = x
    done = drain(m, 30)
    assert [t.result for t in done] == ["success"] * 4
    assert len({t.addrport for t in done}) == 2
    assert m.fetch_file(temps[-1]) == "step0\nstep1\nstep2\nstep3\n"
    s = m.stats
    assert s.peer_transfers >= 3 and s.bytes_sent_files == 0


def test_temp_replica_count_keeps_two_copies(manager, start_worker):
    m = manager
    m.tune("temp-replica-count", 2)
    start_worker(m, cores=1)
    start_worker(m, cores=1)
    wait_for_workers(m, 2)
    x = m.declare_temp()
    t = vine.Task("head -c 100000 /dev/urandom > out")
    t.add_output(x, "out")
    assert run(m, t).result == "success"
    wait_until(lambda: m.get_file_replica_count(x) == 2, 15, "a second replica of the temp")
    assert len(m.fetch_file(x, binary=True)) == 100_000


# --- 6. lineage recovery and worker loss ------------------------------------------------------------------------


def chain(m, tmp_path, n: int = 3, first_cmd: str | None = None) -> tuple[list, object]:
    """Temps made by A→B→C…; each step logs its name to ``runs`` so re-executions can be counted."""
    runs = tmp_path / "runs"
    temps = [m.declare_temp() for _ in range(n)]
    for i, x in enumerate(temps):
        name = chr(ord("A") + i)
        cmd = f"echo {name} >> {runs}; " + ("cat in > out; " if i else "") + f"echo {name.lower()} >> out"
        if i == 0 and first_cmd:
            cmd = first_cmd
        t = vine.Task(cmd)
        if i:
            t.add_input(temps[i - 1], "in")
        t.add_output(x, "out")
        m.submit(t)
    done = drain(m, 30)
    assert [t.result for t in done] == ["success"] * n
    return temps, runs


def sigkill_and_replace(m, w, start_worker):
    w.kill(signal.SIGKILL)
    assert w.proc.wait(10) == -signal.SIGKILL
    wait_until(lambda: m.stats.workers_connected == 0, 15, "the killed worker to be noticed")
    return start_worker(m, cores=1)


@pytest.mark.parametrize("immediate", [0, 1], ids=["on-demand", "immediate"])
def test_sigkill_holder_of_a_temp_chain_then_ask_for_the_last(immediate, manager, start_worker, tmp_path):
    m = manager
    m.tune("immediate-recovery", immediate)
    w1 = start_worker(m, cores=1)
    temps, runs = chain(m, tmp_path)
    assert runs.read_text().split() == ["A", "B", "C"]
    sigkill_and_replace(m, w1, start_worker)
    if immediate:
        # Recovery starts at the loss, before anyone asks for the data.
        wait_until(lambda: runs.read_text().split().count("C") == 2, 30, "immediate recovery to remake C")
    result = tmp_path / "result.txt"
    d = vine.Task("cat in > result; echo d >> result")
    d.add_input(temps[-1], "in")
    d.add_output(m.declare_file(str(result)), "result")
    d = run(m, d, 60)
    assert (d.result, d.exit_code) == ("success", 0)
    assert result.read_text() == "a\nb\nc\nd\n"
    assert m.stats.tasks_recovery >= 3
    assert sorted(runs.read_text().split()) == ["A", "A", "B", "B", "C", "C"]
    assert m.empty()


def test_producer_failing_under_recovery_ends_the_consumer(manager, start_worker, tmp_path):
    m = manager
    mark = tmp_path / "made-once"
    w1 = start_worker(m, cores=1)
    runs = tmp_path / "runs"
    first = f"echo A >> {runs}; test -e {mark} && exit 1; touch {mark}; echo a > out"
    temps, runs = chain(m, tmp_path, n=2, first_cmd=first)
    sigkill_and_replace(m, w1, start_worker)
    d = vine.Task("cat in")
    d.add_input(temps[-1], "in")
    start = time.monotonic()
    d = run(m, d, 30)
    assert d.result == "input missing"
    assert time.monotonic() - start < 20
    assert runs.read_text().split().count("A") == 2, "A is re-run once, fails, and that ends it"
    assert m.empty()
    # The manager is not stuck: new work still runs.
    assert run(m, vine.Task("echo fine")).output == "fine\n"


def test_sigkill_source_during_a_peer_transfer(manager, start_worker, tmp_path):
    m = manager
    size = 64 * MB
    src = tmp_path / "big.dat"
    with open(src, "wb") as fh:
        fh.truncate(size)  # sparse: cheap to make, still 64 MB on the wire
    big = m.declare_file(str(src), cache="workflow")
    w1 = start_worker(m, cores=1, extra=["--feature", "first"])
    wait_for_workers(m, 1)
    t = vine.Task("wc -c < big", features=["first"])
    t.add_input(big, "big")
    assert run(m, t, 60).output.strip() == str(size)
    w2 = start_worker(m, cores=1, extra=["--feature", "second"])
    wait_for_workers(m, 2)
    t = vine.Task("wc -c < big", features=["second"])
    t.add_input(big, "big")
    tid = m.submit(t)

    def receiving() -> bool:
        try:
            return any(n.startswith(".vine-recv-") for n in os.listdir(cache_dir(w2.workdir)))
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while not receiving():  # poll tightly: the copy takes a fraction of a second
        assert time.monotonic() < deadline, "the peer transfer never started"
        time.sleep(0.001)
    w1.kill(signal.SIGKILL)
    t = m.wait_for_task_id(tid, 60)
    assert t is not None
    assert (t.result, t.output.strip()) == ("success", str(size))
    wait_until(lambda: m.stats.workers_connected == 1, 15, "the killed worker to be noticed")
    # The copy from the peer broke (the second worker says so), and the manager sent the file itself.
    with open(w2.log_file) as fh:
        assert "peer transfer from" in fh.read()
    assert m.stats.bytes_sent_files == 2 * size
    assert m.stats.peer_transfers == 0


def test_sigstop_worker_holding_a_temp_and_a_task(manager, start_worker, tmp_path, orphans):
    m = manager
    m.tune("keepalive-interval", 1)
    m.tune("keepalive-timeout", 2)
    w1 = start_worker(m, cores=2)
    (x,), runs = chain(m, tmp_path, n=1)
    attempts = tmp_path / "attempts"
    hang = vine.Task(f"echo $$ >> {attempts}; if [ $(wc -l < {attempts}) -eq 1 ]; then exec sleep 60; fi; echo moved", cores=1)
    hid = m.submit(hang)
    wait_until(attempts.exists, 30, "the first attempt to start")
    orphans.append(int(attempts.read_text().split()[0]))
    w1.kill(signal.SIGSTOP)
    start_worker(m, cores=2)
    d = vine.Task("cat in", cores=1)
    d.add_input(x, "in")
    did = m.submit(d)
    hang = m.wait_for_task_id(hid, 60)
    d = m.wait_for_task_id(did, 60)
    assert (hang.result, hang.output) == ("success", "moved\n")
    assert (d.result, d.output) == ("success", "a\n")
    s = m.stats
    assert s.workers_lost >= 1 and s.tasks_recovery >= 1
    assert runs.read_text().split() == ["A", "A"]


# --- 7. garbage collection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["prune_file", "undeclare_file"])
def test_pruned_temp_chain_keeps_the_cache_bounded(drop, manager, start_worker):
    m = manager
    w = start_worker(m, cores=1)
    steps = 40
    prev = None
    biggest = 0
    for i in range(steps):
        x = m.declare_temp()
        t = vine.Task("cat in > out" if prev else "head -c 1048576 /dev/urandom > out")
        if prev:
            t.add_input(prev, "in")
        t.add_output(x, "out")
        t = run(m, t)
        assert t.result == "success", t.output
        if prev:
            getattr(m, drop)(prev)
        prev = x
        biggest = max(biggest, cache_bytes(w.workdir))
    assert biggest <= 4 * MB, f"the cache grew to {biggest} bytes over a {steps}-step chain of 1 MB files"
    wait_until(lambda: cache_bytes(w.workdir) == MB, 10, "only the last temp to remain")
    wait_until(lambda: m.stats.inuse_cache == MB, 10, "the manager's cache tally to match the worker's disk")
    assert len(m.fetch_file(prev, binary=True)) == MB


def test_unlink_when_done_removes_local_files_on_undeclare(manager, start_worker, tmp_path):
    m = manager
    start_worker(m, cores=1)
    inp = tmp_path / "in.txt"
    inp.write_text("input\n")
    out = tmp_path / "out.txt"
    fin = m.declare_file(str(inp), unlink_when_done=True)
    fout = m.declare_file(str(out), unlink_when_done=True)
    keep = tmp_path / "keep.txt"
    fkeep = m.declare_file(str(keep))
    t = vine.Task("cat in > out; cp out keep")
    t.add_input(fin, "in")
    t.add_output(fout, "out")
    t.add_output(fkeep, "keep")
    assert run(m, t).result == "success"
    assert out.read_text() == "input\n" and keep.exists()
    m.undeclare_file(fin)
    m.undeclare_file(fout)
    m.undeclare_file(fkeep)
    assert not inp.exists() and not out.exists()
    assert keep.read_text() == "input\n", "files without unlink_when_done stay"
