"""Errors raised by parslvine; all are :class:`core.errors.VineError`."""

from __future__ import annotations

from core.errors import VineError


class ParslVineError(VineError):
    """Base class of parslvine's own errors."""


class ParslVineConfigError(ParslVineError, ValueError):
    """The executor or one of its configs was given a value it cannot use (the message says which)."""


class TaskVineTaskFailure(ParslVineError):
    """An app call ended without a result: its worker task failed for a reason outside the app.

    ``reason`` is the task's result ("resource exhaustion", "max retries", ...) with details,
    ``status`` its exit code. An exception raised by the app itself is re-raised as it is instead.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        return type(self), (self.reason, self.status)


class TaskVineManagerFailure(ParslVineError):
    """The executor stopped (shut down, or its manager failed) before the app call finished."""
