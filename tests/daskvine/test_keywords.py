"""Each keyword of ``get`` (REFERENCE §6.1, issue 7 point 2), each with a test that fails if it were ignored."""

from __future__ import annotations

import math
import os
import stat
import sys

import pytest
from dask.callbacks import Callback
from dask.utils_test import inc

from daskvine import ON_WORKER


def blob(n):
    return b"x" * n


def chain(n=4):
    dsk = {"k0": (inc, 0)}
    for i in range(1, n):
        dsk[f"k{i}"] = (inc, f"k{i - 1}")
    return dsk, f"k{n - 1}"


def fan(n=6):
    dsk = {("leaf", i): (inc, i) for i in range(n)}
    dsk["total"] = (sum, [("leaf", i) for i in range(n)])
    return dsk


class Posts(Callback):
    def __init__(self):
        super().__init__()
        self.events: list = []
        self.values: dict = {}

    def _pretask(self, key, dsk, state):
        self.events.append(("pre", key))

    def _posttask(self, key, result, dsk, state, worker):
        self.events.append(("post", key))
        self.values[key] = result


@pytest.mark.parametrize("switch", ["lazy_transfers", "worker_transfers"])
def test_lazy_transfers_keep_intermediates_on_workers(dv, mode, switch):
    dsk = {"size": 3_000_000, "big": (blob, "size"), "n": (len, "big")}
    before = dv.stats.bytes_received
    with Posts() as lazy:
        assert dv.get(dsk, "n", task_mode=mode) == 3_000_000
    lazy_bytes = dv.stats.bytes_received - before
    before = dv.stats.bytes_received
    with Posts() as eager:
        assert dv.get(dsk, "n", task_mode=mode, **{switch: False}) == 3_000_000
    eager_bytes = dv.stats.bytes_received - before
    assert lazy.values["big"] is ON_WORKER and eager.values["big"] == b"x" * 3_000_000
    assert lazy_bytes < 1_000_000 and eager_bytes > 3_000_000


def allocated(key, task, into):
    into[key] = task


def test_resources_size_each_task(dv):
    seen: dict = {}
    # 500 MB of a 2000 MB worker: a quarter of it (a whole core would have meant the whole worker).
    dv.get(fan(2), "total", task_mode="tasks", resources={"memory": 500}, vine_done=lambda k, t: allocated(k, t, seen))
    assert {t.resources_requested.memory for t in seen.values()} == {500}
    assert {t.resources_allocated.memory for t in seen.values()} == {500}
    seen.clear()
    dv.get(fan(2), "total", task_mode="tasks", vine_done=lambda k, t: allocated(k, t, seen))
    assert all(t.resources_allocated.memory == 2000 for t in seen.values())  # unspecified: the whole worker


def library_of(dv, calls):
    names = {t.library_name for t in calls.values()}
    assert len(names) == 1
    return dv._library_templates()[names.pop()]


def test_function_calls_size_the_library_from_resources_or_lib_resources(dv):
    seen: dict = {}
    dv.get(fan(2), "total", resources={"memory": 222, "cores": 1}, vine_submit=lambda k, t: allocated(k, t, seen))
    assert library_of(dv, seen).resources_requested.memory == 222
    seen.clear()
    dv.get(fan(2), "total", resources={"memory": 222}, lib_resources={"cores": 1, "memory": 333, "slots": 1},
           vine_submit=lambda k, t: allocated(k, t, seen))
    assert library_of(dv, seen).resources_requested.memory == 333


def grow(x):
    data = bytearray(30 * 1024 * 1024)  # a measurable peak
    data[0] = 1
    import time

    time.sleep(1.2)  # outlive one monitor interval
    return x + 1


def test_resources_mode_max_measures_and_sizes_from_the_peak(dv):
    seen: dict = {}
    a, b, c = ("grow", 0), ("grow", 1), ("grow", 2)  # one category: the keys' name prefix, "grow"
    dsk = {a: (grow, 0), b: (grow, a), c: (grow, b)}
    assert dv.get(dsk, c, resources={"cores": 1, "memory": 1500}, resources_mode="max",
                  vine_done=lambda k, t: allocated(k, t, seen)) == 3
    assert all(type(t).__name__ == "PythonTask" for t in seen.values())  # "max" needs tasks: chosen for it
    peak = max(seen[k].resources_measured.memory for k in (a, b))  # c is made after b finished
    assert peak > 30  # the 30 MB buffer, measured
    assert seen[a].resources_requested.memory == 1500  # nothing measured yet: the maximum given
    assert seen[c].resources_requested.memory == math.ceil(peak) < 1500
    seen.clear()
    dv.get(dsk, c, task_mode="tasks", resources={"cores": 1, "memory": 1500}, vine_done=lambda k, t: allocated(k, t, seen))
    assert seen[c].resources_requested.memory == 1500 and seen[a].resources_measured.memory <= 0
    with pytest.raises(ValueError, match="task_mode='tasks'"):
        dv.get(dsk, c, task_mode="function-calls", resources_mode="max")


