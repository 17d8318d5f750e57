"""The catalog tells the truth: named managers found through a directory and through vine_catalog_server,
refreshed while they live, and gone (never offered to workers) once their process is."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import core as vine
from core.deploy import catalog
from core.deploy.catalog_server import CatalogStore
from core.tools import status
from tests.conftest import ROOT, run, wait_until

pytestmark = pytest.mark.timeout(90)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.fixture
def catalog_server(tmp_path):
    """A real vine_catalog_server process on a free port; yields its HOST:PORT."""
    port_file = tmp_path / "catalog.port"
    proc = subprocess.Popen([sys.executable, "-m", "core.deploy.catalog_server", "--port", "0", "--port-file", str(port_file)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, 30, "the catalog server to start")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield f"127.0.0.1:{int(port_file.read_text())}"
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def _named_worker(tmp_path, name: str, catalog_addr: str, n: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.worker", "-M", name, "--catalog", catalog_addr, "--cores", "1",
                             "--memory", "500", "--disk", "500", "--workdir", str(tmp_path / f"w{n}"), "--timeout", "30"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _manager_in_a_process(tmp_path, name: str, catalog_addr: str) -> subprocess.Popen:
    """A named manager in its own process, which prints its port once registered and then waits."""
    code = ("import sys, core\n"
            f"m = core.Manager(port=0, name={name!r}, run_info_path={str(tmp_path / 'child-run-info')!r})\n"
            "print(m.port, flush=True)\nsys.stdin.read()\n")
    return subprocess.Popen([sys.executable, "-c", code], env=_env(VINE_CATALOG=catalog_addr), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kind", ["directory", "server"])
def test_named_manager_is_found_and_serves_a_worker(kind, tmp_path, monkeypatch, request):
    addr = str(tmp_path / "catalog") if kind == "directory" else request.getfixturevalue("catalog_server")
    monkeypatch.setenv("VINE_CATALOG", addr)
    m = vine.Manager(port=0, name=f"catalog-{kind}-proj", run_info_path=str(tmp_path / "run-info"))
    worker = None
    try:
        m.set_property("owner", "a-student")
        m.update_catalog()
        [entry] = catalog.find(f"catalog-{kind}-proj")
        assert (entry["port"], entry["owner"], entry["type"]) == (m.port, "a-student", "vine_manager")
        assert catalog.lookup("catalog-.*-proj") == [(entry["address"], m.port)]
        worker = _named_worker(tmp_path, f"catalog-{kind}-proj", addr)
        t = vine.Task("echo found-through-the-catalog")
        assert run(m, t, 60).std_output.strip() == "found-through-the-catalog"
        m.update_catalog()
        assert status.main(["-C", addr, "-M", f"catalog-{kind}-proj"]) == 0
    finally:
        m.close()
        if worker is not None:
            worker.kill()
            worker.wait(10)
            worker.stderr.close()
    assert catalog.find(f"catalog-{kind}-proj") == []  # close() removes the entry


@pytest.mark.parametrize("kind", ["directory", "server"])
def test_a_killed_manager_is_never_offered(kind, tmp_path, request):
    addr = str(tmp_path / "catalog") if kind == "directory" else request.getfixturevalue("catalog_server")
    child = _manager_in_a_process(tmp_path, f"doomed-{kind}", addr)
    try:
        port = int(child.stdout.readline())
        assert [e["port"] for e in catalog.find(f"doomed-{kind}", addr)] == [port]
        os.kill(child.pid, signal.SIGKILL)  # no close(): the entry stays written
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdin.close()
        child.stdout.close()
    assert catalog.find(f"doomed-{kind}", addr) == []
    if kind == "directory":
        assert os.listdir(tmp_path / "catalog") == []  # the reader dropped the dead entry's file
    w = _named_worker(tmp_path, f"doomed-{kind}", addr)
    _, err = w.communicate(timeout=30)
    assert w.returncode == 1 and f"no manager named 'doomed-{kind}'" in err


def test_entry_is_refreshed_with_the_managers_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("VINE_CATALOG_DIR", str(tmp_path / "catalog"))
    m = vine.Manager(port=0, name="refreshing-proj", run_info_path=str(tmp_path / "run-info"))
    try:
        first = catalog.find("refreshing-proj")[0]
        assert first["tasks_waiting"] == 0
        for _ in range(3):
            m.submit(vine.Task("true"))
        m.tune("update-interval", 0.2)
        wait_until(lambda: catalog.find("refreshing-proj")[0]["tasks_waiting"] == 3, 20, "a refresh with 3 waiting tasks")
        assert catalog.find("refreshing-proj")[0]["lastheardfrom"] > first["lastheardfrom"]
        with pytest.raises(ValueError, match="update-interval"):
            m.tune("update-interval", float("nan"))
    finally:
        m.close()


def test_silent_or_foreign_entries(tmp_path):
    d = tmp_path / "catalog"
    d.mkdir()
    now = time.time()
    fresh = {"project": "far", "host": "another-host", "address": "10.0.0.9", "port": 9123, "lastheardfrom": now - 10}
    silent = dict(fresh, project="silent", lastheardfrom=now - 400)
    mine_reused = {"project": "reused", "host": socket.gethostname(), "address": "127.0.0.1", "port": 1,
                   "pid": os.getpid(), "starttime": 1.0, "lastheardfrom": now}
    for i, e in enumerate([fresh, silent, mine_reused]):
        (d / f"e{i}.json").write_text(json.dumps(e))
    (d / "garbage.json").write_text("{not json")
    assert [e["project"] for e in catalog.entries(str(d))] == ["far"]
    assert catalog.lookup("silent|reused|far", str(d)) == [("10.0.0.9", 9123)]
    assert not catalog.is_live(dict(fresh, lastheardfrom=float("nan")))
    assert not catalog.is_live(dict(fresh, lifetime="forever"))


def test_store_expires_and_validates():
    store = CatalogStore(max_lifetime=100)
    store.update({"project": "p", "host": "h", "port": 5, "lifetime": 1000}, now=0)
    assert [e["lifetime"] for e in store.live(now=50)] == [100]  # capped by the server
    assert store.live(now=101) == []
    for bad, what in [([1], "JSON object"), ({"host": "h", "port": 5}, "project"), ({"project": "p", "host": "h", "port": 70000}, "port"),
                      ({"project": "p", "host": "h", "port": 5, "lifetime": float("inf")}, "lifetime"),
                      ({"project": "p", "host": "h", "port": True}, "port")]:
        with pytest.raises(ValueError, match=what):
            store.update(bad, now=0)


def test_server_refuses_garbage_and_keeps_serving(catalog_server):
    base = f"http://{catalog_server}"

    def post(path: str, body: bytes) -> int:
        req = urllib.request.Request(base + path, data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post("/update", b"\xff\xfe not json") == 400
    assert post("/update", b'{"project": "p", "host": "h", "port": 1, "lifetime": NaN}') == 400
    assert post("/update", b"x" * 70_000) == 400
    assert post("/elsewhere", b"{}") == 404
    host, port = catalog_server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        s.recv(1024)
    good = json.dumps({"project": "ok", "host": "far-host", "port": 7, "address": "10.1.1.1"}).encode()
    assert post("/update", good) == 200
    assert catalog.lookup("ok", catalog_server) == [("10.1.1.1", 7)]


def test_catalog_addresses(tmp_path, monkeypatch):
    monkeypatch.delenv("VINE_CATALOG", raising=False)
    monkeypatch.setenv("VINE_CATALOG_DIR", str(tmp_path))
    assert catalog.server_address() is None and catalog.catalog_dir() == str(tmp_path)
    assert catalog.server_address("catalog.example.edu:9097") == ("catalog.example.edu", 9097)
    assert catalog.server_address("[::1]:9097") == ("::1", 9097)
    monkeypatch.setenv("VINE_CATALOG", "127.0.0.1:9097")
    assert catalog.server_address() == ("127.0.0.1", 9097)
    with pytest.raises(ValueError, match="out of range"):
        catalog.server_address("host:99999")
