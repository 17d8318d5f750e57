"""The guardian that takes a worker's task processes with it when the worker dies.

Tasks start in sessions of their own (``posix_spawn(setsid=True)``), so that killing a task's process
group kills everything it started; but then nothing ties them to the worker. A worker that exits
kills them itself; a worker that is SIGKILLed (or crashes, or is OOM-killed) cannot, and without help
its tasks would go on running while the manager runs them again elsewhere, twice at once.

The guardian is a small Python process the worker starts before it runs anything (``python -I -S``,
about 10 ms once per worker, and it imports nothing of ours, so its command line does not look like a
worker's). It holds the read end of a pipe whose only write end is the worker's: the worker writes
``+PID`` when a task's process group starts and ``-PID`` when it is gone. When the pipe reaches
end-of-file the worker is gone, however it went: the guardian SIGKILLs every group still listed and
exits. It costs the worker one short write per task start and end (a spawn stays a plain
``posix_spawn``); the guardian sleeps in ``read`` and uses no CPU.

The guardian runs in a session of its own and ignores SIGINT, SIGTERM and SIGHUP, so a signal to the
worker's process group (a terminal's Ctrl-C, a batch system's SIGTERM) does not take it first. One
window is left: a worker killed between ``posix_spawn`` returning and the ``+PID`` write (a few
microseconds) leaves that one task to run to its end. A task that moves its own processes into
another session (``setsid``) takes them out of reach, as it does from the worker's own kill.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("vine_worker")


# The guardian's whole program (run with -I -S: no site, no environment, no import of core).
_GUARDIAN = r"""
import os, signal, sys
fd = int(sys.argv[1])
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
groups = set()
pending = b""
while True:
    try:
        data = os.read(fd, 65536)
    except InterruptedError:
        continue
    if not data:
        break
    pending += data
    *lines, pending = pending.split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class TaskReaper:
    """The worker's side: starts the guardian, tells it which process groups are running."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()  # the write end is close-on-exec: no task or fork server holds it
        try:
            os.set_inheritable(read_fd, True)
            stdio = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]  # none of the worker's pipes
            self.pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", _GUARDIAN, str(read_fd)],
                                      {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, file_actions=stdio, setsid=True)
        finally:
            os.close(read_fd)
        self._broken = False

    def started(self, pgid: int) -> None:
        """Process group ``pgid`` (a task's) is running: kill it if this worker dies."""
        self._write(b"+%d\n" % pgid)

    def ended(self, pgid: int) -> None:
        """Process group ``pgid`` is gone (or killed by the worker): forget it."""
        self._write(b"-%d\n" % pgid)

    def _write(self, line: bytes) -> None:
        if self._broken:
            return
        try:
            os.write(self._write_fd, line)  # a few bytes: the pipe never fills while the guardian reads
        except OSError as exc:
            self._broken = True
            log.warning("the task guardian is gone (%s): tasks would outlive a killed worker", exc)

    def close(self) -> None:
        """Let the guardian go (the worker has killed its tasks itself) and reap it."""
        if self._write_fd < 0:
            return
        os.close(self._write_fd)
        self._write_fd = -1
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
