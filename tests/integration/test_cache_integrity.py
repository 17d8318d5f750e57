"""The worker's cache and sandboxes under careless tasks, as fault tables (issue 12, points 4, 5, 6, 13).

- CACHE_FAULTS: a task changes its input (appends, overwrites in place, writes through a symlink,
  climbs out of a directory input); the next task on that worker reads exactly what was sent.
- A ``forever`` input changed by a task whose worker is SIGKILLed before it could check: the next
  worker on that workspace does not offer the changed copy.
- DEATH_FAULTS: a worker SIGKILLed with running tasks takes their processes with it.
- OUTPUT_FAULTS: an output written back onto a path that holds something else never destroys it;
  only that task fails, and the worker stays.
- NAME_FAULTS: remote names that are not a place inside the sandbox are refused at add_input/add_output.
- LEFTOVER_FAULTS: an input still in transit when its task is cancelled, or its file undeclared, is
  removed from the worker when it lands, not at the end of the workflow.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import core as vine
from tests.conftest import WorkerProcess, drain, run, wait_for_workers, wait_until

BIG = 2 << 20  # over worker_sandbox.SANDBOX_COPY_MAX: hard-linked, not copied


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- point 4: what a task does to its inputs stays in its sandbox --------------------------------------


@dataclass
class CacheFault:
    name: str
    spoil: str  # a command that tries to change the input (must exit 0)
    read: str  # a command printing what the next task sees
    data: bytes | dict[str, bytes]  # the input: a file's bytes, or a directory's files
    mount_symlink: bool = False

    def expected(self) -> str:
        if isinstance(self.data, dict):
            return "".join(self.data[k].decode() for k in sorted(self.data))
        return _md5(self.data) + "\n" if len(self.data) > 100 else self.data.decode()


ORIGINAL_BIG = os.urandom(BIG)
MD5_BIG = "md5sum < big.bin | cut -d' ' -f1"

CACHE_FAULTS = [
    CacheFault("append to a small input", "echo spoiled >> in.txt", "cat in.txt", b"original\n"),
    CacheFault("truncate a small input", ": > in.txt", "cat in.txt", b"original\n"),
    CacheFault("append to a large input", "echo spoiled >> big.bin", MD5_BIG, ORIGINAL_BIG),
    CacheFault("overwrite a large input in place, same size", "printf XXXX | dd of=big.bin conv=notrunc status=none",
               MD5_BIG, ORIGINAL_BIG),
    CacheFault("append through a mount_symlink input", "echo spoiled >> in.txt", "cat in.txt", b"original\n", mount_symlink=True),
    CacheFault("change, add and climb out of a directory input",
               # `d/..` must be the sandbox itself, not the worker's cache directory.
               'test "$(cd d/.. && pwd -P)" = "$(pwd -P)" && echo spoiled >> d/a.txt && echo new > d/b.txt && echo evil > d/../evil',
               "cat d/*", {"a.txt": b"first\n"}),
]


def _declare_input(m: Any, tmp_path: Any, fault: CacheFault, cache: str = "workflow") -> tuple[Any, str]:
    if isinstance(fault.data, dict):
        d = tmp_path / "d"
        d.mkdir()
        for name, data in fault.data.items():
            (d / name).write_bytes(data)
        return m.declare_file(str(d), cache=cache), "d"
    remote = "big.bin" if len(fault.data) > 100 else "in.txt"
    path = tmp_path / remote
    path.write_bytes(fault.data)
    return m.declare_file(str(path), cache=cache), remote


@pytest.mark.parametrize("fault", CACHE_FAULTS, ids=lambda f: f.name)
def test_a_task_cannot_change_the_cache(fault, manager, start_worker, tmp_path):
    w = start_worker(manager, cores=1)
    f, remote = _declare_input(manager, tmp_path, fault)
    spoil = vine.Task(fault.spoil)
    spoil.add_input(f, remote, mount_symlink=fault.mount_symlink)
    t = run(manager, spoil)
    assert (t.result, t.exit_code) == ("success", 0), t.output
    reader = vine.Task(fault.read)
    reader.add_input(f, remote)
    t = run(manager, reader)
    assert (t.result, t.exit_code, t.output) == ("success", 0, fault.expected())
    cache = os.path.join(w.workdir, "cache")
    assert "evil" not in os.listdir(cache), "a task wrote into the worker's cache directory"


def test_a_peer_never_receives_a_changed_copy(manager, start_worker):
    """A temp made on worker A is changed by the next task there: worker B, reading it next, gets
    what its producer made (A dropped its copy; the producer ran again), not the changed bytes."""
    start_worker(manager, extra=["--feature", "a"])
    start_worker(manager, extra=["--feature", "b"])
    wait_for_workers(manager, 2)
    temp = manager.declare_temp()
    steps = [("head -c 2097152 /dev/zero | tr '\\0' x > out", "a", "out"), ("echo spoiled >> in", "a", "in"), ("md5sum < in", "b", "in")]
    for command, feature, remote in steps:
        t = vine.Task(command)
        (t.add_output if remote == "out" else t.add_input)(temp, remote)
        t.add_feature(feature)
        t = run(manager, t)
        assert (t.result, t.exit_code) == ("success", 0)
    assert t.output.split()[0] == _md5(b"x" * BIG)


@pytest.mark.timeout(60)
def test_changed_forever_input_is_not_offered_by_the_next_worker(manager, tmp_path, orphans):
    """A task changes a `forever` input and its worker is SIGKILLed before the after-task check:
    the worker started next on that workspace drops the changed copy instead of announcing it."""
    workdir = str(tmp_path / "workspace")
    src = tmp_path / "big.bin"
    src.write_bytes(ORIGINAL_BIG)
    f = manager.declare_file(str(src), cache="forever")
    marker, pidfile = tmp_path / "spoiled", tmp_path / "pid"
    cmd = f"if [ ! -e {marker} ]; then echo spoiled >> big.bin; touch {marker}; echo $$ > {pidfile}; exec sleep 300; fi"
    first = WorkerProcess(manager.port, workdir)
    second = None
    try:
        t = vine.Task(cmd)
        t.add_input(f, "big.bin")
        tid = manager.submit(t)
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 30, "the spoiling task to start")
        orphans.append(int(pidfile.read_text()))
        first.kill(signal.SIGKILL)
        first.proc.wait(10)
        second = WorkerProcess(manager.port, workdir)
        done = manager.wait_for_task_id(tid, 30)
        assert done is not None and done.result == "success"
        reader = vine.Task(MD5_BIG)
        reader.add_input(f, "big.bin")
        t = run(manager, reader)
        assert (t.result, t.output) == ("success", _md5(ORIGINAL_BIG) + "\n")
    finally:
        first.reap()
        if second is not None:
            second.reap()


# --- point 5: a SIGKILLed worker's tasks die with it ---------------------------------------------------


def _pids_of_shell_task(m: Any, pidfile: Any) -> int:
    # The shell and a child it started in the background: the whole tree must go.
    return m.submit(vine.Task(f"sleep 300 & echo $! > {pidfile}; echo $$ >> {pidfile}; wait"))


def _record_pid_and_sleep(pidfile: str) -> None:
    import os as _os
    import time as _time

    with open(pidfile, "w") as fh:
        fh.write(f"{_os.getpid()}\n")
    _time.sleep(300)


def _pids_of_python_task(m: Any, pidfile: Any) -> int:
    return m.submit(vine.PythonTask(_record_pid_and_sleep, str(pidfile)))


@dataclass
class DeathFault:
    name: str
    submit: Callable[[Any, Any], int]
    pids: int  # how many pids the task records


DEATH_FAULTS = [
    DeathFault("shell task and its background child", _pids_of_shell_task, 2),
    DeathFault("PythonTask forked by the fork server", _pids_of_python_task, 1),
]


@pytest.mark.parametrize("fault", DEATH_FAULTS, ids=lambda f: f.name)
@pytest.mark.timeout(60)
def test_task_processes_die_with_a_sigkilled_worker(fault, manager, start_worker, tmp_path, orphans):
    w = start_worker(manager, cores=1)
    pidfile = tmp_path / "pids"
    fault.submit(manager, pidfile)
    wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == fault.pids, 30, "the task to record its pids")
    pids = [int(p) for p in pidfile.read_text().split()]
    orphans.extend(pids)
    assert all(_alive(p) for p in pids)
    w.kill(signal.SIGKILL)
    wait_until(lambda: not any(_alive(p) for p in pids), 10, f"task processes {pids} to die with their worker")
    manager.cancel_all()


# --- point 6: an output never destroys what is at its path --------------------------------------------


@dataclass
class OutputFault:
    name: str
    setup: Callable[[Any], str]  # prepares tmp_path, returns the declared output path
    command: str
    remote: str
    result: str
    check: Callable[[str], None]  # on the output path afterwards


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _existing_dir(tmp: Any) -> str:
    d = tmp / "results"
    (d / "sub").mkdir(parents=True)
    (d / "keep.txt").write_text("the user's\n")
    (d / "sub" / "deep.txt").write_text("deep\n")
    return str(d)


def _existing_file(tmp: Any) -> str:
    p = tmp / "results"
    p.write_text("the user's\n")
    return str(p)


def _dir_untouched(path: str) -> None:
    assert sorted(os.listdir(path)) == ["keep.txt", "sub"]
    assert _read(os.path.join(path, "keep.txt")) == "the user's\n"
    assert _read(os.path.join(path, "sub", "deep.txt")) == "deep\n"


def _file_untouched(path: str) -> None:
    assert os.path.isfile(path) and _read(path) == "the user's\n"


def _merged(path: str) -> None:
    assert sorted(os.listdir(path)) == ["keep.txt", "new.txt", "sub"]
    assert _read(os.path.join(path, "keep.txt")) == "made\n"  # a same-named file is the output's
    assert _read(os.path.join(path, "sub", "deep.txt")) == "deep\n"  # the rest is untouched
    assert _read(os.path.join(path, "new.txt")) == "new\n"


OUTPUT_FAULTS = [
    OutputFault("file output onto an existing directory", _existing_dir, "echo made > out", "out",
                "output transfer error", _dir_untouched),
    OutputFault("directory output onto an existing file", _existing_file, "mkdir out && echo made > out/x", "out",
                "output transfer error", _file_untouched),
    OutputFault("directory output with a file where a directory is", _existing_dir,
                "mkdir out && echo made > out/sub", "out", "output transfer error", _dir_untouched),
    OutputFault("directory output merged into an existing directory", _existing_dir,
                "mkdir out && echo made > out/keep.txt && echo new > out/new.txt", "out", "success", _merged),
    OutputFault("output whose parent directory is a file", lambda tmp: _existing_file(tmp) + "/out", "echo made > out", "out",
                "output transfer error", lambda path: _file_untouched(os.path.dirname(path))),
]


@pytest.mark.parametrize("fault", OUTPUT_FAULTS, ids=lambda f: f.name)
def test_output_never_destroys_what_is_at_its_path(fault, manager, start_worker, tmp_path):
    start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    path = fault.setup(tmp_path)
    t = vine.Task(fault.command)
    t.add_output(manager.declare_file(path), fault.remote)
    t = run(manager, t)
    assert t.result == fault.result
    fault.check(path)
    assert manager.stats.workers_connected == 1, "the worker was dropped for the manager's own problem"
    t = run(manager, vine.Task("echo still working"))
    assert (t.result, t.output) == ("success", "still working\n")


# --- point 13: names that are not a place inside the sandbox ------------------------------------------


@dataclass
class NameFault:
    name: str
    remote: str
    message: str
    as_output: bool = False
    first: str | None = None  # a name already used in the same task


NAME_FAULTS = [
    NameFault("dot", ".", "'.' part"),
    NameFault("dot dot", "..", "no '..'"),
    NameFault("climbs out", "a/../../b", "no '..'"),
    NameFault("absolute", "/etc/passwd", "no leading '/'"),
    NameFault("dot inside", "a/./b", "'.' part"),
    NameFault("doubled slash", "a//b", "empty part"),
    NameFault("trailing slash", "a/", "empty part"),
    NameFault("NUL", "a\0b", "NUL"),
    NameFault("the worker's stdout file", ".vine-stdout", "worker's own sandbox files"),
    NameFault("the worker's temp directory", ".taskvine.tmp/x", "worker's own sandbox files"),
    NameFault("an environment's link", "__vine_env_x", "worker's own sandbox files"),
    NameFault("the worker's stdout file as output", ".vine-stdout", "worker's own sandbox files", as_output=True),
    NameFault("two inputs under one name", "in", "already taken", first="in"),
    NameFault("an input inside another", "in/x", "overlap", first="in"),
    NameFault("two outputs under one name", "out", "already taken", as_output=True, first="out"),
]


@pytest.mark.parametrize("fault", NAME_FAULTS, ids=lambda f: f.name)
def test_bad_remote_names_are_refused(fault, manager):
    t = vine.Task("true")
    add = t.add_output if fault.as_output else t.add_input
    if fault.first is not None:
        add(manager.declare_buffer(b"first"), fault.first)
    with pytest.raises(ValueError, match=fault.message):
        add(manager.declare_buffer(b"x"), fault.remote)
    assert len(t.outputs if fault.as_output else t.inputs) == (1 if fault.first else 0)


# --- point 13: leftovers of inputs still in transit -----------------------------------------------------


class _HeldServer:
    """An HTTP server whose one file is sent only once ``release`` is set (the input stays in transit)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.release = threading.Event()
        self.sent = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                held.requested.set()
                held.release.wait(30)
                body = b"held input\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                held.sent.set()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/input"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def held_server() -> Iterator[_HeldServer]:
    s = _HeldServer()
    try:
        yield s
    finally:
        s.close()


