"""Starting, ending and reaping a task's processes: the one place the worker and its fork server do it.

A task runs as the leader of a process group of its own (``setsid``/``setpgid``), so killing the
group kills everything it started. The worker reaps the shell it spawned for a command task (its
pidfd turns readable), the fork server reaps the children it forked for PythonTasks (on SIGCHLD);
both read the ending with :func:`reap_child` and clean up with :func:`kill_group`.
"""

from __future__ import annotations

import os
import signal


def reap_child(pid: int = -1) -> tuple[int, int] | None:
    """Reap child ``pid`` (any child with -1) if it has ended, without waiting.

    Returns ``(pid, exit code)`` with the code as ``os.waitstatus_to_exitcode`` gives it (negative:
    killed by that signal), or None while it runs. Raises ChildProcessError when there is no such
    child (already reaped, or none left).
    """
    ended, status = os.waitpid(pid, os.WNOHANG)
    if ended == 0:
        return None
    return ended, os.waitstatus_to_exitcode(status)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``: a task and whatever it left running.

    A group already gone (or no longer ours to signal) is fine: there is nothing left to stop.
    """
    if pid <= 0:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def block_child_signal() -> None:
    """Block SIGCHLD in the calling thread (for threads that start no process: the worker's executor).

    A shell's SIGCHLD goes to the thread that started it (default action: discarded at once). But
    glibc's ``posix_spawn`` blocks every signal in its caller until the child has exec'd, a third
    to a half of the worker's loop time per ``Task("true")``; a shell ending in that window has its
    SIGCHLD handed to any other thread that does not block it, which the kernel wakes only to drop
    the signal. On the 2-core VM the worker's idle executor thread (``asyncio_0``, started by the
    first ``getaddrinfo``) was woken for 61 % of ``Task("true")`` ends: 1,826 context switches over
    3,000 tasks, about 4 % of all CPU (``perf sched timehist``). Blocked here too, the signal waits
    for the spawning thread to unblock it and is dropped there, with no wake-up.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})

