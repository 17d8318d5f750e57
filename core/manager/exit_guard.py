"""Complete logs when a program ends without ``Manager.close()``.

A program that raises, calls ``sys.exit``, returns from its script, or gets SIGINT still runs
``atexit`` handlers: every open manager is closed there, so its four logs end with their last
records and ``END``. SIGTERM's default action kills the process without ``atexit``; while a manager
is open, a SIGTERM whose disposition is the default closes the open managers first and then dies of
the same signal (the exit status stays "killed by SIGTERM"). A handler the program installed before
the manager is kept and called after the logs are flushed; one it installs later replaces ours (the
program then decides how to end, and ``atexit`` still closes the managers if it exits). An ignored
signal stays ignored. SIGKILL cannot be caught: the logs then hold what was flushed (every 0.5 s).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Any, Protocol


class _Closable(Protocol):
    def close(self) -> None: ...

    def _flush_logs(self) -> None: ...


_open: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_owner_pid: dict[int, int] = {}  # id(manager) -> the pid that opened it (a forked child must not close it)
_lock = threading.Lock()
_installed = False
_previous: dict[int, Any] = {}  # signal number -> the disposition before ours
GUARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def register(manager: _Closable) -> None:
    """Close ``manager`` at interpreter exit and on a fatal SIGTERM/SIGINT, unless closed before."""
    global _installed
    with _lock:
        _open[id(manager)] = manager
        _owner_pid[id(manager)] = os.getpid()
        if not _installed:
            atexit.register(close_all)
            _installed = True
    _install_signal_handlers()


def unregister(manager: _Closable) -> None:
    with _lock:
        _open.pop(id(manager), None)
        _owner_pid.pop(id(manager), None)


def _mine() -> list[Any]:
    pid = os.getpid()
    with _lock:
        return [m for key, m in list(_open.items()) if _owner_pid.get(key) == pid]


def close_all() -> None:
    """Close every manager this process opened and has not closed (atexit, fatal signals)."""
    for m in _mine():
        try:
            m.close()
        except Exception:  # noqa: BLE001, S110 - one manager's failure must not keep the others' logs open
            pass


def flush_all() -> None:
    for m in _mine():
        try:
            m._flush_logs()
        except Exception:  # noqa: BLE001, S110 - flushing is best effort; close() follows at exit
            pass


def _install_signal_handlers() -> None:
    # signal.signal works only in the main thread; a manager made elsewhere still has atexit.
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in GUARDED_SIGNALS:
        current = signal.getsignal(sig)
        if current is _on_signal or current == signal.SIG_IGN or current is None:
            continue  # ours already, deliberately ignored, or set from outside Python: leave it
        _previous[sig] = current
        signal.signal(sig, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        # The program's handler (or Python's KeyboardInterrupt for SIGINT) decides what happens
        # next; if the program then exits, atexit closes the managers. Records so far are on disk.
        flush_all()
        previous(signum, frame)
        return
    # The default action: the process dies without atexit. Close first, then die of this signal.
    close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
