"""PythonTask.set_warm_imports: the worker's fork server imports named modules once, children find them loaded."""

from __future__ import annotations

import pytest

import core as vine
from tests.conftest import run


def _loaded(*names):
    import sys

    return [n in sys.modules for n in names]


def _import(name):
    import importlib

    importlib.import_module(name)
    return name


def test_warm_imports_are_loaded_in_the_fork(manager, start_worker):
    start_worker(manager)
    t = vine.PythonTask(_loaded, "fractions", "wave")
    t.set_warm_imports(["fractions"])
    t = run(manager, t)
    assert t.successful() and t.output == [True, False]  # the named one was imported by the server, the other not
    # A module that cannot be imported does not stop the task: it fails where the task imports it.
    t2 = vine.PythonTask(_import, "no_such_module_for_vine")
    t2.set_warm_imports(["no_such_module_for_vine"])
    t2 = run(manager, t2)
    assert isinstance(t2.output, ModuleNotFoundError)


def test_warm_imports_take_module_names():
    t = vine.PythonTask(_loaded, "x")
    with pytest.raises(TypeError, match="module names"):
        t.set_warm_imports("parsl")
    with pytest.raises(TypeError, match="module names"):
        t.set_warm_imports([None])
