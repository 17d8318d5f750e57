"""Fixtures for the integration suite: a local HTTP server, and small readers of the manager's logs.

The manager and worker fixtures live in ``tests/conftest.py``; these only add what several
integration modules need.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import WorkerProcess, fail_if_tasks_left


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[str, str]]:
    """A ThreadingHTTPServer on 127.0.0.1 (any free port) serving a fresh directory.

    Yields ``(directory, base_url)``; files written into the directory are served at
    ``base_url + "/" + name``.
    """
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http", daemon=True)
    thread.start()
    try:
        yield str(root), f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def shared_manager(tmp_path_factory) -> Iterator[object]:
    """One manager and one small worker (1 core, 1000 MB, 2000 MB disk) for a whole module.

    Starting a worker costs a few tenths of a second; tests that only need *a* worker share this
    one through the ``m`` fixture, which checks that each test leaves the manager empty.
    """
    import core

    base = tmp_path_factory.mktemp("shared")
    m = core.Manager(port=0, run_info_path=str(base / "vine-run-info"))
    worker = WorkerProcess(m.port, str(base / "worker"), cores=1, memory=1000, disk=2000)
    try:
        yield m
    finally:
        m.close()
        worker.reap()


@pytest.fixture
def m(shared_manager) -> Iterator[object]:
    """The module's shared manager and worker; fails the test that leaves tasks behind."""
    yield shared_manager
    fail_if_tasks_left(shared_manager, "the shared manager")


def log_path(m: object, name: str) -> str:
    """Path of one of the manager's logs: debug, transactions, performance or taskgraph."""
    return os.path.join(m.logging_directory, name)  # type: ignore[attr-defined]


def flush_logs(m: object) -> None:
    """Push the manager's buffered log lines to disk (done in its I/O thread, which owns the files)."""
    logs = getattr(m, "_logs", None)
    if logs is not None and hasattr(logs, "flush") and not getattr(m, "_closed", True):
        m._call(logs.flush)  # type: ignore[attr-defined]


def transactions(m: object) -> list[str]:
    """The transactions log's records (header lines dropped), read while the manager runs."""
    flush_logs(m)
    with open(log_path(m, "transactions")) as fh:
        return [line.rstrip("\n") for line in fh if line.strip() and not line.startswith("#")]


def records(m: object, *words: str) -> list[list[str]]:
    """Transactions records (split on spaces, time and pid removed) whose fields start with ``words``."""
    out = []
    for line in transactions(m):
        fields = line.split(" ")[2:]
        if fields[: len(words)] == list(words):
            out.append(fields)
    return out

