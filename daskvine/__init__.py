"""daskvine: the runtime as a dask scheduler (``coll.compute(scheduler=m.get)``).

``DaskVine`` is a :class:`core.Manager` whose ``get(dsk, keys, **kwargs)`` computes any dask graph
(expressions, HighLevelGraphs, dicts; both dask worlds) on the manager's workers, keeping
intermediate results on the workers. See the README's "Dask" section for every keyword.
"""

from __future__ import annotations

from .callbacks import ON_WORKER
from .errors import DaskVineError, GraphTaskFailed, UnpicklableResult
from .manager import DaskVine

__all__ = ["ON_WORKER", "DaskVine", "DaskVineError", "GraphTaskFailed", "UnpicklableResult"]
