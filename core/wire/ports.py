"""The ports a listener may use: ``TCP_LOW_PORT``/``TCP_HIGH_PORT``, as TaskVine reads them.

Both the manager's port and a worker's transfer server ask :func:`port_candidates` which ports to
try when told ``port=0``.
"""

from __future__ import annotations

import os


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
