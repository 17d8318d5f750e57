"""What runs on a worker for one dask graph node (imported by the worker, so it imports nothing heavy).

A node travels as ``(node, dependency keys, dependency values)``. Each value is either the value
itself (it was known in the manager) or was a reference to another task's temp output, which the
worker has already loaded in its place (core's ``extract_references``). The node is a dask task
spec (``dask._task_spec.Task``, fused tasks included) and is called with ``{key: value}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Inline:
    """A dependency's value sent inside the arguments (it was in the manager).

    Wrapping keeps core's reference scan from walking into big lists and dicts of user data.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return (Inline, (self.value,))


class WrappedResult:
    """A node's value with the ``info`` the user's ``wrapper`` returned beside it."""

    __slots__ = ("info", "value")

    def __init__(self, info: Any, value: Any) -> None:
        self.info = info
        self.value = value

    def __reduce__(self) -> Any:
        return (WrappedResult, (self.info, self.value))


def daskvine_run_node(node: Any, keys: Sequence[Any], values: Sequence[Any], wrapper: Any = None) -> Any:
    """Compute one graph node from its dependencies' values (DaskVine's library function).

    With ``wrapper``, the node runs as ``info, value = wrapper(key, compute)`` and the result is a
    :class:`WrappedResult`; inputs that are wrapped results are unwrapped first.
    """
    inputs = {}
    for k, v in zip(keys, values):
        if type(v) is Inline:
            v = v.value
        if type(v) is WrappedResult:
            v = v.value
        inputs[k] = v
    if wrapper is None:
        return node(inputs)

    def compute() -> Any:
        return node(inputs)

    info, value = wrapper(getattr(node, "key", None), compute)
    return WrappedResult(info, value)
