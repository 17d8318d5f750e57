"""Serverless end to end: libraries in both modes, hoisted modules, context, crashes, slots, eviction."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import core as vine
from core.api.python_task import RemoteTraceback
from core.errors import TaskError
from tests.conftest import drain, run, wait_until
from tests.integration.conftest import records

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- library functions ----------------------------------------------------------------------------------


def make_context(base, scale=1):
    import os as _os

    return {"base": base * scale, "context_pid": _os.getpid()}


def add_base(x):
    return x + vine.load_variable_from_library("base")


def hsv(x):
    # ``colorsys`` is not imported here: the library hoists it (import_modules) into this function's globals.
    return colorsys.rgb_to_hsv(x, x, x)  # noqa: F821


def modules_loaded():
    import sys as _sys

    return "colorsys" in _sys.modules


def whoami():
    import os as _os

    return {"pid": _os.getpid(), "cwd": _os.getcwd(), "context_pid": vine.load_variable_from_library("context_pid")}


_STATE = []


def remember(x):
    _STATE.append(x)
    return list(_STATE)


def raise_error(msg):
    raise KeyError(msg)


def dict_with_result_key():
    return {"Result": 1, "Success": False, "Reason": "mine"}


def die_now():
    os._exit(7)


def broken_context():
    raise RuntimeError("context exploded on purpose")


def read_input(name):
    with open(name) as fh:
        return fh.read()


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


# --- modes, modules, context ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fork", "direct"])
def test_library_modes_modules_and_context(manager, start_worker, mode):
    start_worker(manager, cores=2)
    lib = manager.create_library_from_functions(
        f"lib-{mode}", add_base, hsv, modules_loaded, whoami, remember, raise_error, dict_with_result_key,
        import_modules=[__import__("colorsys")], exec_mode=mode, library_context_info=[make_context, [10], {"scale": 3}],
    )
    lib.set_cores(1)
    manager.install_library(lib)
    assert manager.check_library_exists(f"lib-{mode}")
    calls = {
        "add": vine.FunctionCall(f"lib-{mode}", "add_base", 5),
        "hsv": vine.FunctionCall(f"lib-{mode}", "hsv", 1.0),
        "mods": vine.FunctionCall(f"lib-{mode}", "modules_loaded"),
        "who": vine.FunctionCall(f"lib-{mode}", "whoami"),
        "err": vine.FunctionCall(f"lib-{mode}", "raise_error", "nope"),
        "dict": vine.FunctionCall(f"lib-{mode}", "dict_with_result_key"),
    }
    for c in calls.values():
        manager.submit(c)
    drain(manager, 60)
    assert calls["add"].output == 35
    assert calls["hsv"].output == (0.0, 0.0, 1.0)
    assert calls["mods"].output is True
    assert calls["dict"].output == {"Result": 1, "Success": False, "Reason": "mine"}  # not unwrapped
    err = calls["err"].output
    assert isinstance(err, KeyError) and isinstance(err.__cause__, RemoteTraceback) and "raise_error" in err.__vine_traceback__
    who = calls["who"].output
    assert "/sandbox/" in who["cwd"]  # a call runs in its own sandbox
    if mode == "direct":
        assert who["pid"] == who["context_pid"]  # in the library process itself
    else:
        assert who["pid"] != who["context_pid"]  # in a fork of it
    for c in calls.values():
        assert c.result == "success" and c.resources_allocated.cores == 0 and c.resources_allocated.memory == 0
    # State: a direct call sees what earlier calls left; a forked call starts from the library's state.
    first, second = (run(manager, vine.FunctionCall(f"lib-{mode}", "remember", i)).output for i in (1, 2))
    assert first == [1]
    assert second == ([1, 2] if mode == "direct" else [2])
    assert records(manager, "LIBRARY")


def test_call_inputs_and_big_arguments(manager, start_worker, tmp_path):
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("files", read_input, add_base, library_context_info=[make_context, [1]])
    manager.install_library(lib)
    data = tmp_path / "data.txt"
    data.write_text("hello from a file")
    c = vine.FunctionCall("files", "read_input", "data.txt")
    c.add_input(manager.declare_file(str(data)), "data.txt")
    big = vine.FunctionCall("files", "read_input", "x" * 100_000)  # arguments too big to inline travel as a file
    for t in (c, big):
        manager.submit(t)
    drain(manager, 60)
    assert c.output == "hello from a file"
    assert isinstance(big.output, OSError)


def test_submit_needs_an_installed_library(manager):
    with pytest.raises(TaskError, match="not installed"):
        manager.submit(vine.FunctionCall("nowhere", "f"))
    with pytest.raises(ValueError):
        manager.create_library_from_functions("empty")
    with pytest.raises(ValueError):
        manager.create_library_from_functions("badmode", add_base, exec_mode="threads")
    assert not manager.check_library_exists("nowhere")
    assert manager.empty()


# --- failures ------------------------------------------------------------------------------------------------


def test_crashing_library_is_retried_then_calls_fail_clearly(manager, start_worker):
    manager.tune("max-library-retries", 2)
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("doomed", add_base, library_context_info=[broken_context, [], {}])
    manager.install_library(lib)
    calls = [vine.FunctionCall("doomed", "add_base", i) for i in range(3)]
    for c in calls:
        manager.submit(c)
    drain(manager, 60)
    for c in calls:
        assert c.result == "missing library"
        out = c.output
        assert isinstance(out, vine.FunctionCallNoResult)
        assert "exited 3 times" in str(out) and "context exploded on purpose" in str(out)
    assert len(records(manager, "LIBRARY")) >= 3
    assert manager.stats.libraries_failed == 3
    assert not manager.check_library_exists("doomed")
    logs = [os.path.join(manager.library_logging_directory, f) for f in os.listdir(manager.library_logging_directory)]
    assert logs and any("context exploded" in read_text(p) for p in logs)


def read_text(path):
    with open(path) as fh:
        return fh.read()


def test_call_that_kills_a_direct_library(manager, start_worker):
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("fragile", die_now, add_base, exec_mode="direct", library_context_info=[make_context, [1]])
    manager.install_library(lib)
    killer = run(manager, vine.FunctionCall("fragile", "die_now"))
    assert killer.result == "library exit"
    assert isinstance(killer.output, vine.FunctionCallNoResult)
    after = run(manager, vine.FunctionCall("fragile", "add_base", 1))  # a new instance starts
    assert after.output == 2
    assert manager.check_library_exists("fragile")


def test_forked_call_that_dies_leaves_the_library_alive(manager, start_worker):
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("sturdy", die_now, add_base, exec_mode="fork", library_context_info=[make_context, [1]])
    manager.install_library(lib)
    dead = run(manager, vine.FunctionCall("sturdy", "die_now"))
    assert dead.result == "success" and dead.exit_code == 7
    assert isinstance(dead.output, vine.FunctionCallNoResult)
    assert run(manager, vine.FunctionCall("sturdy", "add_base", 1)).output == 2
    assert manager.stats.libraries_started == 1


def test_call_time_limit_and_cancel(manager, start_worker):
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("naps", nap, exec_mode="fork")
    lib.set_function_slots(2)
    manager.install_library(lib)
    limited = vine.FunctionCall("naps", "nap", 30)
    limited.set_time_max(1)
    manager.submit(limited)
    doomed = vine.FunctionCall("naps", "nap", 30)
    manager.submit(doomed)
    wait_until(lambda: doomed.state == "RUNNING", 30, "the call to start")
    manager.cancel_by_task_id(doomed.id)
    drain(manager, 60)
    assert limited.result == "max wall time"
    assert doomed.result == "cancelled"
    assert run(manager, vine.FunctionCall("naps", "nap", 0)).output == 0


def test_remove_library_and_idle_eviction(manager, start_worker):
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("whole", add_base, library_context_info=[make_context, [1]])
    manager.install_library(lib)  # no resources: an instance takes the whole worker
    assert run(manager, vine.FunctionCall("whole", "add_base", 1)).output == 2
    t = run(manager, vine.Task("echo room"))  # needs the worker: the idle library gives it up
    assert t.output == "room\n"
    assert run(manager, vine.FunctionCall("whole", "add_base", 2)).output == 3  # and comes back
    manager.remove_library("whole")
    wait_until(lambda: not manager.check_library_exists("whole"), 10, "the library to go")
    with pytest.raises(TaskError):
        manager.submit(vine.FunctionCall("whole", "add_base", 3))
