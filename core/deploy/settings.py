"""The factory's settings that may change while it runs (REFERENCE §2.2 config keys), and their checks.

Read from the command line at start and from ``config.json`` (``--config-file``) whenever it changes;
a bad value is a ``ValueError`` naming the key, and the factory keeps its previous settings.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vine_factory")


@dataclass(frozen=True)
class Settings:
    """The factory's changeable settings; ``config.json`` keys are these names with ``-``."""

    min_workers: int = 5
    max_workers: int = 100
    workers_per_cycle: int = 5
    capacity: int = 0
    timeout: float = 300
    cores: float | None = None
    memory: float | None = None
    disk: float | None = None
    gpus: float | None = None
    autosize: bool = False
    factory_timeout: float = 0
    tasks_per_worker: int = 0
    factory_name: str | None = None
    manager_name: str | None = None
    foremen_name: str | None = None
    worker_extra_options: str = ""
    transfer_port: str | None = None
    condor_requirements: tuple[str, ...] = ()
    workers_blocked: tuple[str, ...] = ()
    factory_period: float = 30

    def with_json(self, data: Any) -> Settings:
        """A copy with ``data`` (a parsed config file) applied. Raises ValueError if it is invalid."""
        if not isinstance(data, dict):
            raise ValueError("the configuration must be a JSON object")
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                log.warning("config: ignoring unknown key %r", key)
                continue
            changes[name] = _coerce(name, value)
        new = dataclasses.replace(self, **changes)
        if new.min_workers < 0:
            raise ValueError(f"min-workers must be >= 0, not {new.min_workers}")
        if new.max_workers < 1:
            raise ValueError(f"max-workers must be >= 1, not {new.max_workers}")
        if new.factory_period <= 0:
            raise ValueError(f"factory-period must be > 0, not {new.factory_period}")
        if new.min_workers > new.max_workers:
            new = dataclasses.replace(new, min_workers=new.max_workers)
        return new


_INTS = {"min_workers", "max_workers", "workers_per_cycle", "capacity", "tasks_per_worker"}
_FLOATS = {"timeout", "factory_timeout", "factory_period"}
_RESOURCES = {"cores", "memory", "disk", "gpus"}
_LISTS = {"condor_requirements", "workers_blocked"}


def _coerce(name: str, value: Any) -> Any:
    if isinstance(value, bool) and name != "autosize":
        raise ValueError(f"{name.replace('_', '-')}: expected a number or string, not {value!r}")
    try:
        if name in _INTS:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if name in _FLOATS:
            return float(value)
        if name in _RESOURCES:
            return None if value is None or float(value) < 0 else float(value)
        if name == "autosize":
            return bool(value)
        if name in _LISTS:
            return (str(value),) if isinstance(value, str) else tuple(str(v) for v in value or ())
        return None if value is None else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name.replace('_', '-')}: invalid value {value!r}") from None
