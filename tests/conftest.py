"""Fixtures shared by every test: a manager on a free port and real worker processes, always reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests that press Ctrl-C (a real SIGINT to this process or to a child) test what a user at a
# terminal gets. A shell that starts a command in the background without job control (`cmd &` in a
# script, as a CI launcher may) starts it with SIGINT ignored, and Python then keeps it ignored, in
# this process and in every child it spawns; give the suite the terminal's KeyboardInterrupt back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class WorkerProcess:
    """A real ``vine_worker`` process connected to a manager on localhost."""

    def __init__(self, port: int, workdir: str, cores: float = 1, memory: float = 1000, disk: float = 2000,
                 extra: list[str] | None = None, log_file: str | None = None) -> None:
        self.workdir = workdir
        self.log_file = log_file or os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log")
        cmd = [sys.executable, "-m", "core.worker", "--cores", str(cores), "--memory", str(memory), "--disk", str(disk),
               "--workdir", workdir, "--timeout", "60", "--debug", "all", "--debug-file", self.log_file,
               *(extra or []), "localhost", str(port)]
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def reap(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def manager(tmp_path) -> Iterator["object"]:
    import core

    m = core.Manager(port=0, run_info_path=str(tmp_path / "vine-run-info"))
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []
    counter = iter(range(1000))

    def start(m: "object", **kw: object) -> WorkerProcess:
        n = next(counter)
        w = WorkerProcess(m.port, str(tmp_path / f"worker{n}"), **kw)  # type: ignore[attr-defined, arg-type]
        started.append(w)
        return w

    yield start
    for w in started:
        w.reap()



@pytest.fixture
def orphans() -> Iterator[list[int]]:
    """Pids of task processes a dead or stopped worker may leave behind; killed at teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fail_if_tasks_left(m: "object", what: str) -> None:
    """For fixtures that share one manager across a module: cancel, collect and fail on leftovers."""
    if not m.empty():  # type: ignore[attr-defined]
        m.cancel_all()  # type: ignore[attr-defined]
        drain(m, 30)
        pytest.fail(f"the test left tasks in {what}")

def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll a cheap predicate (manager counters) until it holds; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def proc_status(pid: int, field: str, tid: int | None = None) -> str:
    """The value of ``field`` (``VmHWM``, ``RssAnon``, ``SigBlk``...) in ``/proc/PID/status``, or in
    ``/proc/PID/task/TID/status`` for one thread: the text after the colon, stripped."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path) as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name == field:
                return value.strip()
    raise AssertionError(f"no {field} line in {path}")


def process_gone(p: "object") -> bool:
    """Whether the process ``p`` (a pid or a psutil.Process) has exited: gone or a zombie. Its parent may
    reap it between any two psutil calls, so one that finds no process at all also means gone."""
    import psutil

    try:
        if isinstance(p, int):
            p = psutil.Process(p)
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE  # type: ignore[attr-defined]
    except psutil.NoSuchProcess:
        return True


def children_running(pid: int, marker: str, recursive: bool = False) -> list["object"]:
    """The children (all descendants with ``recursive``) of process ``pid`` whose command line
    holds ``marker``; one that exits while it is asked (between the listing and its command line)
    is left out, not an error."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=recursive):
        try:
            if marker in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # (a zombie's ZombieProcess is one)
            continue
    return found


def wait_for_workers(m: "object", n: int, timeout: float = 30) -> None:
    wait_until(lambda: m.stats.workers_connected >= n, timeout, f"{n} worker(s) to connect")  # type: ignore[attr-defined]


def drain(m: "object", timeout: float = 60) -> list["object"]:
    """Wait for every submitted task; returns them in completion order."""
    out = []
    deadline = time.monotonic() + timeout
    while not m.empty():  # type: ignore[attr-defined]
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"tasks still pending after {timeout}s")
        t = m.wait(min(left, 5))  # type: ignore[attr-defined]
        if t is not None:
            out.append(t)
    return out


def run(m: "object", task: "object", timeout: float = 60) -> "object":
    """Submit one task and wait for exactly that task; fail if it does not finish in ``timeout`` s."""
    tid = m.submit(task)  # type: ignore[attr-defined]
    t = m.wait_for_task_id(tid, timeout)  # type: ignore[attr-defined]
    assert t is not None, f"task {tid} did not finish within {timeout}s"
    return t