def _cancelled_in_transit(m: Any, held: _HeldServer, tmp: Any) -> list[str]:
    f = m.declare_url(held.url, cache=False)
    t = vine.Task("cat in.txt")
    t.add_input(f, "in.txt")
    tid = m.submit(t)
    assert held.requested.wait(30), "the worker never asked for the input"
    assert m.cancel_by_task_id(tid)
    return [f.cache_name]


def _pruned_in_transit(m: Any, held: _HeldServer, tmp: Any) -> list[str]:
    f = m.declare_url(held.url, cache="workflow")
    t = vine.Task("cat in.txt")
    t.add_input(f, "in.txt")
    tid = m.submit(t)
    assert held.requested.wait(30), "the worker never asked for the input"
    m.prune_file(f)  # still declared: the manager's unlink reaches the worker while the file is on its way
    m.cancel_by_task_id(tid)  # a workflow-level file must go because it was pruned, not with its task
    return [f.cache_name]


def _undeclared_before_dispatch(m: Any, held: _HeldServer, tmp: Any) -> list[str]:
    (tmp / "in.txt").write_text("x\n")
    files = [m.declare_buffer(b"buffer\n", cache="workflow"), m.declare_file(str(tmp / "in.txt"), cache="workflow")]
    t = vine.Task("cat a b")
    t.add_input(files[0], "a")
    t.add_input(files[1], "b")
    t.set_time_start(int((time.time() + 0.3) * 1e6))  # not dispatched before the files are undeclared
    m.submit(t)
    for f in files:
        m.undeclare_file(f)
    held.release.set()
    held.sent.set()  # (no URL here)
    return [f.cache_name for f in files]


@dataclass
class LeftoverFault:
    name: str
    scenario: Callable[[Any, _HeldServer, Any], list[str]]  # returns the cache names that must go


LEFTOVER_FAULTS = [
    LeftoverFault("task cancelled while its input is in transit", _cancelled_in_transit),
    LeftoverFault("file pruned while in transit", _pruned_in_transit),
    LeftoverFault("files undeclared before their task was dispatched", _undeclared_before_dispatch),
]


@pytest.mark.parametrize("fault", LEFTOVER_FAULTS, ids=lambda f: f.name)
@pytest.mark.timeout(60)
def test_leftover_inputs_are_removed_promptly(fault, manager, start_worker, held_server, tmp_path):
    w = start_worker(manager, cores=1)
    names = fault.scenario(manager, held_server, tmp_path)
    drain(manager, 30)
    held_server.release.set()
    assert held_server.sent.wait(30)
    cache = os.path.join(w.workdir, "cache")
    # Sent: it lands (from its .part file, for a URL) and must then go, while the workflow goes on.
    wait_until(lambda: not any(n.startswith(tuple(names)) for n in os.listdir(cache)), 10,
               f"{names} to be removed from the worker once they landed")
    t = run(manager, vine.Task("echo still working"))
    assert t.result == "success"
