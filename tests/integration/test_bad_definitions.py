"""A hostile (or broken) manager sends a real worker task definitions that are not ones: a missing
field deep inside, a field of the wrong type, a definition that is not an object, a bad mini-task.
The worker drops that connection with a warning naming the field (a RemoteProtocolError, not a
KeyError deep in its task path), stays alive, connects again and runs the next honest task.

The "manager" here is a raw socket speaking our framing (core.wire.protocol) and the handshake by hand.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from core.wire import messages as M
from core.wire.protocol import PROTOCOL_VERSION, Frame, FrameDecoder, encode_frame, encode_message, new_nonce
from tests.conftest import WorkerProcess, wait_until

GOOD_INPUT = {"name": "file-1", "remote": "in.txt"}

BAD_FRAMES: list[tuple[dict[str, Any], str]] = [
    ({"type": "task", "task": {"id": 1, "command": "true", "inputs": [GOOD_INPUT, {"remote": "x"}]}},
     "message 'task' lacks field 'task.inputs[1].name'"),
    ({"type": "task", "task": {"id": 2, "command": "true", "outputs": [{"name": "o", "remote": "o", "level": "0", "kind": "file"}]}},
     "message 'task' field 'task.outputs[0].level' is '0', not an integer"),
    ({"type": "task", "task": {"id": 3, "command": "true", "python": {"function": ".f", "args": 7}}},
     "message 'task' field 'task.python.args' is 7, not a string"),
    ({"type": "task", "task": ["id", 4]}, "message 'task' field 'task' is ['id', 4], not a task definition"),
    ({"type": "minitask", "name": "m", "level": 1, "task": {"command": "true", "inputs": []}},
     "message 'minitask' lacks field 'task.source'"),
]


class FakeManager:
    """Accepts the worker's connections one at a time and speaks to it frame by frame."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.sock: socket.socket | None = None
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def accept(self) -> M.Ready:
        self.sock, _ = self.listener.accept()
        self.sock.settimeout(20)
        self.decoder = FrameDecoder()
        self.frames = []
        hello = self.recv()
        assert isinstance(hello, M.Hello) and hello.role == "worker"
        self.sock.sendall(encode_message(M.Welcome(PROTOCOL_VERSION, new_nonce(), False)))
        ready = self.recv()
        assert isinstance(ready, M.Ready)
        return ready

    def recv(self) -> M.Message | None:
        """The next message, or None once the worker has closed the connection."""
        assert self.sock is not None
        while not self.frames:
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            self.frames.extend(self.decoder.feed(data))
        self.last = self.frames.pop(0)
        return self.last.message

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.listener.close()


@pytest.mark.timeout(60)
def test_a_worker_drops_bad_definitions_and_keeps_serving(tmp_path: Any) -> None:
    fake = FakeManager()
    worker = WorkerProcess(fake.port, str(tmp_path / "w"))
    try:
        for header, named in BAD_FRAMES:
            fake.accept()
            assert fake.sock is not None
            fake.sock.sendall(encode_frame(header))
            while True:  # keepalive answers and the like may come first; then the worker hangs up
                msg = fake.recv()
                if msg is None:
                    break
                assert not isinstance(msg, M.Complete), f"the worker ran a bad definition: {msg}"
            fake.sock.close()
            assert worker.proc.poll() is None, "the worker died on a bad definition"

            def logged(text: str = named) -> bool:
                with open(worker.log_file, encoding="utf-8", errors="replace") as fh:
                    return text in fh.read()

            wait_until(logged, 10, f"the worker's log to name the bad field ({named})")
        # Still serving: the next connection's honest task runs.
        fake.accept()
        assert fake.sock is not None
        fake.sock.sendall(encode_message(M.Task(M.TaskDefinition(9, "echo still here", resources={"cores": 1.0}))))
        msg = fake.recv()
        while isinstance(msg, (M.Alive, M.CacheUpdate)):
            msg = fake.recv()
        assert isinstance(msg, M.Complete) and msg.id == 9 and msg.result == 0 and msg.exit_code == 0, msg
        assert fake.last.payload == b"still here\n"
        with open(worker.log_file, encoding="utf-8", errors="replace") as fh:
            log_text = fh.read()
        assert "Traceback" not in log_text and "KeyError" not in log_text, log_text[-2000:]
    finally:
        fake.close()
        worker.reap()
    assert not os.path.exists(os.path.join(str(tmp_path / "w"), "sandbox", "t.1")), "a sandbox was made for a bad task"
