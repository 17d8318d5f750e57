"""The two small hand-offs of the worker's callback paths, on their own.

``CallWaiter`` (core/worker/python.py) ends a fast-path FunctionCall in the read that brings its
``done``; ``ForkRequest`` (core/worker/forkserver.py) carries a plain PythonTask's start and end
from the fork server's channel. Both must end a task exactly once, and a cancel must still kill
the process (here a real one) when its pid arrives after the cancel.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest

from core.worker.forkserver import ForkServer
from core.worker.python import CallWaiter


def test_a_call_waiter_ends_at_once_and_only_once():
    ends = []
    w = CallWaiter(lambda f: ends.append((f.cancelled(), f.result())))
    assert not w.done()
    w.set_result(3)
    assert ends == [(False, 3)] and w.done() and w.result() == 3
    w.set_result(4)
    assert not w.cancel()
    assert ends == [(False, 3)]


def test_a_call_waiter_cancelled_or_ended_by_its_instance_ends_in_the_next_turn():
    async def main():
        ends = []
        cancelled = CallWaiter(lambda f: ends.append(("cancel", f.cancelled())))
        died = CallWaiter(lambda f: ends.append(("died", f.result())))
        assert cancelled.cancel()
        died.end_soon(None)
        died.set_result(0)  # too late: it ended already
        assert ends == []  # not inside the caller (Worker.kill, LibraryProcess.die)
        await asyncio.sleep(0)
        return ends

    assert asyncio.run(main()) == [("cancel", True), ("died", None)]


class _Transport:
    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)


class _Channel:
    def __init__(self):
        self.transport = _Transport()


class _Proc:
    returncode = None

    def poll(self):
        return None


def _server():
    s = ForkServer()
    s._channel, s._proc = _Channel(), _Proc()
    s._base_env = {"PATH": "/usr/bin"}
    return s


def test_a_fork_request_is_written_and_its_ends_called_back():
    s = _server()
    got = []
    req = s.start(7, "/sandbox", {"PATH": "/usr/bin", "CORES": "1"}, "/sandbox/.vine-stdout", {"function": "f"},
                  lambda pid: got.append(("started", pid)), lambda status: got.append(("ended", status)))
    assert req is not None and len(s._channel.transport.written) == 1
    assert b'"CORES"' in s._channel.transport.written[0]  # the environment goes as its difference
    s._reply(7, 4242, None, None)
    s._reply(7, None, 0, b"result")
    assert got == [("started", 4242), ("ended", 0)]
    assert s.take_result(7) == b"result" and s.take_result(7) is None
    s._reply(7, None, 0, None)  # a second end for the same id changes nothing
    assert got == [("started", 4242), ("ended", 0)]


def test_a_fork_request_is_not_sent_to_a_server_that_is_not_running():
    s = ForkServer()
    assert s.start(1, "/s", {}, "/s/out", {}, lambda pid: None, lambda status: None) is None


def test_a_lost_server_ends_its_requests_saying_whether_they_started():
    s = _server()
    got = []
    s.start(1, "/s", {}, "/s/o", {}, lambda pid: None, lambda status: got.append((1, status)))
    s.start(2, "/s", {}, "/s/o", {}, lambda pid: None, lambda status: got.append((2, status)))
    s._reply(2, 99999999, None, None)  # task 2 was named; task 1 never was
    s._proc = None  # (nothing to kill or wait for)
    s._channel_lost(s._channel)
    assert sorted(got) == [(1, None), (2, -signal.SIGKILL)]


@pytest.mark.timeout(30)
def test_a_request_cancelled_before_its_pid_came_has_its_process_killed_when_it_comes():
    s = _server()
    got = []
    req = s.start(5, "/s", {}, "/s/o", {}, lambda pid: got.append(pid), lambda status: got.append(status))
    assert req is not None and req.cancel()
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a process group of its own, as a fork child's
    try:
        s._reply(5, child.pid, None, None)
        assert child.wait(20) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    s._reply(5, None, -signal.SIGKILL, None)
    assert got == []  # neither end of a cancelled request is called
