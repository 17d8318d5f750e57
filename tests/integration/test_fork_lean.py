"""``fork_lean`` (core/wire/remote.py): a fork without threading's and logging's idle at-fork hooks.

The fork server and a fork-mode library fork with it. What must hold in the child is what a plain
``os.fork()`` gives: the one thread is the main thread, logging works from new threads (no lock
inherited held), every other at-fork hook runs (``random`` reseeds, a library's own hook), and the
hooks are whole again for the child's own forks. With a second thread in the parent it is a plain
``os.fork()``. Each case runs in a fresh interpreter, so this test process's own threads do not
decide which path is taken.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cloudpickle
import pytest

import core as vine
from tests.conftest import drain

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD_REPORT = r'''
import json, logging, os, random, sys, threading
from core.wire.remote import fork_lean

marks = []
os.register_at_fork(before=lambda: marks.append("before"), after_in_child=lambda: marks.append("child"),
                    after_in_parent=lambda: marks.append("parent"))
random.seed(12345)  # the same state in parent and child unless the child is reseeded
limbo_lock = threading._active_limbo_lock  # threading's own hook replaces it in the child
hook_codes = {f.__qualname__: f.__code__ for f in (threading._after_fork, logging._acquireLock,
              logging._releaseLock, logging._after_at_fork_child_reinit_locks)}
helper = None
if sys.argv[1] == "two-threads":
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
log = logging.getLogger("lean")
r, w = os.pipe()
pid = fork_lean()
if pid == 0:
    os.close(r)
    got = []
    handler = logging.Handler()
    handler.emit = lambda record: got.append(record.getMessage())
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def from_a_thread():
        log.info("from a thread of the child")

    t = threading.Thread(target=from_a_thread)
    t.start()
    t.join(20)
    report = {
        "marks": marks,
        "main": threading.current_thread() is threading.main_thread(),
        "ident": threading.main_thread().ident == threading.get_ident(),
        "logged": got,
        "joined": not t.is_alive(),
        "random": random.random(),
        "hook_skipped": threading._active_limbo_lock is limbo_lock,
        "restored": all(f.__code__ is hook_codes[f.__qualname__] for f in (threading._after_fork,
                        logging._acquireLock, logging._releaseLock, logging._after_at_fork_child_reinit_locks)),
    }
    os.write(w, json.dumps(report).encode())
    os._exit(0)
os.close(w)
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
if helper is not None:
    stop.set()
    helper.join()
child = json.loads(data)
print(json.dumps({"child": child, "parent_marks": marks, "parent_random": random.random(),
                  "parent_restored": all(f.__code__ is hook_codes[f.__qualname__] for f in (threading._after_fork,
                      logging._acquireLock, logging._releaseLock, logging._after_at_fork_child_reinit_locks))}))
'''


def run_case(case: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD_REPORT, case], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.timeout(90)
def test_a_lean_fork_leaves_out_only_the_idle_hooks():
    got = run_case("one-thread")
    child = got["child"]
    assert child["hook_skipped"], "threading's after-fork hook ran: this was a plain os.fork()"
    assert child["marks"] == ["before", "child"] and got["parent_marks"] == ["before", "parent"]
    assert child["main"] and child["ident"]
    assert child["joined"] and child["logged"] == ["from a thread of the child"]
    assert child["random"] != got["parent_random"], "random's own hook did not reseed the child"
    assert child["restored"] and got["parent_restored"]


@pytest.mark.timeout(90)
def test_with_a_second_thread_it_is_a_plain_fork():
    got = run_case("two-threads")
    child = got["child"]
    assert not child["hook_skipped"], "the hooks were left out although the parent had two threads"
    assert child["marks"] == ["before", "child"] and child["main"] and child["joined"]
    assert child["logged"] == ["from a thread of the child"]
    assert child["restored"] and got["parent_restored"]


def threads_that_log(n):
    import logging
    import random
    import threading

    log = logging.getLogger("task")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    workers = [threading.Thread(target=log.info, args=(f"thread {i}",)) for i in range(n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(20)
    return sorted(seen), threading.current_thread() is threading.main_thread(), random.random()


@pytest.mark.timeout(120)
def test_python_tasks_in_lean_forks_log_from_threads_and_draw_their_own_random_numbers(manager, start_worker):
    start_worker(manager, cores=2)
    tasks = [vine.PythonTask(threads_that_log, 3) for _ in range(4)]
    for t in tasks:
        manager.submit(t)
    drain(manager, timeout=90)
    outputs = [t.output for t in tasks]
    for t, out in zip(tasks, outputs):
        assert t.successful(), (t.result, t.std_output)
        assert out[0] == ["thread 0", "thread 1", "thread 2"] and out[1] is True
    assert len({out[2] for out in outputs}) == 4, "two forked tasks drew the same random number"
