"""Errors DaskVine raises on its own account (a task's own exception is re-raised as it is)."""

from __future__ import annotations

from core.errors import VineError


class DaskVineError(VineError):
    """A dask graph could not be computed for a reason of DaskVine's or the cluster's."""


class GraphTaskFailed(DaskVineError):
    """A key's task kept failing on the workers (lost results, crashes, missing inputs) after ``retries`` attempts."""


class UnpicklableResult(DaskVineError, TypeError):
    """A graph node returned a value that cannot be pickled, so it cannot leave the worker; names the key."""
