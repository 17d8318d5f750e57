"""``core.utils``: the helpers TaskVine keeps in ``ndcctools.taskvine.utils``.

``from core.utils import load_variable_from_library`` is how a function running in a library reads
what the library's ``library_context_info`` function set up (TaskVine's serverless programs import
it exactly so). ``get_c_constant`` and ``set_port_range`` are also importable from ``core`` itself.
"""

from __future__ import annotations

from typing import Any

from .constants import get_c_constant
from .wire.ports import port_candidates, port_range_from_env, set_port_range

__all__ = ["get_c_constant", "load_variable_from_library", "port_candidates", "port_range_from_env", "set_port_range"]


def load_variable_from_library(name: str) -> Any:
    """Inside a FunctionCall: the variable ``name`` from the dict the library's context function returned.

    Raises NameError (saying where such variables come from) anywhere else, or for a name the
    context did not set.
    """
    from .wire.library_runner import load_variable_from_library as load  # the library-side context lives there

    return load(name)
