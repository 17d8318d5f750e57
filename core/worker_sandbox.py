"""A worker's sandboxes: made (or reused), inputs linked in, cleaned up after the task.

A task runs in ``sandbox/t.<id>/`` with its inputs hard-linked (or symlinked) from the cache under
their remote names. A sandbox the task left clean is kept for the next task, which saves two mkdir and
two rmdir per task. Mixed into :class:`core.worker.Worker`.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from . import constants as C

if TYPE_CHECKING:
    from .worker import RunningTask


class WorkerSandboxes:
    """Making, filling and recycling sandboxes."""

    if TYPE_CHECKING:  # state owned by Worker, declared for the type checker
        sandbox_dir: str
        cache: dict[str, tuple[int, int]]
        memory: dict[str, bytes]
        tasks: dict[int, RunningTask]
        _free_sandboxes: list[str]
        _stamps: dict[str, tuple[tuple[int, int], ...]]

        def cache_path(self, name: str) -> str: ...
        def _unlink(self, name: str) -> None: ...
        def _spill(self, name: str) -> None: ...

    def _make_sandbox(self, label: str) -> str:
        # Reusing a clean sandbox saves two mkdir and two rmdir per task: a third of a tiny task's cost.
        if self._free_sandboxes and label.startswith("t."):
            return self._free_sandboxes.pop()
        path = os.path.join(self.sandbox_dir, label)
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.join(path, ".taskvine.tmp"))
        return path

    def _link_inputs(self, rt: RunningTask) -> None:
        for inp in rt.spec["inputs"]:
            if inp.get("in_place") and rt.spec.get("python") is not None and not rt.spec.get("environments"):
                continue  # a PythonTask's function: the fork server reads it from the cache (worker_python)
            if inp["name"] in self.memory:
                self._spill(inp["name"])  # a sandbox needs a real file to link
            src = self.cache_path(inp["name"])
            dst = os.path.join(rt.sandbox, inp["remote"])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if inp.get("symlink") or os.path.isdir(src):
                os.symlink(src, dst)
            else:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        for name in rt.spec.get("environments", []):
            os.symlink(self.cache_path(name), os.path.join(rt.sandbox, f"__vine_env_{name}"))

    def _cleanup_task(self, rt: RunningTask) -> list[str]:
        """Remove the sandbox and task-level inputs no other task here still needs."""
        if rt.sandbox:
            self._recycle_sandbox(rt.sandbox, rt.stdout_size == 0)
        still = {i["name"] for other in self.tasks.values() if other is not rt for i in other.spec["inputs"]}
        unlinked = []
        for inp in rt.spec["inputs"]:
            name = inp["name"]
            if int(inp.get("level", 0)) <= C.VINE_CACHE_LEVEL_TASK and name not in still and name in self.cache:
                self._unlink(name)
                unlinked.append(name)
        return unlinked


    def _recycle_sandbox(self, path: str, stdout_empty: bool = False) -> None:
        """Keep a sandbox the task left clean for the next task; delete anything else.

        A sandbox whose directory times are unchanged since it was last known clean holds nothing
        new (creating, removing or renaming an entry changes them): two stats instead of listing
        both directories. An empty stdout file stays to be truncated; a non-empty one is removed
        (truncating written files makes ext4 flush them at close).
        """
        tmp = os.path.join(path, ".taskvine.tmp")
        try:
            if len(self._free_sandboxes) < 64:
                if stdout_empty and self._stamps.get(path) == _dir_stamp(path, tmp):
                    self._free_sandboxes.append(path)
                    return
                entries = os.listdir(path)
                if set(entries) <= {".taskvine.tmp", ".vine-stdout"} and not os.listdir(tmp):
                    if ".vine-stdout" in entries and not stdout_empty:
                        os.unlink(os.path.join(path, ".vine-stdout"))
                    self._stamps[path] = _dir_stamp(path, tmp)
                    self._free_sandboxes.append(path)
                    return
        except OSError:
            pass
        self._stamps.pop(path, None)
        shutil.rmtree(path, ignore_errors=True)


def _dir_stamp(*paths: str) -> tuple[tuple[int, int], ...]:
    return tuple((st.st_mtime_ns, st.st_mode) for st in map(os.stat, paths))
