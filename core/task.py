"""``core.task``: where TaskVine programs import task classes from (``ndcctools.taskvine.task``).

The classes live in ``core.api``; this module hands them out under TaskVine's module name, each
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .api.task import Task

if TYPE_CHECKING:
    from .api.library import FunctionCall, FunctionCallNoResult, LibraryTask
    from .api.python_task import PythonTask, PythonTaskNoResult

__all__ = ["FunctionCall", "FunctionCallNoResult", "LibraryTask", "PythonTask", "PythonTaskNoResult", "Task"]

_TASK_CLASSES = {
    "PythonTask": "python_task",
    "PythonTaskNoResult": "python_task",
    "FunctionCall": "library",
    "FunctionCallNoResult": "library",
    "LibraryTask": "library",
}


def __getattr__(name: str) -> Any:
    module = _TASK_CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module 'core.task' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".api.{module}", __package__), name)
    globals()[name] = value
    return value
