"""The data plane as pure state: cache names, transfer sources, temp files, lineage recovery, worker
loss and garbage collection, driven through :class:`SchedulerState` with a fake clock.

No sockets and no sleeping: each test feeds events, checks the instructions that come out, and ends
with ``validate()``.
"""

from __future__ import annotations

import itertools

import pytest

import core as vine
from core import constants as C
from core.api.files import File
from core.api.specs import task_spec
from core.state.resources import Resources
from core.state.scheduler import (
    RECOVERY_ID_BASE,
    CacheInvalid,
    CacheUpdated,
    Dispatch,
    FetchPeer,
    FetchUrl,
    FileUndeclared,
    Keepalive,
    RemoveWorker,
    ReturnTask,
    SchedulerState,
    SendFile,
    TaskFinished,
    TasksRetrieved,
    TaskSubmitted,
    Tick,
    Unlink,
    WorkerHeard,
    WorkerJoined,
    WorkerLost,
)

MB = 1 << 20


# --- helpers -----------------------------------------------------------------------------------------


class Cluster:
    """A SchedulerState with a fake clock and shorthands for the events a test sends."""

    def __init__(self, **tuning: float) -> None:
        # These tests follow temps through waiting consumers: task pipelining (a consumer sent ahead) has its own tests.
        self.s = SchedulerState({"task-pipelining": 0, **{k.replace("_", "-"): v for k, v in tuning.items()}}, seed=1)
        self.now = 0.0
        self.ids = itertools.count(1)
        self.returned: dict[int, ReturnTask] = {}

    def handle(self, *events) -> list:
        out = self.s.handle(*events)
        for ins in out:
            if isinstance(ins, ReturnTask):
                assert ins.task_id not in self.returned, f"task {ins.task_id} returned twice"
                self.returned[ins.task_id] = ins
        return out

    def tick(self, dt: float = 0.0) -> list:
        self.now += dt
        return self.handle(Tick(self.now))

    def join(self, wid: str, cores: float = 4, cache: dict[str, int] | None = None, transfer: bool = True) -> list:
        return self.handle(WorkerJoined(self.now, wid, f"host-{wid}", f"10.0.0.{len(self.s.workers) + 1}:9000",
                                        Resources(cores, 4000, 40000, 0), cache=cache or {},
                                        transfer_addr=f"host-{wid}:7000" if transfer else None))

    def lose(self, wid: str) -> list:
        return self.handle(WorkerLost(self.now, wid, "FAILURE"))

    def submit(self, command: str = "true", inputs=(), outputs=(), cores: float = 1, **kw) -> vine.Task:
        t = vine.Task(command, cores=cores, **kw)
        for f, remote in inputs:
            t.add_input(f, remote)
        for f, remote in outputs:
            t.add_output(f, remote)
        t._id = next(self.ids)
        self.last_out = self.handle(TaskSubmitted(self.now, task_spec(t)))
        return t

    def cached(self, wid: str, f: File | str, size: int = 1000) -> list:
        name = f if isinstance(f, str) else f.cache_name
        return self.handle(CacheUpdated(self.now, wid, name, size))

    def finish(self, wid: str, task_id: int, result: int = C.VINE_RESULT_SUCCESS, exit_code: int = 0, **kw) -> list:
        return self.handle(TaskFinished(self.now, wid, task_id, result, exit_code, **kw))

    def run_to_end(self, ins: Dispatch, sizes: int = 1000) -> list:
        """Play a worker running a dispatched task: its outputs land in its cache, then it completes."""
        rec = self.s.tasks[ins.task_id]
        out = []
        for m in rec.spec.outputs:
            out += self.cached(ins.worker, m.file, sizes)
        out += self.finish(ins.worker, ins.task_id)
        return out


def of(kind, out: list) -> list:
    return [i for i in out if isinstance(i, kind)]


def peer_copy_to_w2(c: Cluster, f: File) -> tuple[vine.Task, vine.Task]:
    """w1 runs a task and caches ``f``; a second task on the new worker w2 fetches ``f`` from w1."""
    c.join("w1", cores=1)
    t1 = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f)
    c.join("w2", cores=1)
    t2 = c.submit("cat in", inputs=[(f, "in")])
    assert [(p.worker, p.source) for p in of(FetchPeer, c.last_out)] == [("w2", "w1")]
    return t1, t2


def temp() -> File:
    return File(None, "temp", "temp")


