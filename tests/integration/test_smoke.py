from __future__ import annotations

import core as vine
from tests.conftest import drain


def test_quickstart_shape(manager, start_worker, tmp_path):
    data = tmp_path / "warandpeace.txt"
    data.write_text("needle\nhouse\nwater\nneedle\n")
    f = manager.declare_url(f"file://{data}", cache="workflow")
    for kw in ["needle", "house", "water"]:
        t = vine.Task(f"grep {kw} warandpeace.txt | wc -l")
        t.add_input(f, "warandpeace.txt")
        t.set_cores(1)
        manager.submit(t)
    start_worker(manager, cores=2)
    done = drain(manager, 30)
    assert sorted(int(t.output) for t in done) == [1, 1, 2]
    assert all(t.result == "success" and t.exit_code == 0 for t in done)
