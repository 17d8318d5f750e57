"""What TaskVine programs read back from a run: PythonTask output files, the tasks cache, fetch_file
and forsaken URL inputs (issue 14, points 2, 5 and 6).

The expectations come from TaskVine's manual and test programs: ``PythonTask.enable_temp_output``'s
documentation (a consumer ``cloudpickle.load()``s the producer's output file), ``vine_python_cache.py``
(``enable_tasks_cache``, ``hostname == "CACHED"``, one ``.output`` file per cached PythonTask) and
``vine_python.py`` (``fetch_file`` of a temp compared with ``"howdy\\n"``; an unfetchable URL input
with ``set_max_forsaken(1)`` ends as ``forsaken``). Every check runs on real workers.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import cloudpickle
import pytest

import core as vine
from core.api.python_task import RemoteTraceback
from tests.conftest import ROOT, drain, run, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x):
    return x * x


def cube(x):
    return x * x * x


def explode(msg):
    raise ValueError(msg)


def load_pickled_file(name):
    """What the TaskVine manual tells a consumer of a PythonTask's temp output to do."""
    with open(name, "rb") as fh:
        return cloudpickle.load(fh) + 1


# --- 2. a PythonTask's output file holds exactly the pickled value ----------------------------------------------


def test_output_file_holds_exactly_the_pickled_return_value(manager, start_worker):
    start_worker(manager, cores=1)
    t = run(manager, vine.PythonTask(square, 12))
    assert t.successful() and t.output == 144
    data = t.output_file.contents()
    assert cloudpickle.loads(data) == 144  # not an envelope around it
    assert data == cloudpickle.dumps(144)
    assert t.output_file.contents(cloudpickle.load) == 144  # TaskVine's File.contents(unserializer)


def test_temp_output_is_loaded_by_a_taskvine_style_consumer(manager, start_worker):
    start_worker(manager, cores=1)
    ta = vine.PythonTask(square, 6)
    ta.enable_temp_output()
    manager.submit(ta)
    tb = vine.PythonTask(load_pickled_file, "ta_output.file")
    tb.add_input(ta.output_file, "ta_output.file")  # the manual's example, word for word
    manager.submit(tb)
    drain(manager, 60)
    assert tb.output == 37
    assert cloudpickle.loads(manager.fetch_file(ta.output_file, binary=True)) == 36


def test_a_raised_exception_keeps_its_traceback_through_the_exit_status(manager, start_worker):
    start_worker(manager, cores=1)
    bad = vine.PythonTask(explode, "kaput")
    bad.enable_temp_output()
    manager.submit(bad)
    after = vine.PythonTask(square, bad)  # a consumer of the failed producer's temp
    manager.submit(after)
    drain(manager, 60)
    assert bad.result == "success" and bad.exit_code == 1  # exit 1 as in TaskVine
    assert "ValueError: kaput" in bad.std_output  # the traceback is printed, as TaskVine's wrapper does
    exc = bad.output
    assert isinstance(exc, ValueError) and str(exc) == "kaput"
    assert isinstance(exc.__cause__, RemoteTraceback) and "in explode" in exc.__vine_traceback__
    downstream = after.output  # the consumer re-raised the producer's own exception
    assert isinstance(downstream, ValueError) and str(downstream) == "kaput"


# --- 6. fetch_file as TaskVine returns it ------------------------------------------------------------------------


def test_fetch_file_returns_text_and_bytes_on_request(manager, start_worker):
    start_worker(manager, cores=1)
    text = manager.declare_temp()
    t = vine.Task("echo howdy > output")
    t.add_output(text, "output")
    raw = manager.declare_temp()
    u = vine.Task(r"printf 'a\000b\377\n' > output")
    u.add_output(raw, "output")
    for task in (t, u):
        manager.submit(task)
    drain(manager, 60)
    assert manager.fetch_file(text) == "howdy\n"  # vine_python.py's comparison
    assert manager.fetch_file(raw, binary=True) == b"a\x00b\xff\n"
    assert raw.contents() == b"a\x00b\xff\n"
    as_text = manager.fetch_file(raw)
    assert isinstance(as_text, str) and as_text.encode("utf-8", "surrogateescape") == b"a\x00b\xff\n"
    buf = manager.declare_buffer("dé jà")
    assert manager.fetch_file(buf) == "dé jà"


