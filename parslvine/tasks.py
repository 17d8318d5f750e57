"""The core tasks an app call becomes, and the serverless library they may run in.

- **regular**: a ``PythonTask`` running :func:`parslvine.runner.run_parsl_call`. The worker forks
  it from its fork server, which imports once (``set_warm_imports``) only the parts of Parsl a call
  needs (:mod:`parslvine.lean`): no interpreter start, no Parsl import per call, and a small
  process to fork. With ``init_command`` the call must run behind a shell command, so
  it becomes a plain ``Task``: ``INIT python -m parslvine.runner ...`` (a fresh interpreter).
- **serverless**: a ``FunctionCall`` into the library :data:`LIBRARY_NAME`, which holds
  ``run_parsl_call`` with Parsl already imported. Direct mode (the call runs inside the library
  process) with one instance per worker core by default; ``library_config={"num_slots": n}`` with
  n > 1 runs n calls at once per instance, each in a fork of it.
"""

from __future__ import annotations

import logging
import os
import pickle
import shlex
import sys
from collections.abc import Callable
from typing import Any

import core as vine

from .configs import TaskVineManagerConfig
from .resources import TaskSettings
from .runner import PARSL_SERIALIZE, BoundParslCall, decode_reply, needs_parsl_serialize
from .staging import StagingPlan

logger = logging.getLogger(__name__)

LIBRARY_NAME = "parslvine-library"
FUNCTION_NAME = ".parsl_function"
ARGS_NAME = ".parsl_args"
MAP_NAME = ".parsl_map"
RESULT_NAME = ".parsl_result"
DEFAULT_CORES = 1
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_serverless_resources_noted = False


def environment_file(m: Any, env_pack: str) -> Any:
    """A File for ``env_pack``: a directory with ``bin/run_in_env``, or a poncho tarball unpacked on the worker."""
    path = os.path.abspath(env_pack)
    if os.path.isdir(path):
        return m.declare_file(path, cache=True)
    return m.declare_poncho(m.declare_file(path, cache=True), cache=True)


def build_library(m: Any, config: TaskVineManagerConfig, runner: Callable[..., Any], warm_imports: list[str]) -> Any:
    """The serverless library: ``runner`` with Parsl imported once per instance."""
    lc = dict(config.library_config or {})
    slots = int(lc.get("num_slots") or 1)
    library = m.create_library_from_functions(
        LIBRARY_NAME, runner, import_modules=[*warm_imports, PARSL_SERIALIZE], exec_mode="fork" if slots > 1 else "direct",
        add_env=False, init_command=config.init_command or None,
        poncho_env=os.path.abspath(config.env_pack) if config.env_pack else None,
    )
    if config.library_config is None:
        lc["cores"] = 1  # one instance per worker core: a direct instance runs one call at a time
    for key in ("cores", "memory", "disk"):
        if lc.get(key):
            getattr(library, f"set_{key}")(lc[key])
    if slots > 1:
        library.set_function_slots(slots)
    for name, value in (config.env_vars or {}).items():
        library.set_env_var(str(name), str(value))
    return library


