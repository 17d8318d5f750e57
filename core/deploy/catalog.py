"""Project-name discovery: a manager with ``name=`` advertises host:port; workers look it up.

Two kinds of catalog, chosen by one address (the ``catalog`` argument, else ``$VINE_CATALOG``, else
``$VINE_CATALOG_DIR``, else ``~/.vine-catalog``):

- a **directory** on the shared filesystem (the default): one JSON file per manager. HPC login and
  compute nodes already share one, so no server is needed;
- a **catalog server**, ``HOST:PORT`` (``vine_catalog_server``, HTTP + JSON), for sites without a
  shared filesystem.

An entry tells the truth only while its manager refreshes it. A :class:`Registration` rewrites the
entry every ``interval`` seconds (60 by default) with the manager's current counts; readers drop an
entry not refreshed for ``lifetime`` seconds (180 by default), and one whose manager process is gone
when that process was on this host. So a manager killed without ``close()`` disappears from
``vine_worker -M``, ``vine_factory --manager-name`` and ``vine_status`` at once on its own host and
within ``lifetime`` everywhere else. (TaskVine's catalog keeps a silent manager for its whole entry
lifetime; a directory catalog here used to keep one for 24 hours.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger("core.deploy.catalog")

DEFAULT_INTERVAL = 60.0
DEFAULT_LIFETIME = 180.0
ENTRY_TYPE = "vine_manager"
_SERVER_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:-]+?\]?:(\d{1,5})$")


def catalog_address(override: str | None = None) -> str:
    """The catalog in use: ``override``, ``$VINE_CATALOG``, ``$VINE_CATALOG_DIR`` or ``~/.vine-catalog``."""
    return (override or os.environ.get("VINE_CATALOG") or os.environ.get("VINE_CATALOG_DIR")
            or os.path.join(os.path.expanduser("~"), ".vine-catalog"))


def server_address(catalog: str | None = None) -> tuple[str, int] | None:
    """``(host, port)`` when the catalog is a server (``HOST:PORT`` that is not a directory), else None."""
    addr = catalog_address(catalog)
    if os.sep in addr or os.path.isdir(addr):
        return None
    m = _SERVER_ADDRESS.match(addr)
    if not m:
        return None
    host = addr[: addr.rfind(":")].strip("[]")
    port = int(m.group(1))
    if not 0 < port < 65536:
        raise ValueError(f"catalog {addr!r}: port {port} is out of range")
    return host, port


def catalog_dir(override: str | None = None) -> str:
    """The directory of a directory catalog (raises if the catalog in use is a server)."""
    addr = catalog_address(override)
    if server_address(addr) is not None:
        raise ValueError(f"catalog {addr!r} is a catalog server, not a directory")
    return addr


def make_entry(name: str, port: int, ssl: bool = False, lifetime: float = DEFAULT_LIFETIME, **extra: Any) -> dict[str, Any]:
    host = socket.gethostname()
    entry = {"type": ENTRY_TYPE, "project": name, "name": host, "host": host, "address": _address(host), "port": int(port),
             "ssl": bool(ssl), "pid": os.getpid(), "starttime": _start_time(os.getpid()), "lifetime": float(lifetime),
             "lastheardfrom": time.time()}
    entry.update(extra)
    return entry


def register(name: str, port: int, ssl: bool = False, catalog: str | None = None, lifetime: float = DEFAULT_LIFETIME,
             **extra: Any) -> str:
    """Write (or rewrite) this manager's entry; returns a key that :func:`unregister` takes."""
    entry = make_entry(name, port, ssl=ssl, lifetime=lifetime, **extra)
    server = server_address(catalog)
    if server is not None:
        _post(server, "/update", entry)
        return f"{catalog_address(catalog)}|{name}|{entry['host']}|{entry['port']}"
    d = catalog_dir(catalog)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{_safe(name)}.{entry['host']}.{entry['port']}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(entry, fh)
    os.replace(tmp, path)
    return path


def unregister(key: str) -> None:
    """Remove an entry written by :func:`register` (a no-op if it is already gone)."""
    if "|" in key:
        catalog, project, host, port = key.split("|")
        server = server_address(catalog)
        if server is not None:
            try:
                _post(server, "/remove", {"project": project, "host": host, "port": int(port)})
            except OSError as exc:
                log.warning("catalog server %s: could not remove %s: %s", catalog, project, exc)
        return
    try:
        os.unlink(key)
    except OSError:
        pass


def is_live(entry: dict[str, Any], now: float | None = None) -> bool:
    """False for an entry not refreshed within its lifetime, or whose manager on this host is gone."""
    now = time.time() if now is None else now
    try:
        age = now - float(entry.get("lastheardfrom", 0))
        lifetime = float(entry.get("lifetime", DEFAULT_LIFETIME))
    except (TypeError, ValueError):
        return False
    if not age <= lifetime:  # also false for NaN
        return False
    if entry.get("host") == socket.gethostname() and entry.get("pid"):
        try:
            pid = int(entry["pid"])
        except (TypeError, ValueError):
            return False
        started = _start_time(pid)
        if started is None:
            return False
        if started >= 0 and entry.get("starttime") is not None and abs(float(entry["starttime"]) - started) > 1.0:
            return False  # the pid was reused by another process
    return True


