"""A worker's cache: what it holds, under which names, and for how long.

Every file a worker has (received from the manager, a peer or a URL, made by a mini-task, or a
task's output) lives in ``cache/<cache name>`` (or, when small, in memory; see
``WorkerTransfers._keep_in_memory``) with its size and cache level. ``forever`` entries also get a
record in ``cache-meta/`` holding their stamp (``worker_sandbox.entry_stamp``), so a worker started
later on the same workspace keeps exactly those that are unchanged. Mixed into
:class:`core.worker.Worker`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

from .. import constants as C
from ..wire import messages as M
from ..wire.connection import path_size
from ..errors import ProtocolError
from .sandbox import entry_stamp

log = logging.getLogger("vine_worker")


class WorkerCache:
    """The cache's bookkeeping: names, sizes, levels, stamps, and waiting for names to arrive."""

    if TYPE_CHECKING:  # state owned by Worker, declared for the type checker
        cache_dir: str
        meta_dir: str
        cache: dict[str, tuple[int, int]]
        cache_stamps: dict[str, str]
        memory: dict[str, bytes]
        memory_bytes: int
        pending: dict[str, asyncio.Future[bool]]
        drop_on_arrival: set[str]

        def send(self, header: dict[str, Any], payload: bytes = b"") -> None: ...
        def _seal_cache_entry(self, name: str) -> None: ...

    def cache_path(self, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise ProtocolError(f"illegal cache name {name!r}")
        return os.path.join(self.cache_dir, name)

    def _load_cache(self) -> None:
        """Keep `forever` files from an earlier run on this workspace, if unchanged; drop the rest."""
        for name in os.listdir(self.cache_dir):
            meta = os.path.join(self.meta_dir, name)
            level = -1
            stamp = ""
            try:
                with open(meta) as fh:
                    info = json.load(fh)
                level, size, stamp = int(info["level"]), int(info["size"]), str(info["stamp"])
            except (OSError, ValueError, KeyError, TypeError):
                size = 0
            try:
                # Changed since it was stamped (by a task of a worker killed before its check ran, or
                # by hand): the file no longer is what its name promises.
                intact = entry_stamp(self.cache_path(name)) == stamp
            except (OSError, ProtocolError):
                intact = False
            if level >= C.VINE_CACHE_LEVEL_FOREVER and intact:
                self.cache[name] = (size, level)
                self.cache_stamps[name] = stamp
            else:
                if level >= C.VINE_CACHE_LEVEL_FOREVER:
                    log.warning("dropping %s from the cache: changed since it was stored", name)
                self._unlink(name)

    def _add_cache(self, name: str, level: int) -> int:
        data = self.memory.get(name)
        size = len(data) if data is not None else path_size(self.cache_path(name))
        self.cache[name] = (size, level)
        if data is None:
            self._seal_cache_entry(name)
        if level >= C.VINE_CACHE_LEVEL_FOREVER:
            with open(os.path.join(self.meta_dir, name), "w") as fh:
                json.dump({"level": level, "size": size, "stamp": self.cache_stamps.get(name, "")}, fh)
        return size

    def _unlink(self, name: str) -> None:
        self.cache.pop(name, None)
        self.cache_stamps.pop(name, None)
        data = self.memory.pop(name, None)
        if data is not None:
            self.memory_bytes -= len(data)
            return
        for path in (os.path.join(self.cache_dir, name), os.path.join(self.meta_dir, name)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)

    def _drop_levels_below(self, level: int) -> None:
        for name, (_size, lvl) in list(self.cache.items()):
            if lvl < level:
                self._unlink(name)

    def _cache_ready(self, name: str, level: int) -> None:
        size = self._add_cache(name, level)
        self.send(M.CacheUpdate(name, size))
        if name in self.drop_on_arrival:
            # Unlinked by the manager, or left by a killed task, while it was on its way: it goes now,
            # not with the workflow. Announced first, so the transfer ends as a success (the source
            # is not blamed), then withdrawn.
            self.drop_on_arrival.discard(name)
            self._unlink(name)
            self.send(M.CacheInvalid(name, "arrived after it was unlinked or its task was killed; removed"))
        fut = self.pending.pop(name, None)
        if fut is not None and not fut.done():
            fut.set_result(name in self.cache)

    def _cache_failed(self, name: str, reason: str) -> None:
        log.warning("could not obtain %s: %s", name, reason)
        self.drop_on_arrival.discard(name)
        self.send(M.CacheInvalid(name, reason))
        fut = self.pending.pop(name, None)
        if fut is not None and not fut.done():
            fut.set_result(False)

    def _expect(self, name: str) -> asyncio.Future[bool]:
        fut = self.pending.get(name)
        if fut is None:
            fut = self.pending[name] = asyncio.get_running_loop().create_future()
        return fut
