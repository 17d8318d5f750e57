"""core: a Python workflow runtime following TaskVine's API (``import core as vine``)."""

from __future__ import annotations

from . import constants as cvine
from .constants import *  # noqa: F403 - TaskVine exposes its constants at package level
from .constants import get_c_constant
from .errors import VineError
from .files import File
from .manager import Manager
from .resources import Resources
from .task import Task

__all__ = ["Manager", "Task", "File", "Resources", "VineError", "cvine", "get_c_constant", "set_port_range"]


def set_port_range(ports: int | tuple[int, int]) -> None:
    """Set ``TCP_LOW_PORT``/``TCP_HIGH_PORT`` for managers and workers started afterwards."""
    import os

    lo, hi = (ports, ports) if isinstance(ports, int) else ports
    os.environ["TCP_LOW_PORT"], os.environ["TCP_HIGH_PORT"] = str(lo), str(hi)