def make_task(m: Any, config: TaskVineManagerConfig, settings: TaskSettings, runner: Callable[..., Any], function: bytes,
              arguments: bytes, plan: StagingPlan, warm_imports: list[str]) -> Any:
    """The task for one app call (see the module docstring), with its resources, files and retries."""
    outputs = [remote for _local, remote in plan.outputs]
    if settings.exec_mode == "serverless":
        task = vine.FunctionCall(LIBRARY_NAME, runner.__name__, function, arguments, plan.names, outputs)
        _note_serverless_resources(settings)
    elif config.init_command:
        python = "python3" if config.env_pack else shlex.quote(sys.executable)
        task = vine.Task(f"{config.init_command} {python} -m parslvine.runner {FUNCTION_NAME} {ARGS_NAME} {MAP_NAME} {RESULT_NAME}")
        own = [m.declare_buffer(function), m.declare_buffer(arguments), m.declare_buffer(pickle.dumps((plan.names, outputs)))]
        for f, name in zip(own, (FUNCTION_NAME, ARGS_NAME, MAP_NAME)):
            task.add_input(f, name)
        result = m.declare_buffer(None)
        task.add_output(result, RESULT_NAME)
        task._parslvine_result = result
        task._parslvine_buffers = [*own, result]  # this call's alone: forgotten once it is done
        task.set_env_var("PYTHONPATH", PACKAGE_ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    else:
        # The app's function is bound into the task's function, so the worker deserializes it once.
        task = vine.PythonTask(bound_call(function), arguments, plan.names, outputs)
        task.disable_output_serialization()  # the runner returns bytes already Parsl-serialized
        # Parsl's serialization (dill) warm in the fork server only once a call's bytes need it.
        task.set_warm_imports(warm_imports + [PARSL_SERIALIZE] if needs_parsl_serialize(function, arguments) else warm_imports)
    if settings.exec_mode == "regular":
        _regular_settings(m, task, config, settings)
    if settings.priority is not None:
        task.set_priority(settings.priority)
    if settings.running_time_min is not None:
        task.set_time_min(settings.running_time_min)
    task.set_category(settings.category or "parsl-default")
    if config.max_retries is not None:
        task.set_retries(int(config.max_retries))
    for local, remote in plan.inputs:
        if not os.path.lexists(local):
            # Not staged: the app finds it missing and raises its own error (FileNotFoundError),
            # as it would on a shared filesystem, rather than the task ending with 'input missing'.
            logger.warning("input file %r does not exist; the app will not find it", local)
            continue
        task.add_input(m.declare_file(local, cache="workflow"), remote)
    for local, remote in plan.outputs:
        parent = os.path.dirname(local)
        if parent:
            os.makedirs(parent, exist_ok=True)
        task.add_output(m.declare_file(local, cache=False), remote)
    task._parslvine_outputs = {remote: local for local, remote in plan.outputs}
    return task


def bound_call(function: bytes) -> BoundParslCall:
    """The one :class:`BoundParslCall` of an app's serialized function, shared by all its calls, so the
    PythonTasks pickle and content-hash it once per app instead of once per call."""
    bound = _bound_calls.get(function)
    if bound is None:
        if len(_bound_calls) >= MAX_BOUND_CALLS:
            _bound_calls.clear()  # many distinct apps (or closures): start over rather than grow without end
        bound = _bound_calls[function] = BoundParslCall(function)
    return bound


MAX_BOUND_CALLS = 512
_bound_calls: dict[bytes, BoundParslCall] = {}


def _regular_settings(m: Any, task: Any, config: TaskVineManagerConfig, settings: TaskSettings) -> None:
    """A regular-mode task's resources, environment and environment variables."""
    requested = {key: getattr(settings, key) for key in ("cores", "memory", "disk", "gpus") if getattr(settings, key) is not None}
    # A call that asks for nothing takes one core (as HTEX runs one app per core), not the
    # whole worker (TaskVine's rule for tasks without resources), so calls run side by side;
    # under autolabel its category sizes it instead.
    if not requested and not config.autolabel:
        requested = {"cores": DEFAULT_CORES}
    for key, value in requested.items():
        getattr(task, f"set_{key}")(value)
    if config.env_pack:
        task.add_environment(environment_file(m, config.env_pack))
    for name, value in (config.env_vars or {}).items():
        task.set_env_var(str(name), str(value))


def unpack_result(task: Any, data: bytes) -> bytes:
    """The Parsl-serialized result from the runner's reply; removes the placeholder outputs it made."""
    result, placeholders = decode_reply(data)
    outputs = getattr(task, "_parslvine_outputs", {})
    for remote in placeholders:
        local = outputs.get(remote)
        if local is not None:
            try:
                os.unlink(local)
            except FileNotFoundError:
                pass
    return bytes(result)


def task_output(task: Any) -> Any:
    """The Parsl-serialized result bytes of a finished task, or what says why there are none."""
    result_file = getattr(task, "_parslvine_result", None)
    if result_file is None:
        return task.output  # PythonTask (raw bytes) or FunctionCall (the runner's bytes), or a NoResult
    if not task.successful():
        tail = task.std_output[-2000:]
        return f"the runner did not finish{'; its output ends with: ' + tail if tail else ''}"
    try:
        return result_file.contents()
    except (OSError, ValueError, vine.VineError) as exc:
        return f"its result file could not be read: {exc}"


def forget_buffers(m: Any, task: Any) -> None:
    """Let the manager drop the buffers only this (finished) call used."""
    for f in getattr(task, "_parslvine_buffers", ()):
        m.undeclare_file(f)


def _note_serverless_resources(settings: TaskSettings) -> None:
    global _serverless_resources_noted
    if _serverless_resources_noted:
        return
    if any(getattr(settings, key) is not None for key in ("cores", "memory", "disk", "gpus")):
        _serverless_resources_noted = True
        logger.warning("serverless calls run in library slots and take no cores/memory/disk/gpus of their own; "
                       "size the library instances with manager_config.library_config instead")
