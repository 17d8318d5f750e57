"""core: a Python workflow runtime following TaskVine's API (``import core as vine``).

Names are imported on first use, so a worker process (``python -m core.worker``) does not pay for
loading the manager, the factory and the futures machinery it never uses.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import constants as cvine
from .constants import *  # noqa: F403 - TaskVine exposes its constants at package level
from .constants import get_c_constant
from .errors import VineError

_LAZY = {
    "Manager": "manager",
    "Factory": "factory",
    "Task": "task",
    "File": "files",
    "Resources": "resources",
    "PythonTask": "python_task",
    "PythonTaskNoResult": "python_task",
    "FunctionCall": "library",
    "FunctionCallNoResult": "library",
    "LibraryTask": "library",
    "load_variable_from_library": "library",
    "FuturesExecutor": "futures",
    "FuturePythonTask": "futures",
    "FutureFunctionCall": "futures",
    "VineFuture": "futures",
    "DaskVine": "..daskvine",  # the dask adapter lives in its own package
}

# DaskVine stays out of ``import *``: it needs dask, which a core-only install lacks.
__all__ = ["VineError", "cvine", "get_c_constant", "set_port_range", *(n for n in _LAZY if n != "DaskVine")]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    target = module[2:] if module.startswith("..") else f".{module}"
    value = getattr(importlib.import_module(target, None if module.startswith("..") else __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def set_port_range(ports: int | tuple[int, int]) -> None:
    """Set ``TCP_LOW_PORT``/``TCP_HIGH_PORT`` for managers and workers started afterwards."""
    import os

    lo, hi = (ports, ports) if isinstance(ports, int) else ports
    os.environ["TCP_LOW_PORT"], os.environ["TCP_HIGH_PORT"] = str(lo), str(hi)
