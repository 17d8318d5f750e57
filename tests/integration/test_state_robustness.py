"""Numbers no scheduler can use, as fault tables (issue 12, point 2).

A non-finite or negative amount must be refused where it enters: the worker's command line, any
frame a peer sends (``NaN``, ``Infinity`` and ``1e999`` are valid to Python's json), a task's setters
and the manager's tunes. And if a handler still raises, the decisions it recorded before are carried
out, the event is dropped and its worker disconnected, and everyone else is still served.

The bad peer is a raw socket speaking our framing (its frames are encoded by hand, since
``core.protocol`` itself refuses to encode such numbers); the manager and the worker are the real ones.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

import core as vine
from core.protocol import PREFIX, PROTOCOL_VERSION, FrameDecoder, encode_frame, new_nonce
from core.resources import Resources
from core.scheduler import Dispatch, SchedulerState, TaskSubmitted, Tick, WorkerJoined
from tests.conftest import ROOT, run

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

def _task(tid: int) -> vine.Task:
    t = vine.Task("true", cores=1, memory=10, disk=10)
    t._id = tid
    return t


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
    assert out == [] and [ev for ev, _ in s.failed_events] == [None]
    s.failed_events.clear()
    s.workers["w"].total = good
    out = s.handle(Tick(3.0))
    assert [(i.task_id, i.worker) for i in out if isinstance(i, Dispatch)] == [(1, "w")], out