def workflow_buffer(data: bytes = b"x" * 1000, **kw) -> File:
    return File(None, "buffer", "buffer", cache="workflow", data=data, **kw)


# --- 1. cache names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["worker", "forever"])
def test_same_content_same_name_at_worker_levels(tmp_path, level):
    a, b = tmp_path / "a.dat", tmp_path / "b.dat"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    fa, fb = File(None, "file", str(a), cache=level), File(None, "file", str(b), cache=level)
    assert fa.cache_name.startswith("file-md5-")
    assert fa.cache_name == fb.cache_name
    b.write_bytes(b"other bytes")
    assert File(None, "file", str(b), cache=level).cache_name != fa.cache_name


def test_workflow_level_names_are_per_path(tmp_path):
    a, b = tmp_path / "a.dat", tmp_path / "b.dat"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    fa, fb = File(None, "file", str(a), cache="workflow"), File(None, "file", str(b), cache="workflow")
    assert fa.cache_name.startswith("file-meta-") and fb.cache_name.startswith("file-meta-")
    assert fa.cache_name != fb.cache_name


def test_buffer_content_names():
    assert File(None, "buffer", "buffer", cache="worker", data=b"abc").cache_name == \
        File(None, "buffer", "buffer", cache="worker", data=b"abc").cache_name
    assert File(None, "buffer", "buffer", cache="worker", data=b"abc").cache_name.startswith("buffer-md5-")
    assert File(None, "buffer", "buffer", data=b"abc").cache_name != File(None, "buffer", "buffer", data=b"abc").cache_name


def test_directory_merkle_name_follows_any_inner_file(tmp_path):
    d = tmp_path / "tree"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "top.txt").write_text("top")
    (d / "sub" / "deeper" / "leaf.txt").write_text("leaf")
    first = File(None, "file", str(d), cache="worker").cache_name
    assert first.startswith("file-md5-")
    # The same tree elsewhere has the same name: the name is the content, not the path.
    copy = tmp_path / "copy"
    (copy / "sub" / "deeper").mkdir(parents=True)
    (copy / "top.txt").write_text("top")
    (copy / "sub" / "deeper" / "leaf.txt").write_text("leaf")
    assert File(None, "file", str(copy), cache="worker").cache_name == first
    (d / "sub" / "deeper" / "leaf.txt").write_text("leaf, changed")
    changed = File(None, "file", str(d), cache="worker").cache_name
    assert changed != first
    (d / "sub" / "deeper" / "leaf.txt").write_text("leaf")
    assert File(None, "file", str(d), cache="worker").cache_name == first
    (d / "sub" / "new.txt").write_text("")
    assert File(None, "file", str(d), cache="worker").cache_name not in (first, changed)


def untar_of(tarball: File) -> File:
    t = vine.Task("mkdir output && tar -xf input -C output")
    t.add_input(tarball, "input")
    return File(None, "minitask", "output", cache="worker", minitask=t, minitask_output="output")


def test_minitask_name_follows_its_input(tmp_path):
    tar = tmp_path / "x.tar"
    tar.write_bytes(b"version 1")
    first = untar_of(File(None, "file", str(tar), cache="worker")).cache_name
    assert first.startswith("task-md5-")
    assert untar_of(File(None, "file", str(tar), cache="worker")).cache_name == first
    tar.write_bytes(b"version 2")
    assert untar_of(File(None, "file", str(tar), cache="worker")).cache_name != first


def test_url_names_and_levels():
    a = File(None, "url", "http://example.org/a", cache="worker")
    assert a.cache_name == File(None, "url", "http://example.org/a", cache="forever").cache_name
    assert a.cache_name != File(None, "url", "http://example.org/b", cache="worker").cache_name
    assert File(None, "url", "http://example.org/a").cache_name != File(None, "url", "http://example.org/a").cache_name
    assert File(None, "temp", "temp").cache_name != File(None, "temp", "temp").cache_name


def test_forever_replicas_announced_at_join_are_not_sent_again():
    c = Cluster()
    f = File(None, "buffer", "buffer", cache="forever", data=b"kept")
    c.join("w1", cache={f.cache_name: 4})
    t = c.submit("cat in", inputs=[(f, "in")])
    assert of(SendFile, c.last_out) == [] and of(FetchPeer, c.last_out) == []
    assert [(d.worker, d.task_id) for d in of(Dispatch, c.last_out)] == [("w1", t.id)]
    c.s.validate()


# --- 2. peer transfers --------------------------------------------------------------------------------------


