"""Many workers on one manager, and workers on separate network interfaces.

The second test builds its own small network: two network namespaces (``ip netns``, root needed),
each with a veth whose other end sits on a bridge in this namespace. The manager listens here; a
worker in each namespace reaches it over its veth, and the two workers reach each other over the
bridge, so tasks, results and a peer transfer of a temp file all cross real, separate interfaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import core as vine
from tests.conftest import ROOT, drain, wait_for_workers


@pytest.mark.timeout(180)
def test_two_dozen_workers_share_the_work(manager, start_worker):
    n_workers = 24
    for _ in range(n_workers):
        start_worker(manager, cores=1, memory=200, disk=300)
    wait_for_workers(manager, n_workers, timeout=120)
    for i in range(n_workers * 4):
        t = vine.Task(f"sleep 0.3; echo {i}")
        t.set_cores(1)
        manager.submit(t)
    done = drain(manager, 120)
    assert len(done) == n_workers * 4
    assert all(t.result == "success" for t in done)
    assert sorted(int(t.std_output) for t in done) == list(range(n_workers * 4))
    # Each worker has 1 core and every task takes a whole core: the work is spread over (nearly) all.
    assert len({t.addrport for t in done}) >= n_workers - 2


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


@pytest.fixture
def two_namespaces():
    """Namespaces ns-a (10.213.x.2) and ns-b (10.213.x.3) bridged to this namespace (10.213.x.1)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's ip")
    tag = f"{os.getpid() % 10000}"
    subnet = f"10.213.{os.getpid() % 250}"
    names = {"a": f"vt{tag}a", "b": f"vt{tag}b"}
    bridge = f"vtbr{tag}"
    made: list[tuple[str, str]] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(("link", bridge))
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, (key, ns) in enumerate(names.items(), start=2):
            _ip("netns", "add", ns)
            made.append(("netns", ns))
            host_end, ns_end = f"{ns}h", f"{ns}n"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            made.append(("link", host_end))
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", host_end, "master", bridge)
            _ip("link", "set", host_end, "up")
            _ip("-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except RuntimeError as exc:
        for kind, name in reversed(made):
            subprocess.run(["ip", kind, "del", name], capture_output=True, timeout=20)
        pytest.skip(f"cannot build the test network here: {exc}")
    try:
        yield {"manager": f"{subnet}.1", "a": (names["a"], f"{subnet}.2"), "b": (names["b"], f"{subnet}.3")}
    finally:
        for kind, name in reversed(made):
            subprocess.run(["ip", kind, "del", name], capture_output=True, timeout=20)


@pytest.mark.timeout(120)
def test_workers_in_separate_namespaces_share_a_temp_peer_to_peer(two_namespaces, manager, tmp_path):
    net = two_namespaces
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = []
    try:
        for key in ("a", "b"):
            ns, _addr = net[key]
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "core.worker", "--cores", "1", "--memory", "300",
                 "--disk", "500", "--feature", f"side-{key}", "--workdir", str(tmp_path / f"worker-{key}"),
                 "--timeout", "60", net["manager"], str(manager.port)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        wait_for_workers(manager, 2, timeout=60)
        addrs = sorted(w["addrport"].rsplit(":", 1)[0] for w in manager.status("workers"))
        assert addrs == sorted([net["a"][1], net["b"][1]]), "each worker must reach the manager over its own interface"

        temp = manager.declare_temp()
        producer = vine.Task("head -c 300000 /dev/urandom > out && md5sum out | cut -d' ' -f1 > sum && cat sum")
        producer.add_output(temp, "out")
        producer.add_feature("side-a")
        consumer = vine.Task("md5sum in | cut -d' ' -f1")
        consumer.add_input(temp, "in")
        consumer.add_feature("side-b")
        manager.submit(producer)
        manager.submit(consumer)
        done = {t.id: t for t in drain(manager, 60)}
        p, c = done[producer.id], done[consumer.id]
        assert p.result == "success" and c.result == "success", (p.result, c.result, c.std_output)
        assert p.addrport.startswith(net["a"][1]) and c.addrport.startswith(net["b"][1])
        assert c.std_output.strip() == p.std_output.strip()  # the same bytes arrived on the other side
        s = manager.stats
        assert s.peer_transfers >= 1 and s.bytes_peer >= 300000
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
            if proc.stderr:
                proc.stderr.close()
