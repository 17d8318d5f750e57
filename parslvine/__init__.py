"""parslvine: Parsl's ``TaskVineExecutor`` on core's workers.

A Parsl program written for ``parsl.executors.taskvine`` runs after changing its import to::

    from parslvine import TaskVineExecutor, TaskVineManagerConfig, TaskVineFactoryConfig

Names are imported on first use, so a worker that only runs app calls (``parslvine.runner``)
does not load the executor.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TaskVineExecutor": "executor",
    "TaskVineManagerConfig": "configs",
    "TaskVineFactoryConfig": "configs",
    "TaskVineTaskFailure": "errors",
    "TaskVineManagerFailure": "errors",
    "ParslVineError": "errors",
    "ParslVineConfigError": "errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'parslvine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
