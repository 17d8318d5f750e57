"""Numbers no scheduler can use, as fault tables (issue 12, point 2).

A non-finite or negative amount must be refused where it enters: the worker's command line, any
frame a peer sends (``NaN``, ``Infinity`` and ``1e999`` are valid to Python's json), a task's setters
and the manager's tunes. And if a handler still raises, the decisions it recorded before are carried
out, the event is dropped and its worker disconnected, and everyone else is still served.

The bad peer is a raw socket speaking our framing (its frames are encoded by hand, since
``core.wire.protocol`` itself refuses to encode such numbers); the manager and the worker are the real ones.
"""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

import core as vine
from core.api.specs import task_spec
from core.state.resources import Resources
from core.state.scheduler import Dispatch, EventFailed, SchedulerState, TaskSubmitted, Tick, WorkerJoined
from core.state.spec import TaskSpec
from core.wire.protocol import PREFIX, PROTOCOL_VERSION, FrameDecoder, encode_frame, new_nonce
from tests.conftest import ROOT, run, wait_for_workers

NAN, INF = float("nan"), float("inf")


def raw_frame(header: dict[str, Any]) -> bytes:
    """A frame as a careless or hostile peer would encode it: json's defaults allow NaN and Infinity."""
    head = json.dumps(header).encode()
    return PREFIX.pack(len(head), 0) + head


def raw_text_frame(text: str) -> bytes:
    head = text.encode()
    return PREFIX.pack(len(head), 0) + head


def assert_still_works(m: Any) -> None:
    t = run(m, vine.Task("echo still working"), timeout=30)
    assert (t.result, t.exit_code, t.output) == ("success", 0, "still working\n")