# --- 6. an unfetchable URL forsakes the task --------------------------------------------------------------------


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.gets.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server(tmp_path) -> Iterator[tuple[str, str, list[str]]]:
    """A real HTTP server on 127.0.0.1 serving a fresh directory; yields (dir, base URL, GET paths)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(root)))
    server.gets = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield str(root), f"http://127.0.0.1:{server.server_address[1]}", server.gets  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_unfetchable_url_forsakes_the_task_up_to_max_forsaken(manager, start_worker, http_server):
    root, base, gets = http_server
    with open(os.path.join(root, "data.txt"), "w") as fh:
        fh.write("one\ntwo\n")
    start_worker(manager, cores=1)
    good = vine.Task("wc -l < infile")
    good.add_input(manager.declare_url(f"{base}/data.txt"), "infile")
    limited = vine.Task("wc -l infile_for_forsaken")
    limited.set_max_forsaken(1)
    limited.add_input(manager.declare_url(f"{base}/missing-1"), "infile_for_forsaken")
    for t in (good, limited):
        manager.submit(t)
    drain(manager, 60)
    assert good.result == "success" and good.output.strip() == "2"
    assert (limited.result, limited.exit_code) == ("forsaken", -1)  # vine_python.py's expectation
    assert gets.count("/missing-1") == 2  # forsaken once (allowed), then once more: over the limit


def test_unlimited_forsaking_ends_as_input_missing(manager, start_worker, http_server):
    _root, base, gets = http_server
    manager.tune("max-task-attempts", 3)
    start_worker(manager, cores=1)
    t = vine.Task("cat infile")  # max_forsaken left at TaskVine's default, -1 (unlimited)
    t.add_input(manager.declare_url(f"{base}/missing-2"), "infile")
    t = run(manager, t)
    assert t.result == "input missing"
    assert gets.count("/missing-2") == 3  # each attempt fetched again, bounded by max-task-attempts


# --- 5. the tasks cache --------------------------------------------------------------------------------------------


def collect(m, timeout=60):
    return {t.tag: t for t in drain(m, timeout)}


def test_tasks_cache_as_vine_python_cache_expects(manager, start_worker, tmp_path):
    cache_dir = tmp_path / "vine-task-cache-test"
    manager.enable_tasks_cache(cache_dir=str(cache_dir), log_file=str(tmp_path / "vine-cache.txlog"))
    start_worker(manager, cores=1)
    for i in range(1, 6):
        manager.submit(_tagged(vine.PythonTask(square, i), str(i)))
    first = collect(manager)
    assert {k: t.output for k, t in first.items()} == {str(i): i * i for i in range(1, 6)}
    assert all(t.hostname != "CACHED" for t in first.values())
    outputs = sorted(f for f in os.listdir(cache_dir) if f.endswith(".output"))
    assert len(outputs) == 5
    assert sorted(cloudpickle.loads((cache_dir / f).read_bytes()) for f in outputs) == [1, 4, 9, 16, 25]
    for i in range(1, 6):
        manager.submit(_tagged(vine.PythonTask(square, i), str(i)))
    second = collect(manager)
    assert all(t.hostname == "CACHED" and t.successful() for t in second.values())
    assert {k: t.output for k, t in second.items()} == {k: t.output for k, t in first.items()}
    miss = run(manager, vine.PythonTask(square, 99))
    assert miss.hostname != "CACHED" and miss.output == 99 * 99
    other_function = run(manager, vine.PythonTask(cube, 3))  # same argument as a cached task, other code
    assert other_function.hostname != "CACHED" and other_function.output == 27
    failed = run(manager, vine.PythonTask(explode, "not cached"))
    again = run(manager, vine.PythonTask(explode, "not cached"))
    assert failed.exit_code == 1 and again.hostname != "CACHED" and isinstance(again.output, ValueError)


def _tagged(t, tag):
    t.set_tag(tag)
    return t


def test_tasks_cache_keys_on_input_contents_and_restores_output_files(manager, start_worker, tmp_path):
    manager.enable_tasks_cache(cache_dir=str(tmp_path / "outs"), log_file=str(tmp_path / "log"))
    start_worker(manager, cores=1)
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("alpha\n")

    def upper_task():
        t = vine.Task("tr a-z A-Z < in > out; echo ran")
        t.add_input(manager.declare_file(str(src)), "in")
        t.add_output(manager.declare_file(str(dst)), "out")
        return t

    first = run(manager, upper_task())
    assert first.hostname != "CACHED" and dst.read_text() == "ALPHA\n" and first.output == "ran\n"
    dst.unlink()
    hit = run(manager, upper_task())
    assert hit.hostname == "CACHED" and hit.addrport == "CACHED"
    assert dst.read_text() == "ALPHA\n" and hit.output == "ran\n"  # output file and stdout restored
    src.write_text("beta\n")  # another input content: another key
    changed = run(manager, upper_task())
    assert changed.hostname != "CACHED" and dst.read_text() == "BETA\n"
    temp = vine.Task("echo t > out")  # a temp output exists only on a worker: never cached
    temp.add_output(manager.declare_temp(), "out")
    run(manager, temp)
    temp2 = vine.Task("echo t > out")
    temp2.add_output(manager.declare_temp(), "out")
    assert run(manager, temp2).hostname != "CACHED"


PROGRAM = textwrap.dedent('''
    import subprocess, sys
    import core as vine

    def square(x):
        return x * x

    cache_dir, log_file, workdir, with_worker = sys.argv[1:5]
    m = vine.Manager(port=0, run_info_path=workdir + "/vine-run-info")
    m.enable_tasks_cache(cache_dir=cache_dir, log_file=log_file)
    worker = None
    if with_worker == "1":
        worker = subprocess.Popen([sys.executable, "-m", "core.worker", "--cores", "1", "--memory", "500", "--disk", "500",
                                   "--workdir", workdir + "/worker", "--timeout", "30", "localhost", str(m.port)])
    try:
        for i in range(3):
            m.submit(vine.PythonTask(square, i + 2))
        got = []
        while not m.empty():
            t = m.wait(30)
            if t is None:
                break
            got.append((t.output, t.hostname == "CACHED"))
        print(sorted(got))
    finally:
        if worker is not None:
            worker.kill()
            worker.wait(10)
        m.close()
''')


@pytest.mark.timeout(90)
def test_tasks_cache_persists_into_a_new_process(tmp_path):
    """A second run of the same program, in a new process and with no worker at all, is answered."""
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, str(prog), str(tmp_path / "cache"), str(tmp_path / "cache.txlog"), str(tmp_path)]
    first = subprocess.run([*args, "1"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "[(4, False), (9, False), (16, False)]"
    second = subprocess.run([*args, "0"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "[(4, True), (9, True), (16, True)]"


def test_tasks_cache_log_survives_a_torn_line_and_forgets_deleted_or_cleared_entries(manager, start_worker, tmp_path):
    from core.manager.tasks_cache import TasksCache

    outs, log = tmp_path / "outs", tmp_path / "cache.txlog"
    cache = manager.enable_tasks_cache(cache_dir=str(outs), log_file=str(log))
    start_worker(manager, cores=1)
    for i in (5, 6):
        run(manager, vine.PythonTask(square, i))
    assert cache.stored == 2
    with open(log, "a") as fh:
        fh.write('{"version": 1, "event": "COMPLETED", "key": "cut sh')  # a crash in the middle of a write
    replayed = TasksCache(str(outs), str(log))
    assert len(replayed) == 2
    hit = run(manager, vine.PythonTask(square, 5))
    assert hit.hostname == "CACHED"
    os.unlink(outs / f"{hit._vine_cache_key}.output")
    cache = manager.enable_tasks_cache(cache_dir=str(outs), log_file=str(log))  # a fresh replay of the same files
    rerun = run(manager, vine.PythonTask(square, 5))
    assert rerun.hostname != "CACHED" and rerun.output == 25  # its file was deleted: a miss, run again
    assert run(manager, vine.PythonTask(square, 6)).hostname == "CACHED"
    cache.clear()
    assert len(TasksCache(str(outs), str(log))) == 0 and not list(outs.iterdir())
    assert run(manager, vine.PythonTask(square, 6)).hostname != "CACHED"


def slow_first_time(marker_dir, value):
    """The first attempt announces itself and hangs (its worker is then killed); later ones return."""
    import time

    if not os.listdir(marker_dir):
        open(os.path.join(marker_dir, "started"), "w").close()
        time.sleep(60)
    return value * 3


@pytest.mark.timeout(60)
def test_tasks_cache_records_only_the_attempt_that_finished(manager, start_worker, tmp_path):
    outs, log = tmp_path / "outs", tmp_path / "cache.txlog"
    cache = manager.enable_tasks_cache(cache_dir=str(outs), log_file=str(log))
    marker = tmp_path / "marker"
    marker.mkdir()
    first = start_worker(manager, cores=1)
    t = vine.PythonTask(slow_first_time, str(marker), 14)
    manager.submit(t)
    wait_until(lambda: os.listdir(marker), 30, "the first attempt to start")
    first.kill()  # SIGKILL mid-run: nothing of this attempt may be recorded
    start_worker(manager, cores=1)
    assert manager.wait_for_task_id(t.id, 40) is t
    assert t.output == 42 and t.hostname != "CACHED"
    assert cache.stored == 1 and len(cache) == 1
    assert sum('"COMPLETED"' in line for line in log.read_text().splitlines()) == 1
    again = run(manager, vine.PythonTask(slow_first_time, str(marker), 14))
    assert again.hostname == "CACHED" and again.output == 42
