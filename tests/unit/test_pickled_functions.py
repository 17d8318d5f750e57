"""A PythonTask's function is pickled once and reused only while nothing its pickle reads changed
(core.api.python_task.pickled_function). Reuse shows as the very same bytes object coming back; every
change the snapshot covers must give a fresh pickle that holds the new state."""

from __future__ import annotations

import sys
import types

import cloudpickle
import pytest

from core.api.python_task import content_name, pickled_function
from core.errors import TaskError

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # pickled by value, as a __main__ function is

SCALE = 3
NAMES = ["a"]  # mutable: a function naming it is pickled at every submit
EXPECTED = 10


def scaled(x: int) -> int:
    return x * SCALE


def uses_a_list(x: int) -> int:
    return len(NAMES) + x


def plain(x: int) -> int:
    return x + 1


def with_default(x: int, k: int = 2) -> int:
    return x + k


def uses_sys(x: int) -> str:
    return sys.platform + str(x)


def _run(data: bytes, *args: object) -> object:
    return cloudpickle.loads(data)(*args)


def test_the_same_function_is_pickled_once_and_named_by_its_bytes():
    first, name = pickled_function(plain)
    again, name_again = pickled_function(plain)
    assert again is first and name_again == name == content_name(first)
    assert _run(first, 1) == 2


def test_a_rebound_global_gives_a_fresh_pickle_holding_the_new_value():
    global SCALE
    before, _ = pickled_function(scaled)
    assert pickled_function(scaled)[0] is before and _run(before, 2) == 6
    SCALE = 5
    try:
        after, _ = pickled_function(scaled)
        assert after is not before and _run(after, 2) == 10
        assert pickled_function(scaled)[0] is after
    finally:
        SCALE = 3
    assert _run(pickled_function(scaled)[0], 2) == 6


def test_a_mutable_global_is_pickled_at_every_submit():
    one, _ = pickled_function(uses_a_list)
    NAMES.append("b")
    try:
        two, _ = pickled_function(uses_a_list)
        assert two is not one and _run(one, 0) == 1 and _run(two, 0) == 2
    finally:
        NAMES.pop()


def test_changed_defaults_closure_and_attributes_give_fresh_pickles():
    first, _ = pickled_function(with_default)
    with_default.__defaults__ = (7,)
    try:
        changed, _ = pickled_function(with_default)
        assert changed is not first and _run(changed, 1) == 8
    finally:
        with_default.__defaults__ = (2,)

    def make(k: object) -> types.FunctionType:
        def add(x: int) -> object:
            return x + k  # type: ignore[operator]
        return add  # type: ignore[return-value]

    add = make(1)
    once, _ = pickled_function(add)
    assert pickled_function(add)[0] is once
    add.__closure__[0].cell_contents = 40  # type: ignore[index]
    assert _run(pickled_function(add)[0], 2) == 42
    holder = make([1])  # a closure over a mutable value: never reused
    assert pickled_function(holder)[0] is not pickled_function(holder)[0]

    plain.tag = "x"  # type: ignore[attr-defined]
    try:
        assert pickled_function(plain)[0] is not pickled_function(plain)[0]
    finally:
        del plain.tag  # type: ignore[attr-defined]


def test_a_function_naming_a_module_is_pickled_again_after_an_import(tmp_path, monkeypatch):
    first, _ = pickled_function(uses_sys)
    assert pickled_function(uses_sys)[0] is first
    (tmp_path / "vine_snapshot_probe_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("vine_snapshot_probe_mod")
    try:
        assert pickled_function(uses_sys)[0] is not first
    finally:
        sys.modules.pop("vine_snapshot_probe_mod", None)


def test_callables_that_are_not_plain_functions_are_pickled_each_time():
    class Adder:
        def __call__(self, x: int) -> int:
            return x + EXPECTED

    adder = Adder()
    assert pickled_function(adder)[0] is not pickled_function(adder)[0]
    bound = (1).__add__
    assert _run(pickled_function(bound)[0], 2) == 3


def test_an_unpicklable_function_names_itself():
    lock_holder = [__import__("threading").Lock()]

    def holds_a_lock() -> object:
        return lock_holder

    with pytest.raises(TaskError, match="holds_a_lock"):
        pickled_function(holds_a_lock)


def test_registering_a_module_for_pickling_by_value_gives_a_fresh_pickle(tmp_path, monkeypatch):
    (tmp_path / "vine_by_value_probe.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = __import__("vine_by_value_probe")
    try:
        by_name, _ = pickled_function(probe.triple)
        assert pickled_function(probe.triple)[0] is by_name and b"vine_by_value_probe" in by_name
        cloudpickle.register_pickle_by_value(probe)
        try:
            by_value, _ = pickled_function(probe.triple)
            assert by_value is not by_name and len(by_value) > len(by_name)
        finally:
            cloudpickle.unregister_pickle_by_value(probe)
    finally:
        sys.modules.pop("vine_by_value_probe", None)


DYNAMIC = types.ModuleType("vine_dynamic_probe")  # not importable: cloudpickle writes its namespace
DYNAMIC.LIMIT = 1


def uses_a_dynamic_module(x: int) -> int:
    return x + DYNAMIC.LIMIT


def test_a_module_written_by_value_is_pickled_at_every_submit():
    first, _ = pickled_function(uses_a_dynamic_module)
    DYNAMIC.LIMIT = 5  # the same module object, a changed namespace
    second, _ = pickled_function(uses_a_dynamic_module)
    assert second is not first
    assert _run(second, 1) == 6
    DYNAMIC.LIMIT = 1
