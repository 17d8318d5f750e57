"""The function the Python rows of ``vine_benchmark`` run, in a module of its own that imports nothing.

It travels by value (``bench_python`` registers this module with ``cloudpickle.register_pickle_by_value``),
as a function defined in a user's script does. By reference, each worker's fork server and each
library instance would import the module that defines it, and with ``bench_python`` that was the
benchmark's own harness (argparse, subprocess, gettext, locale: ~0.6 MB and 10 mappings), which no
user's process carries and the fork floor does not either, and which every fork then copied (a
fork-mode library: ~12 more faults a call, 5-10 % of its CPU, measured in session 30).
"""

from __future__ import annotations


def noop(x: int) -> int:
    """Trivial, so the figure is the runtime's own cost per call."""
    return x + 1
