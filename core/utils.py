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
    from .wire.remote import load_variable_from_library as load  # the worker-side context lives there

    return load(name)


def set_port_range(ports: int | tuple[int, int] | list[int]) -> None:
    """Let managers and workers started afterwards listen only on ``ports`` (one port, or ``(low, high)``).

    Sets ``TCP_LOW_PORT``/``TCP_HIGH_PORT`` in this process's environment, which child processes
    inherit: a ``Manager(port=0)`` then listens on the first free port of the range, and so does a
    worker's transfer server when no ``--transfer-port`` is given (TaskVine reads the same variables).
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


def port_range_from_env() -> tuple[int, int] | None:
    """``(low, high)`` from ``TCP_LOW_PORT``/``TCP_HIGH_PORT`` (either may be missing), or None if neither is set."""
    low_s, high_s = os.environ.get("TCP_LOW_PORT", "").strip(), os.environ.get("TCP_HIGH_PORT", "").strip()
    if not low_s and not high_s:
        return None
    try:
        low, high = int(low_s or 1024), int(high_s or 65535)
    except ValueError:
        raise ValueError(f"TCP_LOW_PORT={low_s!r} / TCP_HIGH_PORT={high_s!r} must be port numbers") from None
    if not 0 < low <= high <= 65535:
        raise ValueError(f"TCP_LOW_PORT/TCP_HIGH_PORT need 0 < low <= high <= 65535, got low={low}, high={high}")
    return low, high


def port_candidates(port: int) -> list[int]:
    """The ports to try for ``port``: itself, or for 0 the range the environment sets (0 = any if none)."""
    if port == 0:
        rng = port_range_from_env()
        if rng is not None:
            return list(range(rng[0], rng[1] + 1))
    return [port]
