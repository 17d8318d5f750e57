"""Fork-mode calls: the library's own loop (results through each child's pipe) and the worker's fast path.

The first tests drive a real library process (``python core/wire/library_runner.py CONFIG``) over
its unix socket directly, as the worker does, so what they see is the library socket's framing
itself: a forked call's result comes back inside its ``done`` (no result file), a result over
INLINE_RESULT still goes to the file, a child that dies without its exit record is reported with
its real status, a ``kill`` ends the child, and a grandchild holding the pipe open does not hold
the call back. The last tests go through a manager and a real worker: a cancelled forked call
(which takes the worker's sandbox-free path) has its process killed, and the library lives on.
"""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import time

import cloudpickle
import pytest

import core as vine
from core.wire.library_runner import INLINE_RESULT
from core.wire.remote import MessageReader, decode_result, encode_library_call, encode_library_message
from tests.conftest import proc_status, run, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Run from the source tree, the library runner loads remote.py from beside itself (in a sandbox: .vine_runner.py).
LIBRARY_RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "core", "wire",
                              "library_runner.py")


# --- library functions ----------------------------------------------------------------------------------


def sized(n):
    import os as _os

    return _os.getpid(), "x" * n


def die_now():
    import os as _os

    _os._exit(7)


def nap(seconds):
    import time as _time

    _time.sleep(seconds)
    return seconds


def timed_nap(seconds):
    import time as _time

    start = _time.time()
    _time.sleep(seconds)
    return start, _time.time()


def leave_grandchild():
    """Fork a grandchild that keeps every inherited descriptor (the result pipe too) and sleeps."""
    import os as _os
    import time as _time

    pid = _os.fork()
    if pid == 0:
        _time.sleep(60)
        _os._exit(0)
    return pid


def die_leaving_grandchild():
    """Fork a grandchild that keeps the result pipe open and sleeps, then end without an exit record."""
    import os as _os
    import time as _time

    pid = _os.fork()
    if pid == 0:
        _time.sleep(60)
        _os._exit(0)
    with open("grandchild.pid", "w") as fh:
        fh.write(str(pid))
    _os._exit(5)


def start_a_thread():
    """Leave a thread running in the process that runs this (a direct call: the library itself)."""
    import threading as _threading
    import time as _time

    _threading.Thread(target=_time.sleep, args=(60,), daemon=True).start()
    return _threading.active_count()


def fork_hooks_in_place():
    """Whether threading's and logging's at-fork hooks have their own bodies here (a forking
    library empties them while it serves: a call, and the forks a call makes, must see them whole)."""
    import logging as _logging
    import threading as _threading

    return (_threading._after_fork.__code__.co_name == "_after_fork"
            and _logging._after_at_fork_child_reinit_locks.__code__.co_name == "_after_at_fork_child_reinit_locks")


def nap_with_pid(path, seconds):
    import os as _os
    import time as _time

    with open(path, "w") as fh:
        fh.write(str(_os.getpid()))
    _time.sleep(seconds)
    return seconds


# --- the library process alone ------------------------------------------------------------------------------


class Library:
    """A real fork-mode library process connected to a socket this test holds, as the worker's is."""

    def __init__(self, workdir: str, slots: int = 0) -> None:
        self.dir = workdir
        config = os.path.join(workdir, ".vine_library")
        with open(config, "wb") as fh:
            cloudpickle.dump({"name": "t", "functions": {f.__name__: f for f in (sized, die_now, nap, timed_nap, leave_grandchild,
                                                                             die_leaving_grandchild, start_a_thread, fork_hooks_in_place)},
                              "hoisted": [], "context": None, "mode": "fork"}, fh)
        address = f"vine-test-lib-{os.getpid()}-{secrets.token_hex(4)}"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind("\0" + address)
        self.server.listen(1)
        self.server.settimeout(30)
        self.proc = subprocess.Popen([sys.executable, LIBRARY_RUNNER, config], cwd=workdir,
                                     env=dict(os.environ, VINE_LIBRARY_SOCKET="@" + address, VINE_LIBRARY_SLOTS=str(slots)))
        self.conn, _ = self.server.accept()
        self.conn.settimeout(30)
        self.reader = MessageReader()
        self.inbox: list[dict] = []
        ready = self.next()
        assert ready["op"] == "ready" and ready["mode"] == "fork", ready
        self.pid = ready["pid"]

    def next(self) -> dict:
        while not self.inbox:
            data = self.conn.recv(1 << 20)
            assert data, "the library hung up"
            self.inbox += self.reader.feed(data)
        return self.inbox.pop(0)

    def call(self, call_id: int, function: str, *args: object, mode: str = "fork") -> None:
        self.conn.sendall(encode_library_message({
            "op": "call", "id": call_id, "function": function, "mode": mode, "sandbox": self.dir,
            "args": pickle.dumps((list(args), {}, [])), "result": self.result_path(call_id)}))

    def compact_call(self, call_id: int, function: str, *args: object) -> None:
        """As the worker's fast path sends it: compact, only the fields that differ from the defaults."""
        self.conn.sendall(encode_library_call(call_id, "fork", {"function": function, "output_inline": True,
                                                                "args": pickle.dumps((list(args), {}, []))}))

    def result_path(self, call_id: int) -> str:
        return os.path.join(self.dir, f"result-{call_id}")

    def done(self, count: int) -> dict[int, dict]:
        out = {}
        while len(out) < count:
            msg = self.next()
            assert msg["op"] == "done", msg
            out[msg["id"]] = msg
        return out

    def close(self) -> None:
        self.conn.close()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.server.close()