def entries(catalog: str | None = None) -> list[dict[str, Any]]:
    """Every live manager entry. A directory catalog drops the files of dead entries as it reads."""
    server = server_address(catalog)
    if server is not None:
        try:
            raw = _get(server, "/query.json")
        except (OSError, ValueError) as exc:
            log.warning("catalog server %s:%d cannot be read: %s", server[0], server[1], exc)
            return []
        return [e for e in raw if isinstance(e, dict) and e.get("type", ENTRY_TYPE) == ENTRY_TYPE and is_live(e)]
    d = catalog_dir(catalog)
    out = []
    try:
        names = os.listdir(d)
    except OSError:
        return []
    now = time.time()
    for fn in sorted(names):
        if not fn.endswith(".json"):
            continue
        path = os.path.join(d, fn)
        try:
            with open(path) as fh:
                e = json.load(fh)
        except (OSError, ValueError):
            continue
        if not isinstance(e, dict):
            continue
        if is_live(e, now):
            out.append(e)
        else:
            unregister(path)
    return out


def lookup(pattern: str, catalog: str | None = None) -> list[tuple[str, int]]:
    """host, port of every live manager whose project name fully matches ``pattern`` (a regex)."""
    rx = re.compile(pattern)
    return [(str(e["address"]), int(e["port"])) for e in entries(catalog) if rx.fullmatch(str(e.get("project", "")))]


def find(pattern: str, catalog: str | None = None) -> list[dict[str, Any]]:
    """The live entries whose project fully matches ``pattern`` (with ``ssl`` and the counts)."""
    rx = re.compile(pattern)
    return [e for e in entries(catalog) if rx.fullmatch(str(e.get("project", "")))]


class Registration:
    """Keeps one manager's entry fresh: rewrites it every ``interval`` s until :meth:`stop`.

    ``fields`` is called at each refresh for the entry's current extra fields (counts, properties);
    an error there or in the catalog is logged and retried at the next refresh, never raised into
    the manager.
    """

    def __init__(self, name: str, port: int, ssl: bool = False, catalog: str | None = None,
                 fields: Callable[[], dict[str, Any]] | None = None, interval: float = DEFAULT_INTERVAL,
                 lifetime: float | None = None) -> None:
        if not interval > 0 or interval == float("inf"):
            raise ValueError(f"catalog update interval must be a positive number of seconds, not {interval!r}")
        self.name, self.port, self.ssl, self.catalog = name, port, ssl, catalog
        self.interval = float(interval)
        self.lifetime = float(lifetime) if lifetime is not None else max(DEFAULT_LIFETIME, 3 * self.interval)
        self._fields = fields
        self._key: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name=f"vine-catalog-{port}", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Write the entry now (also called by ``Manager.update_catalog``)."""
        if self._stop.is_set():
            return
        extra: dict[str, Any] = {}
        if self._fields is not None:
            try:
                extra = dict(self._fields())
            except Exception as exc:  # noqa: BLE001 - a refresh must never take the manager down
                log.debug("catalog refresh: no counts this time: %s", exc)
        # The lock orders writes against stop(): once stopped, no refresh can bring the entry back.
        with self._lock:
            if self._stop.is_set():
                return
            try:
                self._key = register(self.name, self.port, ssl=self.ssl, catalog=self.catalog, lifetime=self.lifetime, **extra)
            except (OSError, ValueError) as exc:
                log.warning("catalog %s: cannot advertise %s: %s", catalog_address(self.catalog), self.name, exc)

    def set_interval(self, interval: float) -> None:
        """Refresh every ``interval`` s from now on (the entry's lifetime follows: 3 intervals, at least 180 s)."""
        if not interval > 0 or interval == float("inf"):
            raise ValueError(f"catalog update interval must be a positive number of seconds, not {interval!r}")
        self.interval = float(interval)
        self.lifetime = max(DEFAULT_LIFETIME, 3 * self.interval)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.refresh()

    def stop(self) -> None:
        """Stop refreshing and remove the entry (does not wait for a refresh under way)."""
        with self._lock:
            self._stop.set()
            key, self._key = self._key, None
        self._wake.set()
        if key:
            unregister(key)


def _post(server: tuple[str, int], path: str, body: dict[str, Any], timeout: float = 5.0) -> None:
    req = urllib.request.Request(f"http://{_host(server[0])}:{server[1]}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


def _get(server: tuple[str, int], path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(f"http://{_host(server[0])}:{server[1]}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _safe(name: str) -> str:
    """A project name as a file-name part: no separators, no leading dot."""
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return s or "_"


def _start_time(pid: int) -> float | None:
    """The start time of process ``pid``; None if there is no such process, -1 if it cannot be read."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None  # exited, not yet reaped by its parent
        return float(proc.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return -1.0


def _address(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"