def read_marker(path):
    with open(path) as fh:
        return fh.read()


def getenv(name):
    return os.environ.get(name)


def test_extra_files_reach_every_task(dv, mode, tmp_path):
    src = tmp_path / "extra.txt"
    src.write_text("shipped")
    f = dv.declare_file(str(src), cache=True)
    assert dv.get({"r": (read_marker, "extra.txt")}, "r", task_mode=mode, extra_files={f: "extra.txt"}) == "shipped"
    with pytest.raises(FileNotFoundError):
        dv.get({"r": (read_marker, "extra.txt")}, "r", task_mode=mode)


def test_env_vars_static_and_computed(dv, mode):
    env = {"DV_STATIC": "hello", "DV_COMPUTED": lambda manager, task: f"port-{manager.port}"}
    dsk = {"a": (getenv, "DV_STATIC"), "b": (getenv, "DV_COMPUTED"), "both": (tuple, ["a", "b"])}
    assert dv.get(dsk, "both", task_mode=mode, env_vars=env) == ("hello", f"port-{dv.port}")


def test_environment_runs_tasks_inside_it(dv, mode, tmp_path):
    env_dir = tmp_path / "env"
    (env_dir / "bin").mkdir(parents=True)
    run = env_dir / "bin" / "run_in_env"
    run.write_text("#!/bin/sh\nexport DV_FROM_ENV=inside\n"
                   f"export PATH={os.path.dirname(sys.executable)}:$PATH\nexec /bin/sh -c \"$1\"\n")
    run.chmod(run.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    assert dv.get({"a": (getenv, "DV_FROM_ENV")}, "a", task_mode=mode, environment=str(env_dir)) == "inside"
    assert dv.get({"a": (getenv, "DV_FROM_ENV")}, "a", task_mode=mode) is None


def module_loaded(name):
    return name in sys.modules


def extra_helper(x):
    return f"helper:{x}"


def test_library_keywords(dv):
    import core as vine

    dsk = {"m": (module_loaded, "xml.dom.minidom")}
    assert dv.get(dsk, "m", lib_modules=["xml.dom.minidom"]) is True
    assert dv.get(dsk, "m") is False
    assert dv.get({"e": (getenv, "DV_LIBCMD")}, "e", lib_command="DV_LIBCMD=prefixed") == "prefixed"
    seen: dict = {}
    dv.get({"x": (inc, 1)}, "x", lib_extra_functions=[extra_helper], vine_submit=lambda k, t: allocated(k, t, seen))
    call = vine.FunctionCall(seen["x"].library_name, "extra_helper", 7)
    dv.submit(call)
    assert dv.wait_for_task_id(call.id, 60).output == "helper:7"


def test_task_mode_picks_the_kind_of_task(dv):
    seen: dict = {}
    dv.get({"x": (inc, 1)}, "x", vine_submit=lambda k, t: allocated(k, t, seen))
    assert type(seen["x"]).__name__ == "FunctionCall"  # the default
    dv.get({"x": (inc, 1)}, "x", task_mode="tasks", vine_submit=lambda k, t: allocated(k, t, seen))
    assert type(seen["x"]).__name__ == "PythonTask"
    with pytest.raises(ValueError, match="task_mode"):
        dv.get({"x": (inc, 1)}, "x", task_mode="threads")


def test_checkpoint_fn_true_brings_the_value_back(dv, mode):
    dsk, last = chain(4)
    with Posts() as plain:
        dv.get(dsk, last, task_mode=mode)
    with Posts() as kept:
        assert dv.get(dsk, last, task_mode=mode, checkpoint_fn=lambda d, k: k == "k1") == 4
    assert plain.values["k1"] is ON_WORKER and kept.values["k1"] == 2 and kept.values["k2"] is ON_WORKER


def test_prune_depth(dv, mode):
    dsk, last = chain(4)
    files: dict = {}
    counts: dict = {}

    def done(key, task):
        files[key] = task.output_file
        if key == "k2":
            counts["k0 at k2"] = dv.get_file_replica_count(files["k0"])

    dv.get(dsk, last, task_mode=mode, vine_done=done)
    assert counts["k0 at k2"] == 0  # default 0: pruned once its consumer k1 finished
    dv.get(dsk, last, task_mode=mode, vine_done=done, prune_depth=2)
    assert counts["k0 at k2"] == 1  # kept until consumers two levels further finished
    assert dv.get_file_replica_count(files["k0"]) == 0  # and every temp is gone when get returns


def test_priority_modes_order_dispatch(dv, mode):
    orders = {}
    for prio in ("FIFO", "LIFO"):
        with Posts() as rec:
            dv.get(fan(5), "total", task_mode=mode, task_priority_mode=prio, max_pending=1)
        orders[prio] = [k for ev, k in rec.events if ev == "pre" and k != "total"]
    assert orders["FIFO"] == list(reversed(orders["LIFO"])) and len(orders["FIFO"]) == 5
    with pytest.raises(ValueError, match="task_priority_mode"):
        dv.get(fan(2), "total", task_priority_mode="biggest")


def test_scheduling_mode_sets_the_policy(dv):
    dv.get({"x": (inc, 1)}, "x", scheduling_mode="worst")
    assert dv._state.policy == "worst"
    dv.get({"x": (inc, 1)}, "x")
    assert dv._state.policy == "files"


def in_flight_peak(events):
    now = peak = 0
    for ev, _ in events:
        now += 1 if ev == "pre" else -1
        peak = max(peak, now)
    return peak


def test_max_pending_and_submit_per_cycle(dv, mode):
    with Posts() as free:
        dv.get(fan(6), "total", task_mode=mode)
    with Posts() as capped:
        dv.get(fan(6), "total", task_mode=mode, max_pending=2)
    with Posts() as paced:
        dv.get(fan(6), "total", task_mode=mode, submit_per_cycle=1)
    assert in_flight_peak(free.events) >= 6  # function calls: the total is submitted ahead too
    assert in_flight_peak(capped.events) == 2
    assert paced.events[:2] == [("pre", paced.events[0][1]), ("post", paced.events[0][1])]
    assert free.events[:6] == [("pre", k) for _, k in free.events[:6]]


def test_verbose_prints_each_key(dv, capsys):
    dv.get({"x": (inc, 1), "y": (inc, "x")}, "y", verbose=True)
    out = capsys.readouterr().out
    assert "'x' done on" in out and "'y' done on" in out
    dv.get({"x": (inc, 1), "y": (inc, "x")}, "y")
    assert "done on" not in capsys.readouterr().out


def timing_wrapper(key, compute):
    value = compute()
    return ({"key": key, "pid": os.getpid()}, value)


def test_wrapper_and_wrapper_proc(dv, mode):
    infos: list = []
    dsk, last = chain(3)
    assert dv.get(dsk, last, task_mode=mode, wrapper=timing_wrapper, wrapper_proc=infos.append) == 3
    assert sorted(i["key"] for i in infos) == ["k0", "k1", "k2"]
    assert all(i["pid"] != os.getpid() for i in infos)


def test_unknown_keywords_are_ignored(dv):
    assert dv.get({"x": (inc, 1)}, "x", not_a_daskvine_keyword=42) == 2


def first_byte(data, i):
    return data[i]


def test_a_large_value_many_tasks_need_travels_once_per_worker(dv, mode):
    big = bytes(range(256)) * 8192  # 2 MiB, a literal of the graph (as da.from_array's source is)
    dsk = {"big": big, **{("b", i): (first_byte, "big", i) for i in range(8)}}
    dsk["all"] = (list, [("b", i) for i in range(8)])
    before = dv.stats.bytes_sent
    assert dv.get(dsk, "all", task_mode=mode) == list(range(8))
    sent = dv.stats.bytes_sent - before
    assert sent < 3 * len(big), f"{sent} bytes sent for 8 tasks sharing a 2 MiB value (two workers)"


def test_library_configurations_are_reused_and_bounded(dv):
    from daskvine.manager import MAX_LIBRARIES

    seen: dict = {}
    dv.get({"x": (inc, 1)}, "x", vine_submit=lambda k, t: allocated(k, t, seen))
    first = seen["x"].library_name
    dv.get({"x": (inc, 2)}, "x", vine_submit=lambda k, t: allocated(k, t, seen))
    assert seen["x"].library_name == first  # same configuration: the installed library again
    names = set()
    for i in range(MAX_LIBRARIES + 2):  # a new lambda each time, as inline code makes on every compute
        dv.get({"x": (inc, 1)}, "x", env_vars={"V": lambda m, t, i=i: str(i)}, vine_submit=lambda k, t: allocated(k, t, seen))
        names.add(seen["x"].library_name)
    assert len(names) == MAX_LIBRARIES + 2
    installed = [n for n in dv._library_templates() if n.startswith("Dask-Library-")]
    assert len(installed) <= MAX_LIBRARIES
