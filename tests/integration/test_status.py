"""vine_status against a real manager and a catalog directory."""

from __future__ import annotations

import core as vine
from core.tools import status
from tests.conftest import drain, wait_for_workers


def test_status_of_a_manager(manager, start_worker, capsys):
    manager.submit(vine.Task("echo one"))
    start_worker(manager, cores=1, memory=300, disk=400)
    wait_for_workers(manager, 1)
    drain(manager, 30)

    assert status.main(["localhost", str(manager.port)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == status.CATALOG_HEADER
    assert out[1].split()[2:] == [str(manager.port), "0", "0", "1", "1"]

    assert status.main(["-W", f"localhost:{manager.port}"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:4] == ["WORKER", "HOST", "ADDRESS", "CORES"] and len(rows) == 2
    assert rows[1].split()[3:6] == ["1", "300", "400"]

    assert status.main(["-T", "localhost", str(manager.port)]) == 0
    assert capsys.readouterr().out.split() == ["ID", "STATE", "WORKER", "COMMAND"]  # the finished task is forgotten


def test_status_needs_the_password(tmp_path, capsys):
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"))
    try:
        m.set_password("sesame")
        assert status.main(["localhost", str(m.port)]) == 1
        assert "password" in capsys.readouterr().err
        pw = tmp_path / "pw"
        pw.write_text("sesame\n")
        assert status.main(["-P", str(pw), "localhost", str(m.port)]) == 0
    finally:
        m.close()


def test_catalog_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VINE_CATALOG_DIR", str(tmp_path / "catalog"))
    m = vine.Manager(port=0, name="status-test-project", run_info_path=str(tmp_path / "run-info"))
    try:
        assert status.main([]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == status.CATALOG_HEADER
        row = [line.split() for line in lines[1:] if line.startswith("status-test-project")]
        assert len(row) == 1 and row[0][2] == str(m.port)
    finally:
        m.close()
    assert status.main([]) == 0
    assert "status-test-project" not in capsys.readouterr().out
