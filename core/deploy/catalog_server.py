"""``vine_catalog_server``: a catalog of managers over HTTP + JSON, for sites without a shared filesystem.

    vine_catalog_server --port 9097            # on a host every node can reach
    export VINE_CATALOG=catalog.example.edu:9097
    python my_workflow.py                      # Manager(name="myproj") advertises itself there
    vine_worker -M myproj                      # finds it there; so do vine_factory and vine_status

Managers ``POST /update`` their entry (JSON) every minute and ``POST /remove`` it at ``close()``;
anyone may ``GET /query.json`` (every live entry, a JSON list; TaskVine's catalog answers the same
path). The server stamps ``lastheardfrom`` with its own clock when an update arrives, so clock skew
between hosts cannot keep a dead entry alive, and forgets an entry not refreshed within its lifetime
(the entry's ``lifetime`` field, at most ``--max-lifetime``). TaskVine's catalog also takes UDP
updates; this one takes HTTP only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .catalog import DEFAULT_LIFETIME

log = logging.getLogger("core.deploy.catalog_server")

DEFAULT_PORT = 9097
MAX_BODY = 64 * 1024
MAX_ENTRIES = 10_000


class CatalogStore:
    """The server's entries, keyed by (project, host, port); pure state plus a lock."""

    def __init__(self, max_lifetime: float = 24 * 3600) -> None:
        self.max_lifetime = max_lifetime
        self._entries: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def update(self, entry: Any, now: float | None = None) -> None:
        key = _key(entry)
        lifetime = entry.get("lifetime", DEFAULT_LIFETIME)
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not math.isfinite(lifetime) or lifetime <= 0:
            raise ValueError(f"lifetime must be a positive finite number of seconds, not {lifetime!r}")
        stored = dict(entry, lifetime=min(float(lifetime), self.max_lifetime),
                      lastheardfrom=time.time() if now is None else now)
        with self._lock:
            self._expire(stored["lastheardfrom"])
            if key not in self._entries and len(self._entries) >= MAX_ENTRIES:
                raise ValueError(f"the catalog is full ({MAX_ENTRIES} entries)")
            self._entries[key] = stored

    def remove(self, entry: Any) -> bool:
        with self._lock:
            return self._entries.pop(_key(entry), None) is not None

    def live(self, now: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            self._expire(time.time() if now is None else now)
            return [dict(e) for e in self._entries.values()]

    def _expire(self, now: float) -> None:
        dead = [k for k, e in self._entries.items() if now - e["lastheardfrom"] > e["lifetime"]]
        for k in dead:
            del self._entries[k]


def _key(entry: Any) -> tuple[str, str, int]:
    if not isinstance(entry, dict):
        raise ValueError("an entry must be a JSON object")
    project, host, port = entry.get("project"), entry.get("host"), entry.get("port")
    if not isinstance(project, str) or not project:
        raise ValueError("an entry needs a non-empty string 'project'")
    if not isinstance(host, str) or not host:
        raise ValueError("an entry needs a non-empty string 'host'")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"an entry needs an integer 'port' in 1..65535, not {port!r}")
    return project, host, port


class _Handler(BaseHTTPRequestHandler):
    server: _CatalogHTTPServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/query.json", "/"):
            self._reply(404, {"error": f"no such path {self.path!r}; try /query.json"})
            return
        self._reply(200, self.server.store.live())

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        if path not in ("/update", "/remove"):
            self._reply(404, {"error": f"no such path {self.path!r}; POST /update or /remove"})
            return
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(400, {"error": f"a body of 0..{MAX_BODY} bytes with Content-Length is required"})
            return
        try:
            entry = json.loads(self.rfile.read(length))
            if path == "/update":
                self.server.store.update(entry)
                self._reply(200, {"ok": True})
            else:
                self._reply(200, {"removed": self.server.store.remove(entry)})
        except ValueError as exc:  # also json.JSONDecodeError and UnicodeDecodeError
            self._reply(400, {"error": str(exc)})

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _CatalogHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: CatalogStore) -> None:
        self.store = store
        super().__init__(address, _Handler)


def serve(host: str = "", port: int = DEFAULT_PORT, max_lifetime: float = 24 * 3600) -> _CatalogHTTPServer:
    """A catalog server bound to ``host:port`` (0 = any free port), not yet serving: call ``serve_forever``."""
    return _CatalogHTTPServer((host, port), CatalogStore(max_lifetime))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vine_catalog_server",
                                description="Keep a catalog of managers (HTTP + JSON) that workers, factories and vine_status read.")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 = any)")
    p.add_argument("--interface", default="", help="address to listen on (default: all)")
    p.add_argument("--max-lifetime", type=float, default=24 * 3600,
                   help="forget an entry not refreshed for this many seconds at most (default 86400)")
    p.add_argument("--port-file", help="write the port actually bound to this file")
    p.add_argument("-d", "--debug", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port < 65536:
        build_parser().error(f"--port {args.port} is out of range")
    if not (math.isfinite(args.max_lifetime) and args.max_lifetime > 0):
        build_parser().error(f"--max-lifetime must be a positive finite number, not {args.max_lifetime}")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="vine_catalog_server: %(message)s")
    httpd = serve(args.interface, args.port, args.max_lifetime)
    port = httpd.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as fh:
            fh.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    log.info("listening on port %d", port)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