def spread(c: Cluster, f: File, workers: list[str]) -> list[vine.Task]:
    """One 1-core task per worker, each reading ``f``; workers hold 1 core so tasks spread out."""
    for w in workers:
        c.join(w, cores=1)
    return [c.submit("cat in", inputs=[(f, "in")]) for _ in workers]


def test_shared_input_enters_once_then_moves_between_workers():
    c = Cluster()
    f = workflow_buffer()
    for w in ("w1", "w2", "w3", "w4"):
        c.join(w, cores=1)
    tasks = []
    outs = []
    for _ in range(4):
        tasks.append(c.submit("cat in", inputs=[(f, "in")]))
        outs += c.last_out
    # The manager sends it once; the other tasks wait instead of asking the manager again.
    assert [(i.worker, i.name) for i in of(SendFile, outs)] == [("w1", f.cache_name)]
    assert [d.worker for d in of(Dispatch, outs)] == ["w1"]
    out = c.cached("w1", f, 1000)
    peers = of(FetchPeer, out)
    assert {p.source for p in peers} == {"w1"} and {p.worker for p in peers} == {"w2", "w3", "w4"}
    assert of(SendFile, out) == []
    assert sorted(d.worker for d in of(Dispatch, out)) == ["w2", "w3", "w4"]
    for p in peers:
        c.cached(p.worker, f, 1000)
    assert c.s.stats["peer_transfers"] == 3
    assert c.s.stats["bytes_peer"] == 3000
    assert c.s.workers["w1"].outgoing == 0 and not c.s.transfers
    c.s.validate()


def test_worker_source_max_transfers_limits_each_source():
    c = Cluster(worker_source_max_transfers=1)
    f = workflow_buffer()
    c.join("w1", cores=1)
    first = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f)
    c.run_to_end(Dispatch("w1", first.id, Resources()))  # w1 holds f and is busy no more
    for w in ("w2", "w3", "w4", "w5"):
        c.join(w, cores=1)
    outs = []
    for _ in range(4):
        c.submit("sleep 10; cat in", inputs=[(f, "in")], cores=1)
        outs += c.last_out
    peers = of(FetchPeer, outs)
    # w1 is busy running one of them, so at most one peer fetch from w1 at a time.
    assert len(peers) == 1 and peers[0].source == "w1", peers
    assert c.s.workers["w1"].outgoing == 1
    assert of(SendFile, outs) == []
    # When that copy lands, both w1 and the new holder serve one fetch each: the file spreads as a tree.
    out = c.cached(peers[0].worker, f)
    more = of(FetchPeer, out)
    assert sorted(p.source for p in more) == sorted(["w1", peers[0].worker]), more
    assert max(w.outgoing for w in c.s.workers.values()) == 1
    c.s.validate()


def test_file_source_max_transfers_limits_per_origin_compared_by_value():
    c = Cluster(file_source_max_transfers=1)
    # Two different URLs (and distinct string objects) on one origin share one fetch slot.
    a = File(None, "url", "".join(["http://data.example.org:8080", "/a.dat"]), cache="workflow")
    b = File(None, "url", "".join(["http://data.example.org:8080", "/b.dat"]), cache="workflow")
    other = File(None, "url", "http://mirror.example.org/c.dat", cache="workflow")
    c.join("w1", cores=1)
    c.join("w2", cores=1)
    c.join("w3", cores=1)
    ta = c.submit("cat in", inputs=[(a, "in")])
    out = c.last_out
    tb = c.submit("cat in", inputs=[(b, "in")])
    out += c.last_out
    tc = c.submit("cat in", inputs=[(other, "in")])
    out += c.last_out
    fetches = of(FetchUrl, out)
    assert sorted(f.name for f in fetches) == sorted([a.cache_name, other.cache_name]), fetches
    assert {d.task_id for d in of(Dispatch, out)} == {ta.id, tc.id}
    assert c.s.url_active["http://data.example.org:8080"] == 1
    # Once the first fetch from that origin ends, the second starts.
    wa = next(f.worker for f in fetches if f.name == a.cache_name)
    out = c.cached(wa, a)
    assert [f.name for f in of(FetchUrl, out)] == [b.cache_name]
    assert [d.task_id for d in of(Dispatch, out)] == [tb.id]
    c.s.validate()


