"""dask's diagnostics with ``scheduler=m.get`` (issue 15): Callback, ProgressBar, tqdm, Profiler."""

from __future__ import annotations

import io

import dask.array as da
import pytest
from dask.callbacks import Callback

from daskvine import ON_WORKER


class Recorder(Callback):
    """Counts every hook call dask's protocol makes."""

    def __init__(self):
        super().__init__()
        self.started = 0
        self.state_total = None
        self.pre: list = []
        self.post: dict = {}
        self.finished: list = []

    def _start(self, dsk):
        self.started += 1

    def _start_state(self, dsk, state):
        self.state_total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))

    def _pretask(self, key, dsk, state):
        self.pre.append(key)

    def _posttask(self, key, result, dsk, state, worker_id):
        self.post[key] = result

    def _finish(self, dsk, state, errored):
        self.finished.append(errored)


def collection():
    x = da.arange(64, chunks=8).reshape(8, 8).rechunk((4, 4))
    return (x + x.T).sum(axis=1)


def test_counting_callback_sees_exactly_the_graphs_tasks(dv, mode):
    coll = collection()
    with Recorder() as ours:
        got = coll.compute(scheduler=dv.get, task_mode=mode)
    with Recorder() as theirs:
        want = coll.compute(scheduler="threads")
    assert (got == want).all()
    assert ours.started == 1 and ours.finished == [False]
    # dask 2026 names the final key afresh on every compute ("finalize-<token>"): compare the rest.
    def named(keys):
        return sorted(str(k) for k in keys if not str(k).startswith("finalize-"))

    assert named(ours.pre) == named(theirs.pre) and len(ours.pre) == len(theirs.pre)
    assert len(ours.pre) == len(set(ours.pre)) == ours.state_total == theirs.state_total
    assert set(ours.post) == set(ours.pre)
    # The requested key's value comes back; intermediates stay on the workers.
    target = [k for k in ours.post if ours.post[k] is not ON_WORKER]
    assert len(target) >= 1 and any(ours.post[k] is ON_WORKER for k in ours.post)


def test_callbacks_keyword_and_dict_graphs(dv):
    from dask.utils_test import inc

    rec = Recorder()
    dsk = {"a": 1, "b": (inc, "a"), "c": "b", "d": (inc, "c")}
    assert dv.get(dsk, ["d", "c"], callbacks=[rec]) == (3, 2)
    assert sorted(rec.pre) == ["b", "c", "d"]  # the literal "a" is no task, as in dask; the alias "c" is
    assert rec.post["d"] == 3 and rec.post["c"] == 2


def fail(x):
    raise RuntimeError("expected failure")


def test_a_failing_task_still_calls_finish(dv, mode):
    rec = Recorder()
    with rec, pytest.raises(RuntimeError, match="expected failure"):
        dv.get({"a": 1, "b": (fail, "a"), "c": (len, "b")}, "c", task_mode=mode)
    assert rec.finished == [True]


def test_progressbar_reaches_100_percent(dv):
    from dask.diagnostics import ProgressBar

    out = io.StringIO()
    with ProgressBar(out=out, dt=0.01):
        collection().compute(scheduler=dv.get)
    text = out.getvalue()
    assert "100%" in text and "Completed" in text


def test_tqdm_callback_counts_every_task(dv):
    pytest.importorskip("tqdm")
    from tqdm.dask import TqdmCallback

    out = io.StringIO()
    rec = Recorder()
    with rec, TqdmCallback(file=out, mininterval=0) as cb:
        collection().compute(scheduler=dv.get)
    assert cb.pbar.n == cb.pbar.total == len(rec.pre) > 0


def test_profiler_records_each_task_with_its_worker(dv):
    from dask.diagnostics import Profiler

    with Profiler() as prof:
        result = collection().compute(scheduler=dv.get)
    assert (result == collection().compute(scheduler="threads")).all()
    assert len(prof.results) > 0
    assert all(r.end_time >= r.start_time for r in prof.results)
    assert {r.worker_id for r in prof.results} - {"manager"}  # remote tasks name their worker


def test_daskvine_hooks_see_the_vine_tasks(dv, mode):
    submitted, done = [], []
    dv.get({"a": 1, "b": (sum, [1, "a"]), "c": (max, "b", 0)}, "c", task_mode=mode,
           vine_submit=lambda key, task: submitted.append((key, task.id)),
           vine_done=lambda key, task: done.append((key, task.result, task.hostname)))
    assert [k for k, _ in submitted] == ["b", "c"]
    assert [(k, r) for k, r, _ in done] == [("b", "success"), ("c", "success")]
    assert all(host for _, _, host in done)


def test_own_progress_bar_coexists_with_callbacks(dv, capsys):
    rec = Recorder()
    with rec:
        dv.get({"a": 1, "b": (abs, "a"), "c": (abs, "b")}, "c", progress_disable=False, progress_label="[red]graphwork")
    out = capsys.readouterr().out
    assert "graphwork" in out and "2/2" in out
    assert len(rec.pre) == 2


def test_own_progress_bar_is_off_when_stdout_is_not_a_terminal(dv, capsys):
    dv.get({"a": 1, "b": (abs, "a")}, "b", progress_label="[red]graphwork")
    assert "graphwork" not in capsys.readouterr().out
    dv.get({"a": 1, "b": (abs, "a")}, "b", progress_disable=True, progress_label="[red]graphwork")
    assert "graphwork" not in capsys.readouterr().out
