"""The lean ``parsl`` of the workers' fork servers (parslvine.lean): small forks, same meaning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import make_executor, start_executor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fresh_python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_lean_package_loads_only_what_a_call_needs_and_the_rest_on_first_use():
    out = _fresh_python("""
        import pickle, sys
        import parslvine.lean as lean
        from parslvine.runner import WARM_IMPORTS, decode_data, decode_reply, run_parsl_call
        for name in WARM_IMPORTS:
            __import__(name)
        assert lean.is_lazy(), "parsl was loaded whole by the warm imports"
        assert "parsl.dataflow.dflow" not in sys.modules and "parsl.executors" not in sys.modules
        from parsl.serialize import serialize
        from parslvine.runner import encode_data
        import operator
        reply = run_parsl_call(serialize(operator.add), encode_data({"args": (2, 3), "kwargs": {}}), {}, [])
        value, placeholders = decode_reply(reply)
        assert decode_data(value) == 5 and placeholders == []
        assert lean.is_lazy(), "running a call loaded all of parsl"
        from parsl import python_app        # a name of the package itself: the real __init__ runs
        import parsl
        from parsl.version import VERSION
        assert not lean.is_lazy() and parsl.__version__ == VERSION and "parsl.dataflow.dflow" in sys.modules
        assert parsl.python_app is python_app and parsl.load.__qualname__ == "DataFlowKernelLoader.load"
        import parsl.app.python             # a module outside the lean set, after the package loaded
        import parsl.app.bash               # and the rest imports as usual
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_heavy_parsl_module_imported_first_loads_the_package_in_parsls_own_order():
    # parsl.app.bash -> parsl.app.app -> the DFK -> ... -> "from parsl import ..." : Parsl's import
    # cycles only resolve when parsl/__init__ runs first, so the lean package runs it first here.
    out = _fresh_python("""
        import parslvine.lean as lean
        import parsl.serialize
        assert lean.is_lazy()
        import parsl.app.bash
        from parsl import bash_app
        assert not lean.is_lazy() and bash_app.__module__ == "parsl.app.app"
        print("ok")
    """)
    assert out.strip() == "ok"


def test_the_lean_set_imports_neither_unittest_mock_nor_asyncio_and_mocks_still_pass_typeguard():
    out = _fresh_python("""
        import sys
        import core.worker.forkserver       # what the fork server process itself imports, then its warm imports
        import parslvine.lean
        from parslvine.runner import WARM_IMPORTS
        for name in WARM_IMPORTS:
            __import__(name)
        loaded = sorted(m for m in ("unittest.mock", "unittest", "asyncio") if m in sys.modules)
        assert not loaded, f"the lean fork server imported {loaded}"
        from typeguard import TypeCheckError, check_type
        check_type(3, int)
        try:
            check_type("3", int)
        except TypeCheckError:
            pass
        else:
            raise AssertionError("typeguard stopped checking types")
        from unittest import mock           # the real module, imported later by a call
        assert type(sys.modules["unittest.mock"]).__name__ == "module" and mock.patch.__module__ == "unittest.mock"
        check_type(mock.Mock(), int)        # typeguard lets a real Mock through, as it always did
        print("ok")
    """)
    assert out.strip() == "ok"


def test_the_lean_set_leaves_out_what_only_forks_pay_for_and_those_modules_still_work_later():
    """importlib.metadata, importlib.abc (with importlib.resources, tempfile, random, shutil) and
    dill stay out of the fork server when no typeguard plugin is installed; imported later by a
    call they are the real modules, and typeguard still checks types (File's constructor too)."""
    out = _fresh_python("""
        import re, sys
        import core.worker.forkserver
        import parslvine.lean
        from parslvine.runner import WARM_IMPORTS
        for name in WARM_IMPORTS:
            __import__(name)
        left_out = ("importlib.metadata", "importlib.abc", "importlib.resources", "tempfile", "random", "shutil",
                    "email", "zipfile", "dill", "parsl.serialize")
        loaded = sorted(m for m in left_out if m in sys.modules)
        assert not loaded, f"the lean fork server imported {loaded}"
        import typeguard._importhook
        assert typeguard._importhook.OPTIMIZATION.startswith("typeguard") and len(typeguard._importhook.OPTIMIZATION) > 9
        from typeguard import TypeCheckError
        from parsl.data_provider.files import File
        try:
            File(123)
        except TypeCheckError:
            pass
        else:
            raise AssertionError("File's constructor is no longer type-checked")
        import importlib.metadata, importlib.abc, random
        assert "stand" not in repr(importlib.metadata) and importlib.metadata.version("typeguard")
        assert importlib.abc.MetaPathFinder.__module__ == "importlib.abc"
        import typeguard
        typeguard.load_plugins()            # asks the real importlib.metadata now
        print("ok")
    """)
    assert out.strip() == "ok"


