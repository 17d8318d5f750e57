"""``core.compat``: TaskVine's ``ndcctools.taskvine.compat`` (``from core.compat import DaskVine``).

TaskVine keeps there a second DaskVine for graphs of old-style tuple tasks (dask before 2024.12).
Ours is one class, :class:`daskvine.DaskVine`, which takes both kinds of graph in both dask
worlds, so this module hands out that class. It is imported on first use: ``import core.compat``
works without dask installed, and ``core.compat.DaskVine`` then raises ImportError naming the extra.

TaskVine's ``DaskVineDag`` (its graph-walking helper) has no counterpart: our DaskVine plans graphs
internally (``daskvine.graph``) and exposes no graph object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daskvine import DaskVine

__all__ = ["DaskVine"]


def __getattr__(name: str) -> Any:
    if name != "DaskVine":
        raise AttributeError(f"module 'core.compat' has no attribute {name!r}")
    try:
        from daskvine import DaskVine
    except ImportError as exc:
        raise ImportError(f"DaskVine needs dask: pip install 'core-vine[dask]' (or '[awkward]'); {exc}") from exc
    globals()["DaskVine"] = DaskVine
    return DaskVine
