"""The guardian that takes a worker's task processes with it when the worker dies.

Tasks start in sessions of their own (``posix_spawn(setsid=True)``), so that killing a task's process
group kills everything it started; but then nothing ties them to the worker. A worker that exits
kills them itself; a worker that is SIGKILLed (or crashes, or is OOM-killed) cannot, and without help
its tasks would go on running while the manager runs them again elsewhere, twice at once.

The guardian is a small Python process the worker starts before it runs anything (``python -I -S``,
about 10 ms once per worker; it imports nothing of ours, so its command line does not look like a
worker's). It holds the read end of a pipe whose only write end is the worker's, and sleeps in
``read``. When the pipe reaches end-of-file the worker is gone, however it went: the guardian finds
every process whose environment carries this worker's ``VINE_SANDBOX=<workspace>/sandbox/`` (set
for each task, and inherited by everything a task starts) and SIGKILLs it with its process group,
then exits. Nothing passes per task: a spawn stays a plain ``posix_spawn`` and the guardian uses no
CPU until the end.

The guardian runs in a session of its own and ignores SIGINT, SIGTERM and SIGHUP, so a signal to the
worker's process group (a terminal's Ctrl-C, a batch system's SIGTERM) does not take it first. Out of
its reach: a task process that replaced its whole environment (``env -i``) and moved to a session of
its own; a PythonTask's child is found through the fork server instead, which kills its children
when the worker's end of its socket closes.
"""

from __future__ import annotations

import os
import sys

# The guardian's whole program (run with -I -S: no site, no environment, no import of core).
_GUARDIAN = r"""
import os, signal, sys
fd, marker = int(sys.argv[1]), os.fsencode(sys.argv[2])
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
while True:
    try:
        if not os.read(fd, 4096):
            break
    except InterruptedError:
        pass
me = os.getpid()
for _ in range(3):  # again, for what a task started while the first round was killing
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                with open("/proc/" + entry + "/environ", "rb") as fh:
                    if marker in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    if not found:
        break
    for pid in found:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


class TaskReaper:
    """The worker's side: starts the guardian for the tasks whose sandboxes are under ``sandbox_dir``."""

    def __init__(self, sandbox_dir: str) -> None:
        marker = "VINE_SANDBOX=" + os.path.join(os.path.abspath(sandbox_dir), "")
        read_fd, self._write_fd = os.pipe()  # the write end is close-on-exec: no task or fork server holds it
        try:
            os.set_inheritable(read_fd, True)
            stdio = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]  # none of the worker's pipes
            self.pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", _GUARDIAN, str(read_fd), marker],
                                      {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, file_actions=stdio, setsid=True)
        finally:
            os.close(read_fd)

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
