"""The guardian that takes a worker's task processes with it when the worker dies.

Tasks start in sessions of their own (``posix_spawn(setsid=True)``), so that killing a task's process
group kills everything it started; but then nothing ties them to the worker. A worker that exits
kills them itself; a worker that is SIGKILLed (or crashes, or is OOM-killed) cannot, and without help
its tasks would go on running while the manager runs them again elsewhere, twice at once.

The guardian is a process forked from the worker when it starts (before it runs anything). It holds
the read end of a pipe whose only write end is the worker's: the worker writes ``+PID`` when a task's
process group starts and ``-PID`` when it is gone. When the pipe reaches end-of-file the worker is
gone, however it went: the guardian SIGKILLs every group still listed and exits. It costs the worker
one short write per task start and end (a spawn stays a plain ``posix_spawn``); the guardian sleeps
in ``read`` and uses no CPU.

The guardian runs in a session of its own and ignores SIGINT, SIGTERM and SIGHUP, so a signal to the
worker's process group (a terminal's Ctrl-C, a batch system's SIGTERM) does not take it first. One
window is left: a worker killed between ``posix_spawn`` returning and the ``+PID`` write (a few
microseconds) leaves that one task to run to its end.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("vine_worker")


class TaskReaper:
    """The worker's side: starts the guardian, tells it which process groups are running."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()  # both close-on-exec: no task or fork server inherits them
        self.pid = os.fork()
        if self.pid == 0:  # the guardian: never returns
            code = 1
            try:
                os.close(self._write_fd)
                code = _guard(read_fd)
            finally:
                os._exit(code)
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
            os.write(self._write_fd, line)  # at most a few bytes: the pipe never fills while the guardian reads
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


def _guard(read_fd: int) -> int:
    """The guardian's life: follow the worker's messages until end-of-file, then kill what is left."""
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)  # hold none of the worker's pipes open (a reader of its stderr waits for EOF)
    keep = {read_fd, 0, 1, 2}
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        if int(fd) not in keep:
            try:
                os.close(int(fd))
            except OSError:
                pass  # the directory listing's own descriptor, already closed
    groups: set[int] = set()
    pending = b""
    while True:
        try:
            data = os.read(read_fd, 65536)
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
        except (ProcessLookupError, PermissionError):
            pass
    return 0