def test_file_source_max_transfers_two_allows_parallel_fetches():
    c = Cluster(file_source_max_transfers=2)
    a = File(None, "url", "http://data.example.org/a.dat", cache="workflow")
    b = File(None, "url", "http://data.example.org/b.dat", cache="workflow")
    c.join("w1", cores=1)
    c.join("w2", cores=1)
    c.submit("cat in", inputs=[(a, "in")])
    out = c.last_out
    c.submit("cat in", inputs=[(b, "in")])
    out += c.last_out
    assert len(of(FetchUrl, out)) == 2
    c.s.validate()


@pytest.mark.parametrize("how", ["disabled", "per-file"])
def test_without_peer_transfers_the_manager_sends_to_each_worker(how):
    c = Cluster(peer_transfers=0 if how == "disabled" else 1)
    f = workflow_buffer(peer_transfer=how != "per-file")
    assert f.peer_transfer == (how != "per-file")
    outs = []
    for w in ("w1", "w2", "w3"):
        c.join(w, cores=1)
    for _ in range(3):
        c.submit("cat in", inputs=[(f, "in")])
        outs += c.last_out
    assert sorted(s.worker for s in of(SendFile, outs)) == ["w1", "w2", "w3"]
    assert of(FetchPeer, outs) == []
    for w in ("w1", "w2", "w3"):
        c.cached(w, f)
    assert c.s.stats["peer_transfers"] == 0
    c.s.validate()


def test_task_level_inputs_are_never_fetched_from_peers():
    c = Cluster()
    f = File(None, "buffer", "buffer", data=b"abc")  # cache=False: TASK level
    c.join("w1", cores=1)
    c.join("w2", cores=1)
    c.submit("cat in", inputs=[(f, "in")])
    out = c.last_out
    c.submit("cat in", inputs=[(f, "in")])
    out += c.last_out
    assert sorted(s.worker for s in of(SendFile, out)) == ["w1", "w2"]
    c.s.validate()


def test_worker_without_transfer_port_is_not_a_source():
    c = Cluster()
    f = workflow_buffer()
    c.join("w1", cores=1, transfer=False)
    t1 = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f)
    c.join("w2", cores=1)
    c.submit("cat in", inputs=[(f, "in")])
    out = c.last_out
    assert of(FetchPeer, out) == []
    assert [s.worker for s in of(SendFile, out)] == ["w2"]
    c.run_to_end(Dispatch("w1", t1.id, Resources()))
    c.s.validate()


def test_peer_source_lost_mid_transfer_replans_from_the_manager():
    c = Cluster()
    f = workflow_buffer()
    t1, t2 = peer_copy_to_w2(c, f)
    out = c.lose("w1")
    assert not c.s.transfers, "a transfer from a lost worker must be forgotten"
    assert [d.task_id for d in of(Dispatch, out)] == []  # t1 waits for a worker with room
    # w2 reports the failed fetch, and its task comes back as the cluster's fault (not the task's).
    c.handle(CacheInvalid(c.now, "w2", f.cache_name, "peer transfer failed"))
    out = c.finish("w2", t2.id, C.VINE_RESULT_INPUT_MISSING, -1, retry=True)
    assert t2.id not in c.returned
    assert [s.worker for s in of(SendFile, out)] == ["w2"]
    assert sorted(d.task_id for d in of(Dispatch, out)) in ([t1.id], [t2.id])
    c.s.validate()


def test_a_source_whose_copy_broke_is_not_asked_again_at_once():
    c = Cluster()
    f = workflow_buffer()
    c.join("w1", cores=1)
    t1 = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f)
    c.finish("w1", t1.id)
    c.submit("sleep 100")  # keep w1 busy so the next task goes elsewhere
    c.join("w2", cores=1)
    t2 = c.submit("cat in", inputs=[(f, "in")])
    assert [(p.worker, p.source) for p in of(FetchPeer, c.last_out)] == [("w2", "w1")]
    # w1 is alive but its copy failed (say its disk lost the file): re-plan from elsewhere.
    c.handle(CacheInvalid(c.now, "w2", f.cache_name, "peer transfer from w1 failed"))
    out = c.finish("w2", t2.id, C.VINE_RESULT_INPUT_MISSING, -1, retry=True)
    assert of(FetchPeer, out) == [] and [s.worker for s in of(SendFile, out)] == ["w2"]
    c.s.validate()



