"""A plain command task runs in the worker with no coroutine (core/worker/main.py ``_start_command``,
core/worker/commands.py ``CommandProcesses.start``): its shell is spawned from the message's
handler, its end is the pidfd's callback, and its ``complete`` is sent from there (or from a
coroutine when an output is sent back or the stdout must be streamed); a task whose input is still
on its way runs in a coroutine as before.

These tests run every way such a task can end through real workers, with and without spawner
threads, and check the results, that the worker keeps no descriptor (pidfd, stdout file: a killed
task's and a mini-task's were kept before) and no zombie child afterwards, and that a worker SIGKILLed in the middle loses no task.
"""

from __future__ import annotations

import os
import signal

import pytest

import core as vine
from tests.conftest import drain, proc_status, wait_for_workers, wait_until

STDOUT_BIG = 5_000_000  # over the worker's STDOUT_INLINE (4 MiB): streamed ahead of the complete


def _open_fds(pid: int) -> list[str]:
    """What the process ``pid`` holds open (a descriptor's target: a file, pipe:[..], anon_inode:[pidfd])."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if "pidfd" in target:
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    target += " " + " ".join(line.strip() for line in fh if line.startswith(("Pid", "NSpid")))
            found.append(target)
        except FileNotFoundError:
            pass
    return sorted(found)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, state letter) of each child of ``pid``."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as fh:
            for child in fh.read().split():
                try:
                    with open(f"/proc/{child}/stat") as st:
                        found.append((int(child), st.read().rpartition(")")[2].split()[0]))
                except FileNotFoundError:
                    pass
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spawn_threads", ["0", "2"])
def test_every_ending_of_a_plain_command(manager, start_worker, tmp_path, spawn_threads):
    w = start_worker(manager, cores=2, extra=["--spawn-threads", spawn_threads])
    wait_for_workers(manager, 1)
    for _ in range(4):
        manager.submit(vine.Task("true"))
    drain(manager, 30)
    baseline = _open_fds(w.pid)

    expected: dict[int, tuple[str, int | None, str | None]] = {}  # task id -> (result, exit code, stdout)

    def submit(task: vine.Task, result: str, code: int | None = None, stdout: str | None = None) -> vine.Task:
        task.set_cores(1)  # two at a time
        expected[manager.submit(task)] = (result, code, stdout)
        return task

    for i in range(30):
        submit(vine.Task(f"echo plain-{i}"), "success", 0, f"plain-{i}\n")
    for _ in range(4):
        submit(vine.Task("exit 3"), "success", 3, "")
    for _ in range(3):
        submit(vine.Task("kill -9 $$"), "signal", 9)
    for _ in range(2):
        t = vine.Task("sleep 30")
        t.set_time_max(0.5)
        submit(t, "max wall time")
    for _ in range(2):
        submit(vine.Task(f"head -c {STDOUT_BIG} /dev/zero | tr '\\0' y"), "success", 0, "y" * STDOUT_BIG)
    for _ in range(2):
        t = vine.Task("true")
        t.add_output(manager.declare_temp(), "never-made")
        submit(t, "output missing")
    sent_back = []
    for i in range(3):
        f = manager.declare_file(str(tmp_path / f"out-{i}"))
        t = vine.Task(f"echo back-{i} > out")
        t.add_output(f, "out")
        submit(t, "success", 0, "")
        sent_back.append(i)
    for i in range(2):  # an input a mini-task makes: the task waits for it in a coroutine (the general path)
        made = manager.declare_minitask(vine.Task(f"echo made-{i} > produced"), "produced")
        t = vine.Task("cat made")
        t.add_input(made, "made")
        submit(t, "success", 0, f"made-{i}\n")
    started = tmp_path / "started"
    started.mkdir()
    cancelled = []
    for i in range(2):
        t = vine.Task(f"touch {started}/{i}; sleep 30")
        t.set_cores(1)
        cancelled.append(manager.submit(t))

    wait_until(lambda: len(os.listdir(started)) == 2, 60, "the tasks to cancel to start")
    for tid in cancelled:
        assert manager.cancel_by_task_id(tid)
    done = drain(manager, 90)

    by_id = {t.id: t for t in done}
    assert sorted(by_id) == sorted([*expected, *cancelled])
    for tid in cancelled:
        assert by_id[tid].result == "cancelled"
    for tid, (result, code, stdout) in expected.items():
        t = by_id[tid]
        assert t.result == result, (t.command, t.result, t.std_output[:200])
        if code is not None:
            assert t.exit_code == code, t.command
        if stdout is not None:
            assert t.std_output == stdout, t.command
    for i in sent_back:
        assert (tmp_path / f"out-{i}").read_text() == f"back-{i}\n"

    # Nothing kept but what is meant to be: no pidfd, no stdout file of an ended or killed task; only
    # the empty .vine-stdout of a recycled sandbox, one each (core/worker/sandbox.py kept_stdout).
    # Every shell reaped: the guardian is the worker's one child (core/worker/reaper.py).
    def settled() -> bool:
        held = _open_fds(w.pid)
        stdout = [fd for fd in held if fd.endswith("/.vine-stdout")]
        others = [fd for fd in held if not fd.endswith("/.vine-stdout")]
        if len(stdout) != len(set(stdout)) or any("(deleted)" in fd or "pidfd" in fd for fd in held):
            return False
        return len(others) <= len([fd for fd in baseline if not fd.endswith("/.vine-stdout")])

    wait_until(settled, 20, f"the worker's descriptors back to {baseline} (it holds {_open_fds(w.pid)})")
    for fd in _open_fds(w.pid):
        if fd.endswith("/.vine-stdout"):
            assert os.path.getsize(fd) == 0, fd
    wait_until(lambda: len(_children(w.pid)) == 1, 20, "the worker's task shells to be reaped")
    assert all(state != "Z" for _pid, state in _children(w.pid))


@pytest.mark.timeout(120)
def test_a_worker_killed_among_plain_commands_loses_none(manager, start_worker, tmp_path, orphans):
    doomed = start_worker(manager, cores=2)
    wait_for_workers(manager, 1)
    started = tmp_path / "started"
    started.mkdir()
    ids = {}
    for i in range(12):
        t = vine.Task(f"touch {started}/$$; sleep 0.3; echo link-{i}")
        t.set_cores(1)
        ids[manager.submit(t)] = i
    wait_until(lambda: len(os.listdir(started)) >= 2, 60, "tasks to start on the first worker")
    orphans.extend(int(p) for p in os.listdir(started))
    doomed.kill(signal.SIGKILL)
    start_worker(manager, cores=2)
    done = drain(manager, 90)
    assert sorted(t.id for t in done) == sorted(ids)
    for t in done:
        assert t.result == "success", (t.id, t.result)
        assert t.std_output == f"link-{ids[t.id]}\n"


@pytest.mark.timeout(120)
def test_a_tasks_end_leaves_before_the_spawn_of_the_task_taking_its_slot(manager, start_worker, tmp_path):
    """On a 1-core worker with prefetching, each task starts in its predecessor's slot, from the
    handler of the predecessor's end. The end's ``complete`` is written before that spawn (the
    next task has no inputs: one with inputs may be a chain's next link, whose start the write
    would only delay), and the spawn holds the worker's loop until the shell has exec'd, so the
    manager can read the end while the next task is still starting. Written after the spawn (as
    before), the manager could never read a task's end before the start time of the task that took
    its slot: so seeing that happen at all, among some 40 such pairs, shows the order. (Which pairs
    it happens for is timing.)"""
    start_worker(manager, cores=1, extra=["--spawn-threads", "0"])
    wait_for_workers(manager, 1)
    for _ in range(6):  # the category is measured short: its tasks are prefetched from now on
        manager.submit(vine.Task("sleep 0.02"))
    drain(manager, 30)
    ids = {manager.submit(vine.Task("sleep 0.02")) for _ in range(40)}
    done = drain(manager, 60)
    assert sorted(t.id for t in done) == sorted(ids) and all(t.successful() for t in done)
    assert manager.stats.tasks_prefetched > 0
    manager.close()  # the logs written out
    logs = tmp_path / "vine-run-info" / "most-recent" / "vine-logs"
    received: dict[int, int] = {}  # task id -> microseconds when the manager read its end
    sent: dict[int, int] = {}  # task id -> when the manager sent it to the worker
    for line in (logs / "transactions").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[2] == "TASK" and int(parts[3]) in ids:
            if parts[4] == "WAITING_RETRIEVAL":
                received[int(parts[3])] = int(parts[0])
            elif parts[4] == "RUNNING":
                sent[int(parts[3])] = int(parts[0])
    ran: dict[int, tuple[int, int]] = {}  # task id -> (start, end) on the worker, microseconds
    for line in (logs / "debug").read_text().splitlines():
        _, sep, rest = line.partition(": complete ")
        if sep:
            f = rest.split()
            if int(f[7]) in ids:
                ran[int(f[7])] = (int(f[4]), int(f[5]))
    assert set(received) == ids and set(ran) == ids and set(sent) == ids
    order = sorted(ids, key=lambda tid: ran[tid][0])
    # b was sent well before a ended (10 ms: it was in the worker's queue by then) and started after
    # a ended: in a's slot, from the handler of a's end.
    pairs = [(a, b) for a, b in zip(order, order[1:]) if sent[b] < ran[a][1] - 10_000 and ran[a][1] <= ran[b][0]]
    assert len(pairs) >= 20, (len(pairs), manager.stats.tasks_prefetched)
    read_first = [(a, b) for a, b in pairs if received[a] < ran[b][0]]
    assert read_first, "every end reached the manager only after the next task's shell had started"


def _blocked_signals(pid: int, tid: int) -> int:
    return int(proc_status(pid, "SigBlk", tid), 16)


@pytest.mark.timeout(60)
def test_the_workers_other_threads_block_sigchld(manager, start_worker):
    """A shell's SIGCHLD must not wake a thread that only waits (core/worker/children.py
    ``block_child_signal``): while the loop is inside posix_spawn it blocks every signal, and the
    kernel hands a shell's SIGCHLD to any thread that does not block it. The worker connects to
    "localhost", so its executor has a thread (getaddrinfo); without spawner threads, every thread
    but the loop's blocks SIGCHLD."""
    w = start_worker(manager, cores=2, extra=["--spawn-threads", "0"])
    wait_for_workers(manager, 1)
    for _ in range(20):
        t = vine.Task("true")
        t.set_cores(1)
        manager.submit(t)
    drain(manager, 30)
    others = [int(tid) for tid in os.listdir(f"/proc/{w.pid}/task") if int(tid) != w.pid]
    assert others, "the worker has no thread besides its loop's: nothing to check"
    sigchld = 1 << (signal.SIGCHLD - 1)
    assert not _blocked_signals(w.pid, w.pid) & sigchld  # the loop's thread reaps and must see them
    unblocked = [tid for tid in others if not _blocked_signals(w.pid, tid) & sigchld]
    assert not unblocked, f"worker threads {unblocked} would be woken by every shell's SIGCHLD"
