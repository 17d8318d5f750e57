"""Project-name discovery: a manager with ``name=`` registers host:port; workers look it up.

The default catalog needs no server: a directory on the shared filesystem (``$VINE_CATALOG_DIR``,
else ``~/.vine-catalog``), which is what HPC login and compute nodes already share.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any


def catalog_dir(override: str | None = None) -> str:
    return override or os.environ.get("VINE_CATALOG_DIR") or os.path.join(os.path.expanduser("~"), ".vine-catalog")


def register(name: str, port: int, ssl: bool = False, catalog: str | None = None, **extra: Any) -> str:
    d = catalog_dir(catalog)
    os.makedirs(d, exist_ok=True)
    host = socket.gethostname()
    entry = {"project": name, "host": host, "address": _address(host), "port": port, "ssl": ssl, "pid": os.getpid(), "lastheardfrom": time.time(), **extra}
    path = os.path.join(d, f"{name}.{host}.{port}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(entry, fh)
    os.replace(tmp, path)
    return path


def unregister(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def entries(catalog: str | None = None, max_age: float = 24 * 3600) -> list[dict[str, Any]]:
    d = catalog_dir(catalog)
    out = []
    try:
        names = os.listdir(d)
    except OSError:
        return []
    for fn in sorted(names):
        if not fn.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, fn)) as fh:
                e = json.load(fh)
        except (OSError, ValueError):
            continue
        if time.time() - float(e.get("lastheardfrom", 0)) <= max_age:
            out.append(e)
    return out


def lookup(pattern: str, catalog: str | None = None) -> list[tuple[str, int]]:
    """host, port of every live manager whose project name fully matches ``pattern`` (a regex)."""
    rx = re.compile(pattern)
    return [(e["address"], int(e["port"])) for e in entries(catalog) if rx.fullmatch(str(e.get("project", "")))]


def _address(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"