def test_a_source_that_keeps_failing_is_removed_with_xfer_errors():
    """REFERENCE §3.6: five broken copies from one source, and no good ones, remove that worker."""
    c = Cluster(**{"max-task-attempts": 50})
    f = workflow_buffer()
    c.join("w1", cores=1)
    t1 = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f)
    c.finish("w1", t1.id)
    c.submit("sleep 100")  # keep w1 busy so consumers go to w2
    c.join("w2", cores=1)
    removed = []
    for attempt in range(5):
        t = c.submit("cat in", inputs=[(f, "in")])
        assert [(p.worker, p.source) for p in of(FetchPeer, c.last_out)] == [("w2", "w1")], attempt
        out = c.handle(CacheInvalid(c.now, "w2", f.cache_name, "peer transfer from w1 failed"))
        out += c.finish("w2", t.id, C.VINE_RESULT_INPUT_MISSING, -1, retry=True)
        removed += [r for r in out if isinstance(r, RemoveWorker)]
        c.now += 20  # past the transient-error interval: w1 may be asked again
        for d in of(Dispatch, out):  # the retried consumer went to w2 with a manager copy: let it end
            c.finish(d.worker, d.task_id)
        c.handle(CacheInvalid(c.now, "w2", f.cache_name, "dropped for the next round"))
    assert [(r.worker, r.reason) for r in removed] == [("w1", "XFER_ERRORS")]
    assert "w1" not in c.s.workers
    c.s.validate()

# --- 3. temp files -----------------------------------------------------------------------------------------


def test_consumer_waits_for_temp_then_runs_where_it_is():
    c = Cluster()
    x = temp()
    c.join("w1", cores=2)
    c.join("w2", cores=2)
    consumer = c.submit("cat x", inputs=[(x, "x")])
    assert of(Dispatch, c.last_out) == []
    assert c.s.tasks[consumer.id].state == "waiting"
    producer = c.submit("echo > x", outputs=[(x, "x")])
    (d,) = of(Dispatch, c.last_out)
    assert d.task_id == producer.id
    out = c.cached(d.worker, x)
    assert c.s.tasks[consumer.id].state != "waiting"
    out += c.finish(d.worker, producer.id)
    (d2,) = of(Dispatch, out)
    assert d2.task_id == consumer.id and d2.worker == d.worker  # the files policy follows the data
    assert of(FetchPeer, out) == [] and of(SendFile, out) == []
    c.s.validate()


def test_temp_consumer_on_another_worker_gets_a_peer_copy_never_a_manager_send():
    c = Cluster()
    x = temp()
    c.join("w1", cores=1)
    p = c.submit("echo > x", outputs=[(x, "x")])
    c.run_to_end(Dispatch("w1", p.id, Resources()))
    blocker = c.submit("sleep 100")  # w1 is busy from now on
    assert [d.worker for d in of(Dispatch, c.last_out)] == ["w1"]
    c.join("w2", cores=1)
    consumer = c.submit("cat x", inputs=[(x, "x")])
    out = c.last_out
    assert of(SendFile, out) == []
    assert [(f.worker, f.name, f.source) for f in of(FetchPeer, out)] == [("w2", x.cache_name, "w1")]
    assert [(d.worker, d.task_id) for d in of(Dispatch, out)] == [("w2", consumer.id)]
    assert blocker.id not in c.returned
    c.s.validate()


def test_temp_replica_count_copies_new_temps_to_other_workers():
    c = Cluster(temp_replica_count=2)
    x = temp()
    for w in ("w1", "w2", "w3"):
        c.join(w, cores=1)
    p = c.submit("echo > x", outputs=[(x, "x")])
    (d,) = of(Dispatch, c.last_out)
    out = c.cached(d.worker, x)
    (copy,) = of(FetchPeer, out)
    assert copy.source == d.worker and copy.worker != d.worker
    c.cached(copy.worker, x)
    c.finish(d.worker, p.id)
    assert sorted(st for st in c.s.files[x.cache_name].replicas.values()) == ["ready", "ready"]
    # Losing one holder costs no recomputation.
    c.lose(d.worker)
    consumer = c.submit("cat x", inputs=[(x, "x")])
    assert c.s.stats["tasks_recovery"] == 0
    assert [dd.task_id for dd in of(Dispatch, c.last_out)] == [consumer.id]
    c.s.validate()


# --- 4. lineage recovery -------------------------------------------------------------------------------------


