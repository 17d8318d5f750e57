"""What a Manager is set up with: its listening socket, TLS context, tune names, mutable settings.

:class:`ManagerSettings` holds the settings a program may change while the manager runs (name,
password, monitoring); the manager and its members (the links to workers) share one instance, so a
change is seen by all of them. ``KNOWN_TUNES`` lists every tune name accepted (REFERENCE §4);
:class:`Stats` is ``m.stats``.
"""

from __future__ import annotations

import math
import socket
import ssl as ssl_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ManagerError, TuneError
from ..state.scheduler import DEFAULT_TUNING
from ..wire.tls import TLSSetupError, self_signed_server_context, server_context


@dataclass(slots=True)
class ManagerSettings:
    """The manager's settings that change while it runs, shared with its members."""

    port: int
    name: str | None = None  # the catalog name (set_name)
    password: bytes | None = None  # workers and status clients must prove they know it (set_password)
    monitoring: dict[str, Any] | None = None  # sent with every task while on (enable_monitoring)


# Tune parameters accepted (REFERENCE §4). Those the scheduler reads live in its tuning table; the
# rest are stored so TaskVine programs run unchanged, and documented as having no effect yet.
KNOWN_TUNES = {
    "attempt-schedule-depth", "category-steady-n-tasks", "disconnect-slow-worker-factor",
    "option-blocklist-slow-workers-timeout", "hungry-minimum", "hungry-minimum-factor", "immediate-recovery",
    "keepalive-interval", "keepalive-timeout", "short-timeout", "long-timeout", "max-retrievals",
    "worker-retrievals", "min-transfer-timeout", "transfer-outlier-factor", "default-transfer-rate",
    "monitor-interval", "prefer-dispatch", "proportional-resources", "proportional-whole-tasks",
    "force-proportional-resources", "force-proportional-whole-tasks", "ramp-down-heuristic",
    "resource-submit-multiplier", "asynchrony-multiplier", "disk-proportion-available-to-task",
    "temp-replica-count", "transfer-temps-recovery", "clean-redundant-replicas", "shift-disk-load",
    "transfer-replica-per-cycle", "transient-error-interval", "wait-for-workers", "max-workers",
    "file-source-max-transfers", "worker-source-max-transfers", "perf-log-interval", "update-interval",
    "resource-management-interval", "max-task-stdout-storage", "max-new-workers", "load-from-shared-filesystem",
    "large-task-check-interval", "enforce-worker-eviction-interval", "watch-library-logfiles",
    "sandbox-grow-factor", "max-library-retries", "task-groups", "max-task-attempts", "handshake-timeout",
    "library-queue-depth", "peer-transfers", "call-pipelining",
}
KNOWN_TUNES |= set(DEFAULT_TUNING)  # every parameter the scheduler reads can be tuned

TUNE_ALIASES = {
    "asynchrony-multiplier": "resource-submit-multiplier",
    "force-proportional-resources": "proportional-resources",
    "force-proportional-whole-tasks": "proportional-whole-tasks",
}


def checked_tune(name: str, value: Any) -> tuple[str, float]:
    """The tuning key ``name`` sets (an alias resolved) and ``value`` as a float, once both are checked.

    An unknown name raises :class:`TuneError`; a value no scheduler can use raises ValueError naming it.
    """
    if name not in KNOWN_TUNES:
        raise TuneError(f"unknown tune parameter {name!r}; see the README's configuration table for the names")
    key = TUNE_ALIASES.get(name, name)
    value = float(value)
    if not math.isfinite(value):  # NaN poisons every comparison made with it, infinity every rounding
        raise ValueError(f"tune {name!r} takes a finite number, not {value}")
    if key == "disk-proportion-available-to-task" and not 0 < value < 1:
        raise ValueError("disk-proportion-available-to-task must be between 0 and 1")
    if key == "category-steady-n-tasks" and not (math.isfinite(value) and value >= 1):
        raise ValueError(f"category-steady-n-tasks must be a number of tasks >= 1, not {value}")
    if key == "update-interval" and not (math.isfinite(value) and value > 0):
        raise ValueError(f"update-interval must be a positive finite number of seconds, not {value}")
    return key, value


def catalog_fields(properties: Mapping[str, str], stats: Mapping[str, float] | None) -> dict[str, Any]:
    """What a catalog entry tells beyond host:port: the properties (``set_property``) and, while the
    manager runs (``stats`` not None), the counts ``vine_status`` shows."""
    fields: dict[str, Any] = dict(properties)
    if stats is not None:
        for k in ("tasks_waiting", "tasks_running", "tasks_done", "workers_connected", "total_cores"):
            fields[k] = stats.get(k, 0)
        fields["workers"] = stats.get("workers_connected", 0)
    return fields


class Stats:
    """Manager counters under TaskVine's performance-log names (missing ones read as 0)."""

    def __init__(self, values: dict[str, float]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):
            raise AttributeError(name)
        v = self._values.get(name, 0)
        return int(v) if isinstance(v, float) and v.is_integer() else v

    def __repr__(self) -> str:
        return f"Stats({self._values})"

    def as_dict(self) -> dict[str, float]:
        return dict(self._values)


def bind_port(port: Any) -> socket.socket:
    """The manager's listening socket: ``port``, the first free one of a ``(low, high)`` range, or any (0)."""
    if isinstance(port, (list, tuple)):
        lo, hi = int(port[0]), int(port[1])
        candidates = list(range(lo, hi + 1))
    else:
        from ..wire.ports import port_candidates

        candidates = port_candidates(int(port))  # port 0: TCP_LOW_PORT..TCP_HIGH_PORT if set (set_port_range)
    last: OSError | None = None
    for p in candidates:
        # proto=IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY)
        # only on sockets that say they are TCP, and accepted sockets inherit this one's proto.
        # With Nagle on, every other small frame to a worker waited ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", p))
            sock.listen(512)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise ManagerError(f"cannot listen on port {port}: {last}; choose another port, or port=0 for any free one")


def tls_context(ssl: Any) -> ssl_module.SSLContext | None:
    """TLS for worker connections: ``(key, cert)`` PEM paths, or True for a self-signed pair made for this run.

    ``None``, False and ``(None, None)`` mean plain TCP (TaskVine programs pass their optional
    ``--ssl_key``/``--ssl_cert`` arguments straight through).
    """
    if not ssl:
        return None
    if ssl is True:
        try:
            # The key lives in the context only: no private key is left behind in /tmp.
            return self_signed_server_context()
        except TLSSetupError as exc:
            raise ManagerError(f"ssl=True: {exc}, or pass ssl=(key_file, cert_file)") from exc
    try:
        key, cert = ssl
    except (TypeError, ValueError):
        raise ValueError("ssl must be True or a (key_file, cert_file) pair") from None
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        raise ValueError(f"ssl=(key_file, cert_file) needs both files or neither; got key={key!r}, cert={cert!r}")
    try:
        return server_context(key, cert)
    except TLSSetupError as exc:
        raise ManagerError(str(exc)) from exc
