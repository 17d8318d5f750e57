"""A forked PythonTask's environment is exactly its task's, though the fork server sends only the
difference to its own environment (core/worker/forkserver.py ``env_difference``)."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import core as vine
from tests.conftest import drain

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# A warm import that changes the fork server's own environment when it is imported: the children
# must not see it (the server goes back to the environment it started with).
LEAKY_MODULE = '''
import os
os.environ["VINE_TEST_LEAKED"] = "from a warm import"
os.environ["VINE_TEST_WORKER_VAR"] = "changed by a warm import"
'''


def environment():
    return dict(os.environ), os.getcwd()


@pytest.mark.timeout(90)
def test_forked_tasks_see_exactly_their_environment(manager, start_worker, tmp_path, monkeypatch):
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "vine_leaky_env_mod.py").write_text(LEAKY_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(pkg) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("VINE_TEST_WORKER_VAR", "the worker's")  # the worker (started after this) has it
    monkeypatch.setenv("VINE_TEST_TO_UNSET", "present")
    start_worker(manager, cores=1)

    own = vine.PythonTask(environment)
    own.set_env_var("VINE_TEST_TASK_VAR", "line one\nline two")
    own.set_env_var("VINE_TEST_TO_UNSET", None)  # removed for this task only
    own.set_env_var("VINE_TEST_WORKER_VAR", "the task's")
    own.set_warm_imports(["vine_leaky_env_mod"])
    plain = vine.PythonTask(environment)
    plain.set_warm_imports(["vine_leaky_env_mod"])
    for t in (own, plain):
        manager.submit(t)
        assert drain(manager, 60) == [t] and t.result == "success", (t.result, t.std_output)

    env, cwd = own.output
    assert env["VINE_TEST_TASK_VAR"] == "line one\nline two"
    assert "VINE_TEST_TO_UNSET" not in env
    assert env["VINE_TEST_WORKER_VAR"] == "the task's"
    assert env["VINE_SANDBOX"] == cwd and env["TMPDIR"] == os.path.join(cwd, ".taskvine.tmp")
    assert "VINE_TEST_LEAKED" not in env  # the warm import ran in the server, before this fork

    env, cwd = plain.output
    assert env["VINE_TEST_TO_UNSET"] == "present"  # the previous task's removal stayed with it
    assert env["VINE_TEST_WORKER_VAR"] == "the worker's"
    assert "VINE_TEST_TASK_VAR" not in env and "VINE_TEST_LEAKED" not in env
    assert env["VINE_SANDBOX"] == cwd
    # The worker's own PYTHONPATH (as an ordinary task sees it), not the one the worker gave its
    # fork server (the project's root prepended).
    shell = vine.Task("printenv PYTHONPATH")
    manager.submit(shell)
    assert drain(manager, 60) == [shell] and shell.result == "success"
    assert env["PYTHONPATH"] == shell.std_output.strip()