def chain_on_w1(c: Cluster, n: int = 3) -> tuple[list[File], list[vine.Task]]:
    """Tasks A→B→C… each making one temp from the previous, all run on w1."""
    c.join("w1", cores=1)
    temps = [temp() for _ in range(n)]
    tasks = []
    for i, x in enumerate(temps):
        inputs = [(temps[i - 1], "in")] if i else []
        t = c.submit(f"step {i}", inputs=inputs, outputs=[(x, "out")])
        tasks.append(t)
        (d,) = of(Dispatch, c.last_out)
        assert d.worker == "w1"
        c.run_to_end(d)
    assert all(c.returned[t.id].result == C.VINE_RESULT_SUCCESS for t in tasks)
    return temps, tasks


def play(c: Cluster, out: list, fail: frozenset[str] = frozenset(), limit: int = 100) -> None:
    """Run every dispatched task to the end, and whatever that dispatches in turn; tasks whose
    command is in ``fail`` exit 1 without output."""
    pending = of(Dispatch, out)
    steps = 0
    while pending:
        steps += 1
        assert steps < limit, "endless loop of dispatches"
        d = pending.pop(0)
        if c.s.tasks[d.task_id].spec.command in fail:
            more = c.finish(d.worker, d.task_id, C.VINE_RESULT_SUCCESS, 1)
        else:
            more = c.run_to_end(d)
        pending += of(Dispatch, more)


def test_lost_chain_is_recomputed_recursively_when_a_consumer_needs_it():
    c = Cluster()
    temps, tasks = chain_on_w1(c)
    c.lose("w1")
    assert c.s.stats["tasks_recovery"] == 0  # lazy: nothing runs until someone needs the data
    consumer = c.submit("cat in", inputs=[(temps[-1], "in")])
    assert c.s.stats["tasks_recovery"] == 3
    hidden = [r for tid, r in c.s.tasks.items() if tid >= RECOVERY_ID_BASE]
    assert sorted(r.spec.command for r in hidden) == ["step 0", "step 1", "step 2"]
    assert all(r.recovery for r in hidden)
    out = c.join("w2", cores=1)
    (d,) = of(Dispatch, out)
    assert c.s.tasks[d.task_id].spec.command == "step 0"
    play(c, out)
    assert c.returned[consumer.id].result == C.VINE_RESULT_SUCCESS
    assert set(c.returned) == {t.id for t in tasks} | {consumer.id}, "recovery tasks are never returned"
    assert c.s.stats["tasks_recovery"] == 3
    c.s.validate()


def test_immediate_recovery_starts_at_worker_loss():
    c = Cluster(immediate_recovery=1)
    temps, _ = chain_on_w1(c)
    c.join("w2", cores=1)
    out = c.lose("w1")
    assert c.s.stats["tasks_recovery"] == 3
    (d,) = of(Dispatch, out)
    assert d.worker == "w2" and c.s.tasks[d.task_id].spec.command == "step 0"
    play(c, out)
    assert all(c.s._has_ready_replica(x.cache_name) for x in temps)
    consumer = c.submit("cat in", inputs=[(temps[-1], "in")])
    assert [dd.task_id for dd in of(Dispatch, c.last_out)] == [consumer.id]
    assert c.s.stats["tasks_recovery"] == 3
    c.s.validate()


def test_recovery_runs_before_higher_priority_user_tasks():
    c = Cluster()
    temps, _ = chain_on_w1(c, n=1)
    c.lose("w1")
    consumer = c.submit("cat in", inputs=[(temps[0], "in")])
    urgent = c.submit("urgent", priority=100)
    out = c.join("w2", cores=1)
    (d,) = of(Dispatch, out)
    assert d.task_id >= RECOVERY_ID_BASE
    assert urgent.id not in c.returned and consumer.id not in c.returned
    c.s.validate()


def test_recovery_of_a_producer_that_keeps_failing_ends_the_consumer():
    c = Cluster()
    temps, _ = chain_on_w1(c, n=2)
    c.lose("w1")
    consumer = c.submit("cat in", inputs=[(temps[-1], "in")])
    out = c.join("w2", cores=1)
    play(c, out, fail=frozenset({"step 0"}))
    assert c.returned[consumer.id].result == C.VINE_RESULT_INPUT_MISSING
    assert not c.s.waiting_on, "no task may wait for a temp that can no longer be made"
    assert c.s.counts()["ready"] == c.s.counts()["dispatched"] == 0
    c.s.validate()


