"""core: a Python workflow runtime following TaskVine's API (``import core as vine``)."""

from __future__ import annotations

from . import constants as cvine
from .constants import *  # noqa: F403 - TaskVine exposes its constants at package level
from .constants import get_c_constant
from .errors import VineError
from .factory import Factory
from .files import File
from .futures import FuturePythonTask, FutureFunctionCall, FuturesExecutor, VineFuture
from .library import FunctionCall, FunctionCallNoResult, LibraryTask, load_variable_from_library
from .manager import Manager
from .python_task import PythonTask, PythonTaskNoResult
from .resources import Resources
from .task import Task

__all__ = ["Manager", "Factory", "Task", "File", "Resources", "VineError", "cvine", "get_c_constant", "set_port_range",
           "PythonTask", "PythonTaskNoResult", "FunctionCall", "FunctionCallNoResult", "LibraryTask", "FuturesExecutor",
           "FuturePythonTask", "FutureFunctionCall", "VineFuture", "load_variable_from_library"]


def set_port_range(ports: int | tuple[int, int]) -> None:
    """Set ``TCP_LOW_PORT``/``TCP_HIGH_PORT`` for managers and workers started afterwards."""
    import os

    lo, hi = (ports, ports) if isinstance(ports, int) else ports
    os.environ["TCP_LOW_PORT"], os.environ["TCP_HIGH_PORT"] = str(lo), str(hi)