@pytest.fixture
def library(tmp_path):
    lib = Library(str(tmp_path))
    try:
        yield lib
    finally:
        lib.close()


@pytest.mark.timeout(60)
def test_forked_results_come_back_inline_through_the_pipe(library):
    sizes = {1: 10, 2: 300_000, 3: INLINE_RESULT + 1000}  # 300 kB: several reads of a 64 kB pipe
    for cid, n in sizes.items():
        library.call(cid, "sized", n)
    done = library.done(3)
    for cid in (1, 2):
        assert done[cid]["status"] == 0 and done[cid]["result"] is not None
        assert not os.path.exists(library.result_path(cid)), "a small result went through a file"
        ok, (pid, text), _tb = decode_result(done[cid]["result"])
        assert ok and text == "x" * sizes[cid]
        assert pid != library.pid  # the call ran in a process of its own
    assert done[3]["status"] == 0 and done[3]["result"] is None  # too big for the message: the result file
    with open(library.result_path(3), "rb") as fh:
        ok, (_pid, text), _tb = decode_result(fh.read())
    assert ok and len(text) == sizes[3]


@pytest.mark.timeout(60)
def test_a_child_without_its_exit_record_is_reported_with_its_status(library):
    library.call(1, "die_now")
    library.call(2, "nap", 30)
    library.conn.sendall(encode_library_message({"op": "kill", "id": 2}))
    done = library.done(2)
    assert done[1]["status"] == 7 and done[1]["result"] is None
    assert done[2]["status"] == -signal.SIGKILL and done[2]["result"] is None
    library.call(3, "sized", 1)  # and the library goes on serving
    assert library.done(1)[3]["status"] == 0