def test_with_a_typeguard_plugin_installed_typeguard_imports_as_usual(tmp_path):
    """A package declaring a typeguard plugin: the lean import cannot answer for it, so typeguard
    imports the usual way (importlib.metadata and all) and loads the plugin."""
    dist = tmp_path / "vine_tg_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vine-tg-plugin\nVersion: 1.0\n\n")
    (dist / "entry_points.txt").write_text("[typeguard.checker_lookup]\nvine = vine_tg_plugin:lookup\n")
    (tmp_path / "vine_tg_plugin.py").write_text("LOADED = []\ndef lookup(*args):\n    LOADED.append(args)\n    return None\n")
    out = _fresh_python(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import parslvine.lean
        assert "importlib.metadata" in sys.modules, "the stand-in answered although a plugin is installed"
        import typeguard, vine_tg_plugin
        assert vine_tg_plugin.lookup in typeguard.checker_lookup_functions
        print("ok")
    """)
    assert out.strip() == "ok"


def test_the_plugin_scan_answers_only_what_it_can_see():
    out = _fresh_python("""
        import sys
        import parslvine.lean as lean
        assert lean._typeguard_without_plugins()          # this venv: no plugin, typeguard's version
        class Finder:                                     # a finder that may know other distributions
            def find_spec(self, *args):
                return None
            def find_distributions(self, *args, **kwargs):
                return iter(())
        sys.meta_path.append(Finder())
        assert lean._typeguard_without_plugins() is None
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_typeguard_asking_more_than_the_stand_ins_know_imports_the_usual_way():
    out = _fresh_python("""
        import sys, types
        import parslvine.lean as lean
        for name in [m for m in sys.modules if m == "typeguard" or m.startswith("typeguard.")]:
            del sys.modules[name]
        lean._metadata_stand_in = lambda version: types.ModuleType("importlib.metadata")  # knows nothing
        lean.import_typeguard()
        assert "typeguard" in sys.modules and "unittest.mock" not in sys.modules  # imported, still without mock
        import typeguard
        assert typeguard.typechecked and type(sys.modules["importlib.metadata"]) is types.ModuleType
        assert hasattr(sys.modules["importlib.metadata"], "entry_points")  # the real one
        print("ok")
    """)
    assert out.strip() == "ok"


def test_lean_install_leaves_an_imported_parsl_alone():
    out = _fresh_python("""
        import parsl
        import parslvine.lean as lean
        assert lean.install() is False and not lean.is_lazy() and type(sys.modules["parsl"]).__name__ == "module"
        print("ok")
    """.replace("import parsl\n", "import sys, parsl\n", 1))
    assert out.strip() == "ok"


def _dflow_loaded() -> bool:
    import sys

    return "parsl.dataflow.dflow" in sys.modules


def _version_and_dflow() -> tuple[str, bool]:
    import sys

    import parsl

    return parsl.__version__, "parsl.dataflow.dflow" in sys.modules


@pytest.fixture(scope="module")
def regular_dfk(tmp_path_factory) -> Iterator[Any]:
    import parsl
    from parsl.config import Config

    run_dir = tmp_path_factory.mktemp("parsl-lean")
    d = parsl.load(Config(executors=[make_executor("regular")], run_dir=str(run_dir / "runinfo"), initialize_logging=False))
    try:
        yield d
    finally:
        d.cleanup()


@pytest.mark.timeout(120)
def test_regular_calls_fork_from_a_lean_server_and_parsl_names_still_work(regular_dfk, in_tmp):
    from parsl import bash_app, python_app
    from parsl.version import VERSION

    dflow_loaded = python_app(_dflow_loaded)
    version_and_dflow = python_app(_version_and_dflow)
    assert dflow_loaded().result(60) is False  # the fork server (and so its child) never loaded the DFK
    # A call that reads a name of the package gets the real one: its own process loads all of Parsl.
    assert version_and_dflow().result(60) == (VERSION, True)
    assert dflow_loaded().result(60) is False  # ... and only that child did: the server stays lean

    @bash_app
    def echo(stdout: str = "out.txt") -> str:
        return "echo lean-bash"

    echo(stdout=os.path.join(in_tmp, "out.txt")).result(60)  # its function lives in parsl.app.bash: loaded on demand
    with open(os.path.join(in_tmp, "out.txt")) as fh:
        assert fh.read().strip() == "lean-bash"
    assert version_and_dflow().result(60) == (VERSION, True)


def _parsl_in_this_process() -> tuple[bool, str]:
    import sys

    return "parsl.dataflow.dflow" in sys.modules, type(sys.modules["parsl"]).__name__


@pytest.mark.timeout(120)
def test_serverless_library_stays_lean(tmp_path, executors):
    # The library unpickles its function (parslvine.runner) before its own imports: the runner puts
    # the lean package in place first, or that unpickling would load all of Parsl into every library.
    ex = start_executor(tmp_path, make_executor("serverless"))
    executors.append(ex)
    assert ex.submit(_parsl_in_this_process, {}).result(60) == (False, "LazyParslPackage")


def test_a_fresh_runner_starts_lean():
    # ``python -m parslvine.runner`` (init_command tasks) and a library both start with the runner.
    out = _fresh_python("""
        import sys
        import parslvine.runner
        print("parsl.dataflow.dflow" in sys.modules, type(sys.modules["parsl"]).__name__)
    """)
    assert out.split() == ["False", "LazyParslPackage"]
