"""A worker's cache: what it holds, under which names, and for how long.

Every file a worker has (received from the manager, a peer or a URL, made by a mini-task, or a
task's output) lives in ``cache/<cache name>`` (or, when small, in memory; see
``keep_in_memory``) with its size and cache level. ``forever`` entries also get a
record in ``cache-meta/`` holding their stamp (``entry_stamp``), so a worker started
later on the same workspace keeps exactly those that are unchanged. A member of
:class:`core.worker.Worker` (``worker.cache``), which the worker's other parts are given: it also
owns the stamps that show whether an entry changed (``seal``, ``verify``), the small entries kept in
memory (``keep_in_memory``, ``spill``) and the waits for names on their way (``expect``, ``gather``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import shutil
import stat
import time
from typing import Callable

from .. import constants as C
from ..errors import ProtocolError
from ..wire import messages as M
from ..wire.connection import path_size

log = logging.getLogger("vine_worker")

MEMORY_FILE_MAX = 1 << 20  # cached files up to this size may live in memory ...
MEMORY_LIMIT = 256 << 20  # ... up to this much in all
OUTPUT_MEMORY_MAX = 64 << 10  # a task's output up to this size may move from its sandbox into memory (adopt_small_output)


class WorkerCache:
    """The cache's bookkeeping: names, sizes, levels, stamps, and waiting for names to arrive."""

    def __init__(self, cache_dir: str, meta_dir: str, send: Callable[..., None]) -> None:
        self.cache_dir = cache_dir  # cache/<cache name>: the entries on disk
        self.meta_dir = meta_dir  # cache-meta/<cache name>: a record per ``forever`` entry (level, size, stamp)
        self.entries: dict[str, tuple[int, int]] = {}  # cache name -> (size, level)
        self.stamps: dict[str, str] = {}  # cache name -> stamp of an on-disk entry when it arrived (see seal)
        # Small cached files kept in memory instead of on disk (see keep_in_memory), and their total size.
        self.memory: dict[str, bytes] = {}
        self.memory_bytes = 0
        self.pending: dict[str, asyncio.Future[bool]] = {}  # names on their way into the cache
        self.drop_on_arrival: set[str] = set()  # pending names nothing here needs any more (see ready)
        self.send = send  # a message to the manager (the worker's send)
        # The mode a file written from memory gets (open's 0o666 under the umask): an output with any
        # other mode (an executable script, a private 0600 file) stays a file, so it keeps its mode.
        umask = os.umask(0o022)
        os.umask(umask)
        self.plain_mode = 0o666 & ~umask

    def path(self, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise ProtocolError(f"illegal cache name {name!r}")
        return os.path.join(self.cache_dir, name)

    def load(self) -> None:
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
                intact = entry_stamp(self.path(name)) == stamp
            except (OSError, ProtocolError):
                intact = False
            if level >= C.VINE_CACHE_LEVEL_FOREVER and intact:
                self.entries[name] = (size, level)
                self.stamps[name] = stamp
            else:
                if level >= C.VINE_CACHE_LEVEL_FOREVER:
                    log.warning("dropping %s from the cache: changed since it was stored", name)
                self.unlink(name)

    def add(self, name: str, level: int) -> int:
        data = self.memory.get(name)
        size = len(data) if data is not None else path_size(self.path(name))
        self.entries[name] = (size, level)
        if data is None:
            self.seal(name)
        if level >= C.VINE_CACHE_LEVEL_FOREVER:
            with open(os.path.join(self.meta_dir, name), "w") as fh:
                json.dump({"level": level, "size": size, "stamp": self.stamps.get(name, "")}, fh)
        return size

    def unlink(self, name: str) -> None:
        self.entries.pop(name, None)
        self.stamps.pop(name, None)
        data = self.memory.pop(name, None)
        if data is not None:
            self.memory_bytes -= len(data)
            return
        for path in (os.path.join(self.cache_dir, name), os.path.join(self.meta_dir, name)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)

    def drop_levels_below(self, level: int) -> None:
        for name, (_size, lvl) in list(self.entries.items()):
            if lvl < level:
                self.unlink(name)

    def ready(self, name: str, level: int) -> None:
        size = self.add(name, level)
        self.send(M.CacheUpdate(name, size))
        if name in self.drop_on_arrival:
            # Unlinked by the manager, or left by a killed task, while it was on its way: it goes now,
            # not with the workflow. Announced first, so the transfer ends as a success (the source
            # is not blamed), then withdrawn.
            self.drop_on_arrival.discard(name)
            self.unlink(name)
            self.send(M.CacheInvalid(name, "arrived after it was unlinked or its task was killed; removed"))
        fut = self.pending.pop(name, None)
        if fut is not None and not fut.done():
            fut.set_result(name in self.entries)

    def failed(self, name: str, reason: str) -> None:
        log.warning("could not obtain %s: %s", name, reason)
        self.drop_on_arrival.discard(name)
        self.send(M.CacheInvalid(name, reason))
        fut = self.pending.pop(name, None)
        if fut is not None and not fut.done():
            fut.set_result(False)

    def seal(self, name: str) -> None:
        """Stamp a cache entry that just arrived, so any later change to it can be seen."""
        try:
            self.stamps[name] = seal(self.path(name))
        except OSError:
            self.stamps.pop(name, None)

    def verify(self, name: str, culprit: str) -> bool:
        """Whether cache entry ``name`` is unchanged; a changed one is removed and the manager told."""
        expected = self.stamps.get(name)
        if expected is None or name not in self.entries or name in self.memory:
            return True
        try:
            now = entry_stamp(self.path(name))
        except OSError:
            now = ""
        if now == expected:
            return True
        reason = f"changed in the worker's cache by {culprit}; removed so nothing reads the changed copy"
        log.warning("%s %s", name, reason)
        self.unlink(name)
        self.send(M.CacheInvalid(name, reason))
        return False

    def keep_in_memory(self, name: str, data: bytes) -> None:
        """Cache ``data`` as file ``name`` in memory, or on disk once MEMORY_LIMIT is used up.

        A temp of a few bytes (most graph nodes' results) would otherwise cost a file creation,
        which on a busy ext4 disk takes up to a millisecond: more than the rest of a call. A task
        that needs it in a sandbox gets it written out then (``_spill``); peers and the manager are
        served from memory.
        """
        self.unlink(name)
        if len(data) <= MEMORY_FILE_MAX and self.memory_bytes + len(data) <= MEMORY_LIMIT:
            self.memory[name] = data
            self.memory_bytes += len(data)
            return
        with open(self.path(name), "wb") as fh:
            fh.write(data)

    def adopt_small_output(self, name: str, src: str, level: int) -> bool:
        """Move a task's small output file ``src`` into memory as cache entry ``name``; False (and
        ``src`` untouched) when it is not a plain small file, its level outlives the workflow, or
        the memory budget is used up.

        A chain's link reads its input from the previous link's output: from memory it is written
        into the next sandbox in one open and write, where a file in the cache was moved, stamped,
        copied and checked (``seal``, ``shutil.copyfile``, ``chmod``). Only a regular file with one
        link and the plain mode qualifies: written back from memory it is the same file.
        """
        if level > C.VINE_CACHE_LEVEL_WORKFLOW:
            return False  # worker- and forever-level files stay on disk (as transfers.py keeps them)
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False  # a symlink, or unreadable: moved as a file
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or stat.S_IMODE(st.st_mode) != self.plain_mode
                    or st.st_size > OUTPUT_MEMORY_MAX or self.memory_bytes + st.st_size > MEMORY_LIMIT):
                return False
            data = os.read(fd, st.st_size + 1)
        finally:
            os.close(fd)
        if len(data) != st.st_size:
            return False  # still changing (a process the task left behind): moved as a file
        os.unlink(src)
        self.unlink(name)
        self.memory[name] = data
        self.memory_bytes += len(data)
        return True

    def spill(self, name: str) -> None:
        """Write an in-memory cached file to the cache directory (it stays cached, now on disk)."""
        data = self.memory.get(name)
        if data is None:
            return
        with open(self.path(name), "wb") as fh:
            fh.write(data)
        del self.memory[name]
        self.memory_bytes -= len(data)

    async def gather(self, spec: M.TaskDefinition) -> bool:
        """Wait for every input and environment of ``spec`` to be in the cache; False if one did not arrive."""
        ok = True
        for name in itertools.chain((i.name for i in spec.inputs), spec.environments):
            if name in self.entries:
                continue
            fut = self.pending.get(name)
            # Shielded: the future is shared by every task waiting for this file, and a task killed
            # while it waits must not cancel the file's arrival for the others (they would then end
            # as if killed too, and never be reported).
            if fut is None or not await asyncio.shield(fut):
                ok = False
        return ok


    def expect(self, name: str) -> asyncio.Future[bool]:
        fut = self.pending.get(name)
        if fut is None:
            fut = self.pending[name] = asyncio.get_running_loop().create_future()
        return fut


