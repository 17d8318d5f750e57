"""Parsl's per-call ``parsl_resource_specification`` mapped to task settings.

``cores``, ``memory`` (MB), ``disk`` (MB), ``gpus`` and ``priority`` go to the task's setters,
``running_time_min`` (s) to ``set_time_min`` (a worker must have that much lifetime left),
``category`` to ``set_category``, ``exec_mode`` chooses ``regular`` or ``serverless`` for this call.
Any other key (Parsl's suite sends ``cpus``) is logged once and ignored: Parsl's suite lets only
the HighThroughput, WorkQueue and ThreadPool executors reject resource specifications.

Requests are allocations, not limits: the executor never enables the resource watchdog, so a call
that asks for 1 MB of memory gets at least its proportional share of a worker and is not killed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ParslVineConfigError

NUMERIC_KEYS = ("cores", "memory", "disk", "gpus", "priority", "running_time_min")
KNOWN_KEYS = NUMERIC_KEYS + ("category", "exec_mode")


@dataclass
class TaskSettings:
    """What one app call asks of its task."""

    exec_mode: str
    cores: float | None = None
    memory: float | None = None
    disk: float | None = None
    gpus: float | None = None
    priority: float | None = None
    running_time_min: float | None = None
    category: str | None = None

    def to_wire(self) -> tuple[Any, ...]:
        """The fields in order, as a tuple: what goes to the manager process with each call (a
        dataclass pickles by its class and ``__dict__``, ~9 µs more per call on each side)."""
        return (self.exec_mode, self.cores, self.memory, self.disk, self.gpus, self.priority, self.running_time_min,
                self.category)

    @classmethod
    def from_wire(cls, fields: tuple[Any, ...]) -> TaskSettings:
        """The inverse of :meth:`to_wire`."""
        return cls(*fields)


def settings_from_spec(spec: Any, default_mode: str, warn_unknown: Callable[[str], None]) -> TaskSettings:
    """``TaskSettings`` from a resource specification; a bad value raises with the key's name."""
    settings = TaskSettings(exec_mode=default_mode)
    if not spec:
        return settings
    if not isinstance(spec, dict):
        raise ParslVineConfigError(f"parsl_resource_specification must be a dict, not {type(spec).__name__}")
    for key, value in spec.items():
        if key in NUMERIC_KEYS:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParslVineConfigError(f"parsl_resource_specification[{key!r}] must be a number, not {value!r}")
            setattr(settings, key, value)
        elif key == "category":
            if value is not None:
                settings.category = str(value)
        elif key == "exec_mode":
            if value not in ("regular", "serverless"):
                raise ParslVineConfigError(f"parsl_resource_specification['exec_mode'] must be 'regular' or 'serverless', not {value!r}")
            settings.exec_mode = value
        else:
            warn_unknown(str(key))
    return settings