def test_recovery_is_bounded_when_workers_keep_dying():
    """Every worker that remakes the temp dies before the consumer can use it: the consumer must end."""
    c = Cluster(max_task_attempts=2)
    temps, _ = chain_on_w1(c, n=1)
    x = temps[0]
    c.lose("w1")
    consumer = c.submit("cat in", inputs=[(x, "in")])
    rounds = 0
    while consumer.id not in c.returned:
        rounds += 1
        assert rounds <= 10, "recovery keeps going: it must be bounded by max-task-attempts"
        w = f"w{rounds + 1}"
        out = c.join(w, cores=1)
        for d in of(Dispatch, out):
            assert d.task_id >= RECOVERY_ID_BASE, "the consumer must never run without its input"
            c.cached(w, x)  # the recovery remakes the temp, then its worker dies before reporting
        c.lose(w)
    assert c.returned[consumer.id].result == C.VINE_RESULT_INPUT_MISSING
    assert c.s.stats["tasks_recovery"] == 2
    assert not c.s.waiting_on and c.s.counts()["ready"] == 0
    c.s.validate()


def test_temp_never_made_by_finished_producer_fails_consumer_at_once():
    c = Cluster()
    x = temp()
    c.join("w1", cores=1)
    p = c.submit("true", outputs=[(x, "x")])
    (d,) = of(Dispatch, c.last_out)
    c.finish("w1", p.id, C.VINE_RESULT_OUTPUT_MISSING, 0)
    consumer = c.submit("cat x", inputs=[(x, "x")])
    assert c.returned[consumer.id].result == C.VINE_RESULT_INPUT_MISSING
    assert c.s.stats["tasks_recovery"] == 0
    c.s.validate()


# --- 5. worker loss --------------------------------------------------------------------------------------------


def test_keepalive_timeout_removes_a_silent_worker_and_moves_its_task():
    c = Cluster(keepalive_interval=1, keepalive_timeout=2)
    c.join("w1", cores=1)
    t = c.submit("sleep 100")
    (d,) = of(Dispatch, c.last_out)
    c.join("w2", cores=1)
    out = c.tick(1.5)
    assert sorted(k.worker for k in of(Keepalive, out)) == ["w1", "w2"]
    c.handle(WorkerHeard(c.now, "w2"))  # w2 answers; w1 is stopped (SIGSTOP) and never does
    out = c.tick(2.5)
    assert [r.worker for r in of(RemoveWorker, out)] == ["w1"]
    assert [(dd.worker, dd.task_id) for dd in of(Dispatch, out)] == [("w2", t.id)]
    assert "w1" not in c.s.workers and t.id not in c.returned
    assert c.s.stats["workers_lost"] == 1
    c.s.validate()


def test_worker_loss_returns_its_tasks_to_the_queue():
    c = Cluster()
    c.join("w1", cores=2)
    a, b = c.submit("a"), c.submit("b")
    assert {d.worker for d in of(Dispatch, [*c.last_out])} <= {"w1"}
    c.lose("w1")
    assert {c.s.tasks[a.id].state, c.s.tasks[b.id].state} == {"ready"}
    out = c.join("w2", cores=2)
    assert sorted(d.task_id for d in of(Dispatch, out)) == [a.id, b.id]
    assert not c.returned
    c.s.validate()


# --- 6. garbage collection ------------------------------------------------------------------------------------


def test_prune_unlinks_every_replica_but_keeps_the_declaration():
    c = Cluster()
    f = workflow_buffer()
    c.join("w1", cores=1)
    c.join("w2", cores=1)
    t1 = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f)
    t2 = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w2", f)
    for tid in (t1.id, t2.id):
        c.finish(c.s.tasks[tid].worker, tid)
    out = c.handle(FileUndeclared(c.now, f.cache_name, forget=False))
    assert sorted(u.worker for u in of(Unlink, out)) == ["w1", "w2"]
    assert f.cache_name in c.s.files and not c.s.files[f.cache_name].replicas
    assert all(f.cache_name not in w.replicas for w in c.s.workers.values())
    # Still declared: a later task gets it sent again.
    c.submit("cat in", inputs=[(f, "in")])
    assert len(of(SendFile, c.last_out)) == 1
    c.s.validate()


def test_undeclare_forgets_the_file():
    c = Cluster()
    x = temp()
    c.join("w1", cores=1)
    p = c.submit("echo > x", outputs=[(x, "x")])
    c.run_to_end(Dispatch("w1", p.id, Resources()))
    out = c.handle(FileUndeclared(c.now, x.cache_name, forget=True))
    assert [(u.worker, u.name) for u in of(Unlink, out)] == [("w1", x.cache_name)]
    assert x.cache_name not in c.s.files and x.cache_name not in c.s.workers["w1"].replicas
    c.s.validate()


