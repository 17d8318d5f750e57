"""The manager as the user-facing objects see it: the few calls a task or file makes back to it.

``core/api/`` sits below ``core/manager/`` (README, "Code map"), so tasks and files name the manager
through this protocol instead of importing it; ``core.manager.Manager`` is the one implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .files import File


class TaskHost(Protocol):
    """What ``Task``, ``PythonTask``, ``FunctionCall`` and ``File`` call on the manager they belong to."""

    def declare_file(self, path: str, cache: Any = ..., peer_transfer: bool = ..., unlink_when_done: bool = ...) -> File: ...

    def declare_buffer(self, buffer: bytes | str | None = ..., cache: Any = ..., peer_transfer: bool = ...) -> File: ...

    def declare_temp(self) -> File: ...

    def undeclare_file(self, f: File) -> None: ...

    def _remember(self, f: File) -> File:
        """Keep ``f`` declared (content-addressed buffers are shared between tasks)."""
        ...

    def _fetch_bytes(self, f: File) -> bytes:
        """The contents of ``f``, from the manager's copy or fetched from a worker."""
        ...

    def _library_known(self, name: str) -> bool: ...

    def _library_failure_reason(self, name: str) -> str | None: ...