# --- the worker's command line -------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--cores", "inf"), ("--cores", "nan"), ("--disk", "inf"), ("--memory", "-5"), ("--gpus", "NaN"),
    ("--disk-percent", "inf"), ("--timeout", "nan"), ("--wall-time", "-1"),
])
def test_worker_refuses_amounts_it_cannot_report(option: str, value: str, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core.worker", option, value, "--workdir", str(tmp_path / "w"),
                          "localhost", "9"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert option in out.stderr and "finite number >= 0" in out.stderr, out.stderr


# --- frames from a peer --------------------------------------------------------------------------------

GOOD_RESOURCES = {"cores": 1, "memory": 1000, "disk": 100, "gpus": 0}


@dataclass
class BadNumber:
    name: str
    ready: bytes  # the ready frame (bytes: some rows are not expressible by json.dumps)
    later: bytes | None = None  # a frame sent after a valid ready


def _ready(**over: Any) -> dict[str, Any]:
    return {"type": "ready", "resources": dict(GOOD_RESOURCES), "cache": {}, "hostname": "bad-numbers",
            "worker_id": f"worker-bad-{new_nonce()[:8]}", **over}


def _ready_with(field: str, value: Any) -> bytes:
    h = _ready()
    h["resources"][field] = value
    return raw_frame(h)


BAD_NUMBERS = [
    BadNumber("cores NaN", _ready_with("cores", NAN)),
    BadNumber("cores Infinity", _ready_with("cores", INF)),
    BadNumber("disk Infinity", _ready_with("disk", INF)),
    BadNumber("memory -Infinity", _ready_with("memory", -INF)),
    BadNumber("cores 1e999 (overflows to inf)", raw_text_frame(json.dumps(_ready()).replace('"cores": 1', '"cores": 1e999'))),
    BadNumber("cores as the string 'nan'", _ready_with("cores", "nan")),
    BadNumber("negative cores", _ready_with("cores", -4)),
    BadNumber("cache entry of Infinity bytes", raw_frame(_ready(cache={"file-x": INF}))),
    BadNumber("end_time NaN", raw_frame(_ready(end_time=NAN))),
    BadNumber("a 40-digit integer", raw_text_frame(json.dumps(_ready()).replace('"gpus": 0', '"gpus": ' + "9" * 40))),
    BadNumber("cache_update of NaN bytes after ready", raw_frame(_ready()),
              raw_frame({"type": "cache_update", "name": "file-y", "size": NAN})),
]


@pytest.mark.parametrize("row", BAD_NUMBERS, ids=[r.name for r in BAD_NUMBERS])
def test_peer_with_a_bad_number_is_dropped_and_the_rest_is_served(row: BadNumber, m):
    sock = socket.create_connection(("127.0.0.1", m.port), timeout=15)
    try:
        sock.sendall(encode_frame({"type": "hello", "version": PROTOCOL_VERSION, "role": "worker", "nonce": new_nonce()}))
        dec, frames = FrameDecoder(), []
        while not frames:
            chunk = sock.recv(65536)
            assert chunk, "the manager closed before its welcome"
            frames += dec.feed(chunk)
        assert frames[0].type == "welcome" and not frames[0]["auth"]
        sock.sendall(row.ready + (row.later or b""))
        # The manager hangs up on this peer (a task or a keepalive may come first: read to the end).
        while sock.recv(65536):
            pass
    finally:
        sock.close()
    assert_still_works(m)
    assert all(math.isfinite(w.total.cores) and w.total.cores >= 0 for w in m._state.workers.values())


# --- task setters and tunes ----------------------------------------------------------------------------

@pytest.mark.parametrize("setter, value", [
    ("set_cores", NAN), ("set_cores", INF), ("set_memory", INF), ("set_disk", -INF), ("set_gpus", NAN),
    ("set_priority", NAN), ("set_time_max", INF), ("set_time_min", NAN), ("set_retries", INF),
    ("set_time_end", NAN), ("set_max_forsaken", INF),
])
def test_task_setters_refuse_non_finite_numbers(setter: str, value: float):
    t = vine.Task("true")
    with pytest.raises(ValueError, match=f"{setter} takes a finite number"):
        getattr(t, setter)(value)
    with pytest.raises(ValueError, match=f"{setter} takes a finite number"):
        vine.Task("true", **{setter[4:]: value})


def test_task_setters_keep_their_meaning():
    t = vine.Task("true", cores=2, memory=-1, disk=None)
    assert (t.requested["cores"], t.requested["memory"], t.requested["disk"]) == (2.0, -1.0, -1.0)
    with pytest.raises(TypeError, match="set_cores takes a number"):
        t.set_cores("two")


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_tunes_refuse_non_finite_values(value: float, m):
    with pytest.raises(ValueError, match="resource-submit-multiplier"):
        m.tune("resource-submit-multiplier", value)
    assert math.isfinite(m._state.tuning["resource-submit-multiplier"])


# --- a handler that raises anyway ----------------------------------------------------------------------

def _task(tid: int) -> TaskSpec:
    t = vine.Task("true", cores=1, memory=10, disk=10)
    t._id = tid
    return task_spec(t)


def _joined(wid: str, cores: float, now: float = 1.0) -> WorkerJoined:
    return WorkerJoined(now, wid, "h", f"h:{wid}", Resources(cores, 1000, 1000, 0), frozenset(), {}, None, 0)


def test_a_raising_event_keeps_the_decisions_made_before_it():
    """Boundary checks aside, one bad event must not lose what handle() decided for the others."""
    s = SchedulerState()
    s.handle(_joined("w-good", 2))
    # A box built past every boundary check: its infinity made every scheduling pass raise.
    out = s.handle(TaskSubmitted(2.0, _task(1)), _joined("w-bad", INF, 2.0))
    assert [(i.task_id, i.worker) for i in out if isinstance(i, Dispatch)] == [(1, "w-good")], out
    assert [type(ev).__name__ for ev, _ in s.failed_events] == ["WorkerJoined"]
    assert "w-bad" not in s.workers
    s.failed_events.clear()
    out = s.handle(TaskSubmitted(3.0, _task(2)))
    assert [(i.task_id, i.worker) for i in out if isinstance(i, Dispatch)] == [(2, "w-good")], out
    s.validate()


def test_a_failed_scheduling_pass_loses_no_ready_task():
    s = SchedulerState()
    s.handle(_joined("w", 2))
    good = s.workers["w"].total
    s.workers["w"].total = Resources(INF, 1000, 1000, 0)  # a state corrupted past every check
    out = s.handle(TaskSubmitted(2.0, _task(1)))
    assert [type(i) for i in out] == [EventFailed] and [ev for ev, _ in s.failed_events] == [None]
    s.failed_events.clear()
    s.workers["w"].total = good
    out = s.handle(Tick(3.0))
    assert [(i.task_id, i.worker) for i in out if isinstance(i, Dispatch)] == [(1, "w")], out


# --- local errors fail the task that met them, never the worker (issue 12, point 3) ---------------------

# A child manager, so its descriptor limit can be lowered without touching the test process. It runs
# the row's faulting task next to an unrelated one on the same 2-core worker, lets the faulting one
# end while the fault is in place, then lifts it and lets the other end; prints what came back.
LOCAL_FAULT_MANAGER = r'''
import json, os, resource, subprocess, sys, time
import core as vine

row, tmp = sys.argv[1], sys.argv[2]
m = vine.Manager(port=0, run_info_path=os.path.join(tmp, "run-info"))
worker = subprocess.Popen([sys.executable, "-m", "core.worker", "--cores", "2", "--memory", "500", "--disk", "1000",
                           "--workdir", os.path.join(tmp, "worker"), "--timeout", "30", "localhost", str(m.port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.monotonic() + 20
    while m.stats.workers_connected < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    go, go_other = os.path.join(tmp, "go"), os.path.join(tmp, "go-other")
    wait = "while [ ! -e {} ]; do sleep 0.02; done; "
    if row == "watch":
        blocker = os.path.join(tmp, "a-file")
        open(blocker, "w").close()
        faulting = vine.Task(wait.format(go) + "echo watched > out")
        faulting.add_output(m.declare_file(os.path.join(blocker, "out")), "out", watch=True)
    else:
        out = m.declare_buffer(None) if row == "buffer" else m.declare_file(os.path.join(tmp, "out.bin"))
        faulting = vine.Task(wait.format(go) + "head -c 3000000 /dev/zero > out")
        faulting.add_output(out, "out")
    other = vine.Task(wait.format(go_other) + "echo other")
    for t in (faulting, other):
        t.set_cores(1)
        m.submit(t)
    while m.stats.tasks_running < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    hog = []
    if row in ("buffer", "file"):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass  # EMFILE: every descriptor is taken
    os.mkdir(go)  # mkdir needs no descriptor
    first = m.wait_for_task_id(faulting.id, 30)
    for fd in hog:
        os.close(fd)
    os.mkdir(go_other)
    second = m.wait_for_task_id(other.id, 30)
    print(json.dumps({"faulting": first and first.result, "other": second and second.result,
                      "other_output": second and second.output, "workers_lost": m._call(lambda: m._state.stats["workers_lost"]),
                      "connected": m.stats.workers_connected}))
finally:
    m.close()
    worker.kill()
    worker.wait(10)
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row", ["buffer", "file", "watch"], ids=[
    "a staged buffer output while the manager is out of descriptors",
    "a file output while the manager is out of descriptors",
    "a watched output whose directory is a regular file",
])
def test_a_manager_side_error_fails_only_its_task(row: str, tmp_path):
    out = subprocess.run([sys.executable, "-c", LOCAL_FAULT_MANAGER, row, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"faulting": "output transfer error", "other": "success", "other_output": "other\n",
                   "workers_lost": 0, "connected": 1}, (got, out.stderr[-3000:])


@pytest.mark.timeout(60)
def test_a_worker_out_of_descriptors_gives_its_task_back(manager, start_worker):
    """The worker's own EMFILE is its problem: the task is forsaken and runs on another worker."""
    starved = start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    open_fds = [int(n) for n in os.listdir(f"/proc/{starved.pid}/fd")]
    _soft, hard = resource.prlimit(starved.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(starved.pid, resource.RLIMIT_NOFILE, (max(open_fds) + 1, hard))  # no descriptor left
    start_worker(manager, cores=1)
    wait_for_workers(manager, 2)
    # Both idle with one core: the first to join (the starved one) is chosen first.
    t = run(manager, vine.Task("echo ran", cores=1), timeout=40)
    assert (t.result, t.output) == ("success", "ran\n")
    with open(starved.log_file) as fh:
        log_text = fh.read()
    assert "could not be run here" in log_text or "cannot make its sandbox" in log_text, log_text[-2000:]
    assert manager.stats.workers_connected == 2
    assert manager._call(lambda: manager._state.stats["workers_lost"]) == 0


# --- what grows with the work is paged (issue 12, point 12) ---------------------------------------------

@pytest.mark.timeout(90)
def test_vine_status_lists_more_tasks_than_one_frame_holds(manager, capsys):
    """20,000 tasks (the issue's run): a 2 MB reply, over the 1 MiB header limit."""
    from core.tools import status as vine_status

    commands = [f"echo {n:05d} task of a big run " + "x" * 40 for n in range(20000)]
    for c in commands:
        manager.submit(vine.Task(c))  # no worker: they all stay waiting
    rows = vine_status.query_status("127.0.0.1", manager.port, "tasks", timeout=30)
    assert sorted(r["command"] for r in rows) == sorted(commands)
    assert vine_status.main(["127.0.0.1", str(manager.port), "-T"]) == 0
    assert capsys.readouterr().out.count("task of a big run") == 20000
    manager.cancel_all()


@pytest.mark.timeout(60)
def test_the_manager_status_sums_what_the_queued_tasks_ask_for(manager):
    """The totals a factory sizes its workers by, from the requests the scheduler keeps per shape:
    unset cores count one, a cancelled task nothing."""
    from core.tools import status as vine_status

    for cores, memory in [(2, 100), (2, 100), (None, 500), (1, None)]:
        t = vine.Task("true")
        if cores:
            t.set_cores(cores)
        if memory:
            t.set_memory(memory)
        manager.submit(t)
    big = vine.Task("true")
    big.set_cores(8)
    manager.submit(big)
    manager.cancel_by_task_id(big.id)
    (row,) = vine_status.query_status("127.0.0.1", manager.port, "manager", timeout=30)
    assert row["tasks_waiting"] == 4
    assert (row["tasks_total_cores"], row["tasks_total_memory"], row["tasks_total_disk"]) == (6, 700, 0)
    assert manager.stats.tasks_waiting == 4
    manager.cancel_all()


@pytest.mark.timeout(90)
def test_a_worker_with_25000_forever_files_joins(manager, start_worker, tmp_path):
    """Its ready used to list them all in one header (1.5 MB here); now the listing follows in pages."""
    from core import constants as C
    from core.worker.sandbox import entry_stamp

    workdir = tmp_path / "worker0"  # where start_worker puts its first worker
    (workdir / "cache").mkdir(parents=True)
    (workdir / "cache-meta").mkdir()
    names = [f"file-{n:032x}-forever-input.dat" for n in range(25000)]
    for name in names:
        path = workdir / "cache" / name
        path.write_bytes(b"k")
        meta = {"level": C.VINE_CACHE_LEVEL_FOREVER, "size": 1, "stamp": entry_stamp(str(path))}
        (workdir / "cache-meta" / name).write_text(json.dumps(meta))
    w = start_worker(manager)
    assert w.workdir == str(workdir)
    wait_for_workers(manager, 1, timeout=60)
    held = manager._call(lambda: sorted(n for rec in manager._state.workers.values() for n in rec.replicas))
    assert held == sorted(names)
    assert_still_works(manager)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("megabytes, storage, expect", [
    (100, None, "whole"),  # over the old fixed 32 MiB: kept, as TaskVine keeps up to 1 GB
    (12, 6 << 20, "cut"),  # the tune honoured: the first 6 MiB, and the result says the rest is missing
    (3, None, "whole"),  # small enough to travel inside the complete message
], ids=["100 MB stdout", "12 MB stdout over a 6 MiB tune", "3 MB stdout inline"])
def test_big_stdout_is_kept_up_to_the_tune(megabytes: int, storage: int | None, expect: str, manager, start_worker):
    if storage is not None:
        manager.tune("max-task-stdout-storage", storage)
    start_worker(manager, cores=1)
    size = megabytes * 1000 * 1000
    t = run(manager, vine.Task(f"head -c {size} /dev/zero | tr '\\0' 'v'", cores=1), timeout=100)
    if expect == "whole":
        assert (t.result, len(t.output), t.output[:3], t.output[-3:]) == ("success", size, "vvv", "vvv")
    else:
        assert (t.result, len(t.output)) == ("stdout missing", storage)
    assert manager.stats.workers_connected == 1


@pytest.mark.parametrize("value", [NAN, INF])
def test_category_boxes_refuse_non_finite_numbers(value: float, m):
    with pytest.raises(ValueError, match="cores must be a finite number"):
        m.set_category_resources_max("non-finite", {"cores": value})
