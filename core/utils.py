"""``core.utils``: the helpers TaskVine keeps in ``ndcctools.taskvine.utils``.

``from core.utils import load_variable_from_library`` is how a function running in a library reads
what the library's ``library_context_info`` function set up (TaskVine's serverless programs import
it exactly so). ``get_c_constant`` and ``set_port_range`` are also importable from ``core`` itself.
"""

from __future__ import annotations

import os
from typing import Any

from .constants import get_c_constant

__all__ = ["get_c_constant", "load_variable_from_library", "set_port_range"]


def load_variable_from_library(name: str) -> Any:
    """Inside a FunctionCall: the variable ``name`` from the dict the library's context function returned.

    Raises NameError (saying where such variables come from) anywhere else, or for a name the
    context did not set.
    """
    from ._remote import load_variable_from_library as load  # the worker-side context lives there

    return load(name)


def set_port_range(ports: int | tuple[int, int] | list[int]) -> None:
    """Let managers and workers started afterwards listen only on ``ports`` (one port, or ``(low, high)``).

    Sets ``TCP_LOW_PORT``/``TCP_HIGH_PORT`` in this process's environment, which child processes
    inherit.
    """
    if isinstance(ports, bool):
        raise ValueError(f"set_port_range takes a port or a (low, high) pair, got {ports!r}")
    if isinstance(ports, int):
        low, high = ports, ports
    else:
        try:
            low, high = (int(p) for p in ports)
        except (TypeError, ValueError):
            raise ValueError(f"set_port_range takes a port or a (low, high) pair of integers, got {ports!r}") from None
    if not 0 < low <= high <= 65535:
        raise ValueError(f"set_port_range needs 0 < low <= high <= 65535, got low={low}, high={high}")
    os.environ["TCP_LOW_PORT"], os.environ["TCP_HIGH_PORT"] = str(low), str(high)
