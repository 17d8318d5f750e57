"""A chain's links on one worker: each reuses the sandbox the previous link left, and the small temp
output each link leaves goes into the worker's memory; neither may change what a task sees.

A link's sandbox held only the worker's own copy of its input, so after the task the worker removes
that copy and the sandbox is reused (core/worker/sandbox.py ``_remove_placed_inputs``); a small
output file with the plain mode moves into memory and is written into the next link's sandbox from
there (core/worker/cache.py ``adopt_small_output``). These tests run real chains on real workers
and check what every link saw: only its own input, the right contents and modes, and an output
that a peer worker and the manager still get whole. The last test checks the spawner threads of a
worker with several cores (core/worker/spawner.py ``Spawner``): each task starts in its own sandbox.
"""

from __future__ import annotations

import pytest

import core as vine
from tests.conftest import drain, run

# Each link lists its sandbox (before writing anything), copies its input on, and appends one line:
# the sandbox it ran in and what it found there.
LIST_THEN_APPEND = 'L=$(ls -A | sort | tr "\\n" ,); cat prev > out; echo "$VINE_SANDBOX $L" >> out'
FIRST_LINK = 'L=$(ls -A | sort | tr "\\n" ,); echo "$VINE_SANDBOX $L" > out'


def _lines_of_chain(m, links: int, extra_on: int | None = None) -> list[list[str]]:
    """Run a chain of ``links`` tasks (link ``extra_on`` also leaves a stray file and rewrites its
    input in place); the last temp's lines, split into (sandbox, listing)."""
    prev = None
    for i in range(links):
        cmd = FIRST_LINK if prev is None else LIST_THEN_APPEND
        if i == extra_on:
            cmd += "; echo stray > stray.txt; echo clobbered > prev"
        t = vine.Task(cmd)
        if prev is not None:
            t.add_input(prev, "prev")
        out = m.declare_temp()
        t.add_output(out, "out")
        t.set_cores(1)
        m.submit(t)
        prev = out
    done = drain(m, 90)
    assert len(done) == links and all(t.successful() for t in done), [(t.id, t.result, t.std_output) for t in done]
    assert prev is not None
    return [line.split(" ") for line in m.fetch_file(prev).splitlines()]


@pytest.mark.timeout(120)
def test_chain_links_reuse_one_sandbox_and_see_only_their_input(manager, start_worker):
    start_worker(manager, cores=1)
    lines = _lines_of_chain(manager, 6)
    assert len(lines) == 6
    sandboxes = {sandbox for sandbox, _listing in lines}
    # One single-core worker, one link at a time: the first link's sandbox serves every later link.
    assert len(sandboxes) == 1, sandboxes
    assert lines[0][1] == ".taskvine.tmp,.vine-stdout,"
    for _sandbox, listing in lines[1:]:
        assert listing == ".taskvine.tmp,.vine-stdout,prev,", lines  # nothing an earlier link left


@pytest.mark.timeout(120)
def test_a_link_that_leaves_files_does_not_leak_them(manager, start_worker):
    start_worker(manager, cores=1)
    lines = _lines_of_chain(manager, 5, extra_on=2)
    assert len(lines) == 5
    listings = [listing for _sandbox, listing in lines[1:]]
    # Link 2's own copy of its input was rewritten: no later link sees that, or link 2's stray file.
    assert listings == [".taskvine.tmp,.vine-stdout,prev,"] * 4, lines
    sandboxes = [sandbox for sandbox, _listing in lines]
    # Links 0-2 share one sandbox; link 2 left it unclean, so it was deleted and link 3 ran in a
    # new one, which link 4 then reused.
    assert sandboxes[0] == sandboxes[1] == sandboxes[2], sandboxes
    assert sandboxes[3] != sandboxes[2] and sandboxes[4] == sandboxes[3], sandboxes


@pytest.mark.timeout(120)
def test_temp_outputs_keep_their_mode_through_the_worker(manager, start_worker):
    """An executable temp output stays executable for its consumer; a plain one keeps its mode."""
    start_worker(manager, cores=1)
    script = manager.declare_temp()
    t1 = vine.Task("printf '#!/bin/sh\\necho from-script\\n' > out; chmod 755 out")
    t1.add_output(script, "out")
    said = manager.declare_temp()
    t2 = vine.Task("./prev > out; stat -c %a out")  # runs the script; prints the mode its output has
    t2.add_input(script, "prev")
    t2.add_output(said, "out")
    t3 = vine.Task("cat prev; stat -c %a prev")
    t3.add_input(said, "prev")
    for t in (t1, t2, t3):
        t.set_cores(1)
        done = run(manager, t)
        assert done.successful(), (done.id, done.result, done.std_output)
    mode_made = t2.std_output.strip()
    content, mode_seen = t3.std_output.splitlines()
    assert content == "from-script"
    assert mode_seen == mode_made  # the consumer's copy has the mode its producer left
    assert manager.fetch_file(said) == "from-script\n"


@pytest.mark.timeout(120)
def test_small_temp_output_reaches_a_task_on_another_worker(manager, start_worker):
    """A small temp the producer's worker holds in memory is sent to a peer whole."""
    start_worker(manager, cores=1, extra=["--feature", "maker"])
    start_worker(manager, cores=1, extra=["--feature", "user"])
    made = manager.declare_temp()
    producer = vine.Task("seq 1 2000 > out")
    producer.add_output(made, "out")
    producer.add_feature("maker")
    consumer = vine.Task("wc -l < prev; md5sum < prev | cut -c1-32")
    consumer.add_input(made, "prev")
    consumer.add_feature("user")
    expected = vine.Task("seq 1 2000 | md5sum | cut -c1-32")
    expected.add_feature("user")
    for t in (producer, consumer, expected):
        done = run(manager, t)
        assert done.successful(), (done.id, done.result, done.std_output)
    count, digest = consumer.std_output.split()
    assert count == "2000"
    assert digest == expected.std_output.strip()


@pytest.mark.timeout(120)
def test_concurrent_tasks_each_start_in_their_own_sandbox(manager, start_worker):
    """A worker with cores to spare starts its shells from several threads at once (each thread
    with a working directory of its own, core/worker/spawner.py): no task may start in another's
    sandbox, or in the worker's directory."""
    start_worker(manager, cores=4, extra=["--spawn-threads", "4"])
    tasks = []
    for i in range(60):
        # Each task leaves a file named for itself and lists what its starting directory holds.
        t = vine.Task(f'test "$(pwd -P)" = "$(cd "$VINE_SANDBOX" && pwd -P)" && touch mine.{i} && ls')
        t.set_cores(1)
        manager.submit(t)
        tasks.append((i, t))
    done = drain(manager, 90)
    assert len(done) == 60
    for i, t in tasks:
        assert t.successful(), (i, t.result, t.exit_code, t.std_output)
        assert t.std_output.split() == [f"mine.{i}"], (i, t.std_output)
