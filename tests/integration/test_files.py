"""Every kind of file as a task input and as an output, end to end with a real worker."""

from __future__ import annotations

import os
import tarfile

import pytest

import core as vine
from tests.conftest import drain, run, wait_for_workers, wait_until
from tests.integration.conftest import records

# --- inputs --------------------------------------------------------------------------------------


def test_input_local_file(m, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello file\n")
    t = vine.Task("cat data.txt")
    t.add_input(m.declare_file(str(src)), "data.txt")
    t = run(m, t)
    assert (t.result, t.exit_code, t.output) == ("success", 0, "hello file\n")


def test_input_local_directory(m, tmp_path):
    d = tmp_path / "indir"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("A")
    (d / "sub" / "b.txt").write_text("B")
    t = vine.Task("cat dir/a.txt dir/sub/b.txt")
    t.add_input(m.declare_file(str(d)), "dir")
    t = run(m, t)
    assert (t.result, t.exit_code, t.output) == ("success", 0, "AB")


def test_input_nested_remote_name(m, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("nested")
    t = vine.Task("cat a/b/c.txt")
    t.add_input(m.declare_file(str(src)), "a/b/c.txt")
    t = run(m, t)
    assert (t.result, t.output) == ("success", "nested")


def test_input_buffer(m):
    t = vine.Task("cat buf.txt; test -x buf.txt && echo exec")
    t.add_input(m.declare_buffer("from memory\n"), "buf.txt")
    t = run(m, t)
    assert (t.result, t.exit_code, t.output) == ("success", 0, "from memory\nexec\n")


def test_input_file_url(m, tmp_path):
    src = tmp_path / "page.txt"
    src.write_text("via file url")
    t = vine.Task("cat page.txt")
    t.add_input(m.declare_url(f"file://{src}"), "page.txt")
    t = run(m, t)
    assert (t.result, t.output) == ("success", "via file url")


def test_input_http_url(m, http_root):
    root, base = http_root
    with open(os.path.join(root, "doc.txt"), "w") as fh:
        fh.write("via http")
    t = vine.Task("cat doc.txt")
    t.add_input(m.declare_url(f"{base}/doc.txt", cache="workflow"), "doc.txt")
    t = run(m, t)
    assert (t.result, t.output) == ("success", "via http")


def test_temp_chained_between_tasks_and_fetched(m):
    temp = m.declare_temp()
    producer = vine.Task("echo intermediate > out.txt")
    producer.add_output(temp, "out.txt")
    consumer = vine.Task("tr a-z A-Z < in.txt")
    consumer.add_input(temp, "in.txt")
    # The consumer is submitted first: it must wait for the temp to exist, not fail.
    m.submit(consumer)
    m.submit(producer)
    done = {t.id: t for t in drain(m, 30)}
    assert [(t.result, t.exit_code) for t in done.values()] == [("success", 0)] * 2
    assert done[consumer.id].output == "INTERMEDIATE\n"
    assert m.fetch_file(temp) == "intermediate\n"
    assert temp.contents() == b"intermediate\n"


def test_input_untar(m, tmp_path):
    payload = tmp_path / "payload"
    (payload / "inner").mkdir(parents=True)
    (payload / "inner" / "x.txt").write_text("from the tarball")
    tarball = tmp_path / "payload.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(payload, arcname="payload")
    unpacked = m.declare_untar(m.declare_file(str(tarball), cache="workflow"), cache="workflow")
    t = vine.Task("cat pkg/payload/inner/x.txt")
    t.add_input(unpacked, "pkg")
    t = run(m, t)
    assert (t.result, t.exit_code, t.output) == ("success", 0, "from the tarball")


def test_input_minitask(m, tmp_path):
    seed = tmp_path / "seed.txt"
    seed.write_text("3\n")
    mini = vine.Task("seq $(cat seed) > made.txt")
    mini.add_input(m.declare_file(str(seed)), "seed")
    made = m.declare_minitask(mini, "made.txt")
    t = vine.Task("wc -l < numbers")
    t.add_input(made, "numbers")
    t = run(m, t)
    assert (t.result, t.exit_code, t.output.strip()) == ("success", 0, "3")


# --- outputs -------------------------------------------------------------------------------------


def test_output_local_file(m, tmp_path):
    dest = tmp_path / "result.txt"
    t = vine.Task("echo produced > r.txt")
    t.add_output(m.declare_file(str(dest)), "r.txt")
    t = run(m, t)
    assert t.result == "success"
    assert dest.read_text() == "produced\n"


def test_output_local_directory(m, tmp_path):
    dest = tmp_path / "outdir"
    t = vine.Task("mkdir -p o/deep && echo 1 > o/one && echo 2 > o/deep/two")
    t.add_output(m.declare_file(str(dest)), "o")
    t = run(m, t)
    assert t.result == "success"
    assert (dest / "one").read_text() == "1\n"
    assert (dest / "deep" / "two").read_text() == "2\n"


def test_output_buffer(m):
    buf = m.declare_buffer(None)
    t = vine.Task("printf 'buffered bytes' > b.out")
    t.add_output(buf, "b.out")
    t = run(m, t)
    assert t.result == "success"
    assert buf.contents() == b"buffered bytes"
    assert m.fetch_file(buf) == "buffered bytes"


def test_output_temp_stays_on_worker(m):
    temp = m.declare_temp()
    t = vine.Task("printf 'kept remotely' > t.out")
    t.add_output(temp, "t.out")
    t = run(m, t)
    assert t.result == "success"
    # A temp is not brought back with the task: no OUTPUT transfer until someone asks for it.
    assert not [r for r in records(m, "WORKER") if r[2:5] == ["TRANSFER", "OUTPUT", temp.cache_name]]
    assert temp.contents() == b"kept remotely"


def test_file_round_trip_through_two_tasks(m, tmp_path):
    """A file written by one task is the input of the next (declared again after it exists)."""
    mid = tmp_path / "mid.txt"
    first = vine.Task("echo 41 > n")
    first.add_output(m.declare_file(str(mid)), "n")
    assert run(m, first).result == "success"
    second = vine.Task("echo $(( $(cat n) + 1 ))")
    second.add_input(m.declare_file(str(mid)), "n")
    second = run(m, second)
    assert (second.result, second.output) == ("success", "42\n")


# --- caching -------------------------------------------------------------------------------------


def test_workflow_cached_input_sent_once(m, tmp_path):
    src = tmp_path / "big.dat"
    src.write_bytes(os.urandom(200_000))
    f = m.declare_file(str(src), cache="workflow")
    sent = []
    for _ in range(2):
        before = m.stats.bytes_sent
        t = vine.Task("wc -c < big.dat")
        t.add_input(f, "big.dat")
        t = run(m, t)
        assert (t.result, t.output.strip()) == ("success", "200000")
        sent.append(m.stats.bytes_sent - before)
    assert sent[1] < 200_000 <= sent[0]  # the second task found the file in the worker's cache
    sends = [r for r in records(m, "WORKER") if r[2:5] == ["TRANSFER", "INPUT", f.cache_name]]
    assert len(sends) == 1, sends
    assert int(sends[0][5]) == 200_000


def test_task_level_input_sent_each_time(m, tmp_path):
    src = tmp_path / "small.dat"
    src.write_text("x")
    f = m.declare_file(str(src))  # cache=False: removed from the worker after each task
    for _ in range(2):
        t = vine.Task("cat small.dat")
        t.add_input(f, "small.dat")
        assert run(m, t).result == "success"
    sends = [r for r in records(m, "WORKER") if r[2:5] == ["TRANSFER", "INPUT", f.cache_name]]
    assert len(sends) == 2, sends


def test_worker_level_cache_sent_once(m, tmp_path):
    src = tmp_path / "w.txt"
    src.write_text("w")
    f = m.declare_file(str(src), cache="worker")
    b = m.declare_buffer("bb", cache="forever")
    assert f.cache_name.startswith("file-md5-") and b.cache_name.startswith("buffer-md5-")
    for _ in range(2):
        t = vine.Task("cat w.txt b")
        t.add_input(f, "w.txt")
        t.add_input(b, "b")
        assert run(m, t).output == "wbb"
    names = {f.cache_name, b.cache_name}
    assert len([r for r in records(m, "WORKER") if r[2:4] == ["TRANSFER", "INPUT"] and r[4] in names]) == 2


def test_worker_cache_survives_manager_restart(tmp_path, start_worker):
    """A `worker`-level file stays in the worker's cache for the next manager on the same port."""
    src = tmp_path / "persist.txt"
    src.write_text("persist")
    first = vine.Manager(port=0, run_info_path=str(tmp_path / "info1"))
    port = first.port
    try:
        start_worker(first, cores=1)
        f = first.declare_file(str(src), cache="worker")
        t = vine.Task("cat p")
        t.add_input(f, "p")
        assert run(first, t).output == "persist"
    finally:
        first.close()
    second = vine.Manager(port=port, run_info_path=str(tmp_path / "info2"))
    try:
        wait_for_workers(second, 1, 30)  # the same worker process reconnects
        f2 = second.declare_file(str(src), cache="worker")
        assert f2.cache_name == f.cache_name
        t = vine.Task("cat p")
        t.add_input(f2, "p")
        assert run(second, t).output == "persist"
        assert not [r for r in records(second, "WORKER") if r[2:4] == ["TRANSFER", "INPUT"]]
    finally:
        second.close()


def test_executable_input_keeps_its_mode(m, tmp_path):
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho tool ran\n")
    script.chmod(0o755)
    t = vine.Task("./tool.sh")
    t.add_input(m.declare_file(str(script)), "tool.sh")
    t = run(m, t)
    assert (t.result, t.exit_code, t.output) == ("success", 0, "tool ran\n")


def test_mount_symlink(m, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("linked")
    t = vine.Task("test -L s.txt && cat s.txt")
    t.add_input(m.declare_file(str(src)), "s.txt", mount_symlink=True)
    t = run(m, t)
    assert (t.exit_code, t.output) == (0, "linked")


def test_large_input_and_output_span_many_chunks(m, tmp_path):
    src = tmp_path / "big.in"
    src.write_bytes(os.urandom(3_500_000))
    dest = tmp_path / "big.out"
    t = vine.Task("md5sum < in > /dev/null && cp in out && head -c 2000000 /dev/urandom >> out")
    t.add_input(m.declare_file(str(src)), "in")
    t.add_output(m.declare_file(str(dest)), "out")
    t = run(m, t)
    assert t.result == "success", t.output
    data = dest.read_bytes()
    assert len(data) == 5_500_000 and data[:3_500_000] == src.read_bytes()


def test_large_stdout(m):
    t = run(m, vine.Task("head -c 3000000 /dev/zero | tr '\\0' a"))
    assert (t.result, len(t.output)) == ("success", 3_000_000)


def test_watched_output_streams_during_the_run(m, tmp_path):
    out = tmp_path / "progress.log"
    gate = tmp_path / "gate"
    t = vine.Task(f"echo line1 > p; while [ ! -e {gate} ]; do sleep 0.02; done; echo line2 >> p")
    t.add_output(m.declare_file(str(out)), "p", watch=True)
    tid = m.submit(t)
    wait_until(lambda: out.exists() and out.read_text() == "line1\n", 30, "the first line to stream back")
    gate.touch()
    t = m.wait_for_task_id(tid, 30)
    assert t.result == "success"
    assert out.read_text() == "line1\nline2\n"


def test_failure_only_and_success_only_outputs(m, tmp_path):
    for code in (0, 1):
        on_fail, on_ok = tmp_path / f"fail{code}", tmp_path / f"ok{code}"
        t = vine.Task(f"echo f > a; echo s > b; exit {code}")
        t.add_output(m.declare_file(str(on_fail)), "a", failure_only=True)
        t.add_output(m.declare_file(str(on_ok)), "b", success_only=True)
        t = run(m, t)
        assert (t.result, t.exit_code) == ("success", code)
        assert on_fail.exists() == (code != 0)
        assert on_ok.exists() == (code == 0)


def test_undeclare_with_unlink_when_done(m, tmp_path):
    out = tmp_path / "scratch.txt"
    f = m.declare_file(str(out), unlink_when_done=True)
    t = vine.Task("echo scratch > s")
    t.add_output(f, "s")
    assert run(m, t).result == "success"
    assert out.read_text() == "scratch\n"
    m.undeclare_file(f)
    assert not out.exists()


def test_temp_with_two_consumers(m):
    temp = m.declare_temp()
    producer = vine.Task("echo shared > o")
    producer.add_output(temp, "o")
    consumers = []
    for _ in range(2):
        c = vine.Task("cat i")
        c.add_input(temp, "i")
        consumers.append(c)
        m.submit(c)
    m.submit(producer)
    assert all(t.result == "success" for t in drain(m, 30))
    assert [c.output for c in consumers] == ["shared\n"] * 2


# --- between workers -----------------------------------------------------------------------------


@pytest.fixture
def two_workers(manager, start_worker):
    """Workers A and B, told apart by features so a test can place each task."""
    start_worker(manager, cores=1, extra=["--feature", "A"])
    start_worker(manager, cores=1, extra=["--feature", "B"])
    wait_for_workers(manager, 2)
    return manager


def test_cached_input_goes_peer_to_peer(two_workers, tmp_path):
    m = two_workers
    src = tmp_path / "shared.dat"
    src.write_bytes(os.urandom(2_500_000))
    f = m.declare_file(str(src), cache="workflow")
    sums = set()
    for feature in "AB":
        t = vine.Task("md5sum < shared.dat", features=[feature])
        t.add_input(f, "shared.dat")
        t = run(m, t)
        assert t.result == "success"
        sums.add(t.output)
    assert len(sums) == 1
    sends = [r for r in records(m, "WORKER") if r[2:5] == ["TRANSFER", "INPUT", f.cache_name]]
    assert len(sends) == 1  # the second worker got it from the first, not from the manager


def test_temp_moves_between_workers(two_workers):
    m = two_workers
    temp = m.declare_temp()
    producer = vine.Task("head -c 2500000 /dev/urandom > o; md5sum < o", features=["A"])
    producer.add_output(temp, "o")
    consumer = vine.Task("md5sum < i", features=["B"])
    consumer.add_input(temp, "i")
    m.submit(consumer)
    m.submit(producer)
    done = {t.id: t for t in drain(m, 30)}
    assert done[consumer.id].result == "success"
    assert done[consumer.id].output == done[producer.id].output
    assert done[consumer.id].addrport != done[producer.id].addrport