@pytest.mark.timeout(60)
def test_a_grandchild_holding_the_pipe_does_not_hold_the_call(library):
    start = time.monotonic()
    library.call(1, "leave_grandchild")
    done = library.done(1)[1]
    grandchild = None
    try:
        assert done["status"] == 0
        ok, grandchild, _tb = decode_result(done["result"])
        assert ok and isinstance(grandchild, int)
        assert time.monotonic() - start < 30, "the call waited for its grandchild"  # it sleeps 60 s
        library.call(2, "sized", 5)
        assert library.done(1)[2]["status"] == 0
    finally:
        if grandchild:
            os.kill(grandchild, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_child_that_dies_without_its_record_while_a_grandchild_holds_its_pipe_is_reported(library):
    """No SIGCHLD handler: the library looks for ended children when a round reported one, saw a
    pipe end, or had no events for REAP_CHECK. Here the pipe never ends (the grandchild holds it)."""
    start = time.monotonic()
    library.call(1, "die_leaving_grandchild")
    done = library.done(1)[1]
    with open(os.path.join(library.dir, "grandchild.pid")) as fh:
        grandchild = int(fh.read())
    try:
        assert done["status"] == 5 and done["result"] is None
        assert time.monotonic() - start < 20, "the call's end waited for its grandchild"  # it sleeps 60 s
        library.compact_call(2, "sized", 3)
        ok, (_pid, text), _tb = decode_result(library.done(1)[2]["result"])
        assert ok and text == "xxx"
    finally:
        os.kill(grandchild, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_calls_and_their_forks_see_the_at_fork_hooks_whole(library):
    """The library keeps the idle at-fork hooks empty while it serves (remote.silence_fork_hooks):
    a forked call gets them back, a direct call runs with them whole, and a direct call that leaves
    a thread running makes the next forks plain ones (the hooks then have work to do)."""
    library.call(1, "fork_hooks_in_place")
    library.call(2, "fork_hooks_in_place", mode="direct")
    library.call(3, "start_a_thread", mode="direct")
    library.call(4, "fork_hooks_in_place")
    library.call(5, "sized", 2)
    done = library.done(5)
    for cid in (1, 2, 4):
        ok, whole, _tb = decode_result(done[cid]["result"])
        assert ok and whole is True, (cid, whole)
    ok, threads, _tb = decode_result(done[3]["result"])
    assert ok and threads >= 2
    ok, (pid, text), _tb = decode_result(done[5]["result"])
    assert ok and text == "xx" and pid != library.pid


@pytest.mark.timeout(60)
def test_forked_calls_beyond_the_slots_wait_in_the_library(tmp_path):
    lib = Library(str(tmp_path), slots=2)
    try:
        for cid in range(1, 6):
            lib.call(cid, "timed_nap", 0.4)
        lib.conn.sendall(encode_library_message({"op": "kill", "id": 5}))  # still waiting: never runs
        done = lib.done(5)
    finally:
        lib.close()
    assert done[5]["status"] == -signal.SIGKILL and done[5]["result"] is None
    spans = []
    for cid in range(1, 5):
        assert done[cid]["status"] == 0
        ok, span, _tb = decode_result(done[cid]["result"])
        spans.append(span)
    for start, _end in spans:  # at no call's start were more than two calls running
        assert sum(1 for s, e in spans if s <= start < e) <= 2, spans
    assert max(e for _s, e in spans) - min(s for s, _e in spans) >= 0.8  # four 0.4 s calls, two at a time


def _anonymous_kb(pid: int) -> int:
    return int(proc_status(pid, "RssAnon").split()[0])


@pytest.mark.timeout(120)
def test_a_library_that_forks_per_call_does_not_grow(library):
    """Reads of a child's pipe and of the socket ask for READ_CHUNK (core/wire/remote.py), not 1 MiB:
    with 1 MiB reads the library's anonymous memory crept up (glibc's heap, not Python objects:
    tracemalloc saw nothing), about 930 kB over these 2,000 calls, which every later fork copied
    the page tables of. Two calls in flight, as a library with two slots' worth of queued calls has."""
    def calls(first: int, count: int) -> None:
        ids = list(range(first, first + count))
        library.call(ids[0], "sized", 1)
        ended = []
        for cid in ids[1:]:
            library.call(cid, "sized", 1)
            ended += library.done(1).values()
        ended += library.done(1).values()
        assert sorted(m["id"] for m in ended) == ids and all(m["status"] == 0 for m in ended)

    calls(1, 300)  # warm: the allocator's pools and the interpreter's caches in place
    before = _anonymous_kb(library.pid)
    calls(1000, 2000)
    grown = _anonymous_kb(library.pid) - before
    assert grown < 256, f"the library's anonymous memory grew by {grown} kB over 2,000 forked calls"


# --- through the manager and a worker ------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_cancelled_forked_call_has_its_process_killed(manager, start_worker, tmp_path):
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("naps", nap_with_pid, sized, exec_mode="fork")
    lib.set_function_slots(2)
    manager.install_library(lib)
    assert run(manager, vine.FunctionCall("naps", "sized", 1)).output[1] == "x"  # the instance is ready
    marker = str(tmp_path / "pid")
    doomed = vine.FunctionCall("naps", "nap_with_pid", marker, 60)  # no limits, no files: the sandbox-free path
    manager.submit(doomed)
    wait_until(lambda: os.path.exists(marker) and os.path.getsize(marker) > 0, 30, "the call to start")
    with open(marker) as fh:
        pid = int(fh.read())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    manager.cancel_by_task_id(doomed.id)
    wait_until(gone, 30, "the cancelled call's process to end")
    t = manager.wait_for_task_id(doomed.id, 30)
    assert t is not None and t.result == "cancelled"
    after = run(manager, vine.FunctionCall("naps", "sized", 2))
    assert after.output[1] == "xx" and manager.stats.libraries_started == 1
