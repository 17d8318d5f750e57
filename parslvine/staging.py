"""Which of an app call's Parsl ``File``s the manager moves, and under what name in the sandbox.

Parsl's rule (its TaskVineExecutor's): a file is staged when it is a local file (scheme ``file``,
or it has a local path that exists) **and** its path is relative; absolute paths are taken to be
on a filesystem the workers share, and are left alone. With ``shared_fs=True`` nothing is staged
and every relative path is mapped to its absolute path.

Inputs: ``inputs=[...]``, any positional argument or other keyword argument that is a File.
Outputs: ``outputs=[...]``, and the ``stdout``/``stderr`` files of bash apps. A staged stream
comes back whole and replaces the local file (as in Parsl's TaskVineExecutor); give an absolute
path to append to one file from many calls.

The sandbox name is the relative path itself (directories are made as needed); a path that climbs
out of the working directory (``../x``) gets a generated name. The worker-side runner rewrites
each File's ``local_path`` through the same map, so the app sees the file where it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from parsl.data_provider.files import File
from parsl.utils import get_std_fname_mode

STREAMS = ("stdout", "stderr")


@dataclass
class StagingPlan:
    """What one app call moves: (local path, sandbox name) pairs, and the map the runner applies."""

    inputs: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> tuple[Any, ...] | None:
        """``(inputs, outputs, names)``, or None when the call moves nothing (most calls): what goes
        to the manager process with each call, cheaper to pickle than the dataclass."""
        if not (self.inputs or self.outputs or self.names):
            return None
        return (self.inputs, self.outputs, self.names)

    @classmethod
    def from_wire(cls, fields: tuple[Any, ...] | None) -> StagingPlan:
        """The inverse of :meth:`to_wire`."""
        return cls() if fields is None else cls(*fields)

    def _sandbox_name(self, path: str) -> str:
        known = self.names.get(path)
        if known is not None:
            return known
        norm = os.path.normpath(path)
        if norm in (".", "") or norm.startswith(".." + os.sep) or norm == "..":
            norm = os.path.join(".parslvine-files", str(len(self.names)), os.path.basename(os.path.abspath(path)) or "file")
        self.names[path] = norm
        return norm

    def add_input(self, path: str) -> None:
        remote = self._sandbox_name(path)
        if (path, remote) not in self.inputs:
            self.inputs.append((path, remote))

    def add_output(self, path: str) -> None:
        remote = self._sandbox_name(path)
        if (path, remote) not in self.outputs:
            self.outputs.append((path, remote))


def _staged_path(f: File) -> str | None:
    """The local path to move for ``f``, or None when Parsl's rule leaves it in place."""
    if f.scheme != "file" and not (f.local_path and os.path.exists(f.local_path)):
        return None
    try:
        path = f.filepath
    except ValueError:
        return None
    return None if os.path.isabs(path) else path


def plan_staging(args: tuple[Any, ...], kwargs: dict[str, Any], shared_fs: bool) -> StagingPlan:  # noqa: C901 - one branch per Parsl File scheme and direction
    """The staging plan of one app call (see the module docstring for the rules)."""
    plan = StagingPlan()
    in_files: list[File] = [f for f in kwargs.get("inputs", None) or () if isinstance(f, File)]
    in_files += [a for a in args if isinstance(a, File)]
    out_files: list[File] = [f for f in kwargs.get("outputs", None) or () if isinstance(f, File)]
    streams: list[tuple[str, str]] = []
    for key, value in kwargs.items():
        if key in STREAMS:
            if value:
                streams.append(get_std_fname_mode(key, value))
        elif key not in ("inputs", "outputs") and isinstance(value, File):
            in_files.append(value)

    if shared_fs:
        for f in in_files + out_files:
            if f.scheme == "file" or f.local_path:
                try:
                    path = f.filepath
                except ValueError:
                    continue
                plan.names[path] = os.path.abspath(path)
        for fname, _mode in streams:
            plan.names[fname] = os.path.abspath(fname)
        return plan

    for f in in_files:
        path = _staged_path(f)
        if path is not None:
            plan.add_input(path)
    for f in out_files:
        path = _staged_path(f)
        if path is not None:
            plan.add_output(path)
    for fname, _mode in streams:
        if os.path.isabs(fname):
            continue
        plan.add_output(fname)
    return plan
