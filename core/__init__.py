"""core: a Python workflow runtime following TaskVine's API (``import core as vine``).

Names are imported on first use, so a worker process (``python -m core.worker``) does not pay for
loading the manager, the factory and the futures machinery it never uses.

TaskVine's submodules exist under the same names, so rewriting ``ndcctools.taskvine`` to ``core``
is all an import needs: ``core.manager`` (Manager, Factory), ``core.task`` (Task, PythonTask,
FunctionCall, LibraryTask, ...), ``core.file`` (File), ``core.futures``, ``core.utils``
(``load_variable_from_library``), ``core.compat`` (DaskVine) and ``core.cvine`` (the constants;
TaskVine's C-binding functions have no counterpart).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from . import constants as cvine
from .constants import *  # noqa: F403 - TaskVine exposes its constants at package level
from .constants import get_c_constant
from .errors import VineError

# ``import core.cvine`` / ``from core.cvine import VINE_TEMP``: TaskVine's C-binding module; here the
# module of constants is all it holds.
sys.modules.setdefault(f"{__name__}.cvine", cvine)

_LAZY = {
    "Manager": "manager.facade",
    "Factory": "deploy.factory",
    "Task": "api.task",
    "File": "api.files",
    "Resources": "state.resources",
    "PythonTask": "api.python_task",
    "PythonTaskNoResult": "api.python_task",
    "FunctionCall": "api.library",
    "FunctionCallNoResult": "api.library",
    "LibraryTask": "api.library",
    "load_variable_from_library": "utils",
    "set_port_range": "utils",
    "FuturesExecutor": "futures",
    "FuturePythonTask": "futures",
    "FutureFunctionCall": "futures",
    "VineFuture": "futures",
    "DaskVine": "..daskvine",  # the dask adapter lives in its own package
}

# TaskVine's submodule names, reachable as attributes (``vine.futures.wait``) before anything imported them.
_SUBMODULES = ("compat", "file", "futures", "manager", "task", "utils")

# DaskVine stays out of ``import *``: it needs dask, which a core-only install lacks.
__all__ = ["VineError", "cvine", "get_c_constant", *(n for n in _LAZY if n != "DaskVine")]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import sets the attribute too
    if name == "__version__":
        from importlib.metadata import version

        value: Any = version("core-vine")
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    target = module[2:] if module.startswith("..") else f".{module}"
    value = getattr(importlib.import_module(target, None if module.startswith("..") else __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