def test_task_level_input_unlinked_by_the_worker_is_forgotten():
    c = Cluster()
    f = File(None, "buffer", "buffer", data=b"abc")
    c.join("w1", cores=1)
    t = c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f)
    c.finish("w1", t.id, unlinked=(f.cache_name,))
    assert f.cache_name not in c.s.workers["w1"].replicas
    assert not c.s.files[f.cache_name].replicas
    c.s.validate()


def test_pruned_chain_keeps_replica_table_bounded():
    c = Cluster()
    c.join("w1", cores=1)
    prev = None
    for i in range(50):
        x = temp()
        t = c.submit(f"step {i}", inputs=[(prev, "in")] if prev else [], outputs=[(x, "out")])
        (d,) = of(Dispatch, c.last_out)
        c.run_to_end(d, sizes=MB)
        if prev is not None:
            c.handle(FileUndeclared(c.now, prev.cache_name, forget=True))
        c.handle(TasksRetrieved(c.now, (t.id,)))
        prev = x
        assert len(c.s.workers["w1"].replicas) <= 2
    c.s.validate()


def test_stats_count_peer_transfers_and_bytes():
    c = Cluster()
    f = workflow_buffer(b"y" * 5000)
    for w in ("w1", "w2"):
        c.join(w, cores=1)
    c.submit("cat in", inputs=[(f, "in")])
    c.submit("cat in", inputs=[(f, "in")])
    c.cached("w1", f, 5000)
    (p,) = [i for i in c.s.transfers.items() if i[1] == "w1"]
    c.cached(p[0][0], f, 5000)
    assert (c.s.stats["peer_transfers"], c.s.stats["bytes_peer"]) == (1, 5000)
    # A transfer that fails does not count.
    c.join("w3", cores=1)
    c.submit("cat in", inputs=[(f, "in")])
    (fp,) = of(FetchPeer, c.last_out)
    c.handle(CacheInvalid(c.now, fp.worker, f.cache_name, "broken"))
    assert (c.s.stats["peer_transfers"], c.s.stats["bytes_peer"]) == (1, 5000)
    assert not c.s.transfers
    c.s.validate()


def test_undeclare_while_a_peer_copy_is_on_its_way_leaks_nothing():
    c = Cluster()
    f = workflow_buffer()
    t1, t2 = peer_copy_to_w2(c, f)
    c.finish("w1", t1.id)
    c.finish("w2", t2.id)
    out = c.handle(FileUndeclared(c.now, f.cache_name, forget=True))
    assert sorted(u.worker for u in of(Unlink, out)) == ["w1", "w2"]
    # The worker keeps a file still arriving (it ignores the unlink) and reports it when it lands.
    out = c.cached("w2", f)
    assert not c.s.transfers and c.s.workers["w1"].outgoing == 0, "the finished transfer must be released"
    assert f.cache_name not in c.s.workers["w2"].replicas
    assert [(u.worker, u.name) for u in of(Unlink, out)] == [("w2", f.cache_name)]
    c.s.validate()


def test_cache_bytes_follow_the_replicas():
    c = Cluster()
    c.join("w1", cores=1)
    a, b = temp(), File(None, "buffer", "buffer", data=b"z" * 10)
    p = c.submit("make", inputs=[(b, "b")], outputs=[(a, "a")])
    c.cached("w1", b, 10)
    c.cached("w1", a, 3 * MB)
    assert c.s.workers["w1"].cache_bytes == 3 * MB + 10
    c.finish("w1", p.id, unlinked=(b.cache_name,))  # the task-level input is gone
    assert c.s.workers["w1"].cache_bytes == 3 * MB
    c.handle(FileUndeclared(c.now, a.cache_name, forget=False))
    assert c.s.workers["w1"].cache_bytes == 0
    c.s.validate()


def test_undeclared_temp_drops_its_lineage():
    c = Cluster()
    c.join("w1", cores=1)
    x = temp()
    p = c.submit("make", outputs=[(x, "x")])
    c.run_to_end(Dispatch("w1", p.id, Resources()))
    assert x.cache_name in c.s.lineage
    c.handle(FileUndeclared(c.now, x.cache_name, forget=False))
    assert x.cache_name in c.s.lineage, "a pruned temp can still be remade"
    c.handle(FileUndeclared(c.now, x.cache_name, forget=True))
    assert x.cache_name not in c.s.lineage, "a forgotten temp must not pin its producer in memory"
    c.s.validate()