def seal(path: str) -> str:
    """Set the modification times of the files at ``path`` to a mark in the past and return its stamp.

    A write by a task then moves a file's time to "now", away from the mark, even when it keeps the
    size and lands within the file system's timestamp granularity of the file's arrival.
    """
    mark = (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000
    if os.path.isdir(path) and not os.path.islink(path):
        for root, _dirs, files in os.walk(path):
            for f in files:
                p = os.path.join(root, f)
                if not os.path.islink(p):
                    os.utime(p, ns=(mark, mark))
    elif not os.path.islink(path):
        os.utime(path, ns=(mark, mark))
    return entry_stamp(path)


def entry_stamp(path: str) -> str:
    """What a cache entry looks like to stat: size, modification time and inode of each file, the
    names in each directory, the target of each symlink (a directory's as a digest)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"l:{os.readlink(path)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"f:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    h = hashlib.blake2b(digest_size=16)
    for root, dirs, files in os.walk(path):
        dirs.sort()
        h.update(f"d {os.path.relpath(root, path)}\0".encode())
        for f in sorted(files):
            h.update(f"{f} {entry_stamp(os.path.join(root, f))}\0".encode())
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):  # os.walk lists symlinks to directories with the directories
                h.update(f"{d} {entry_stamp(os.path.join(root, d))}\0".encode())
    return f"d:{h.hexdigest()}"
