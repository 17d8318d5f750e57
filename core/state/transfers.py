"""Where each input comes from, and how many copies are moving: the scheduler's data plane.

A file already in the cluster is fetched from a worker holding it (a peer), at most
``worker-source-max-transfers`` at a time per source; a URL from its origin at most
``file-source-max-transfers`` at a time per origin; anything else from the manager. A shareable file
on its way into the cluster is not sent again: the next workers wait and fetch it from the first
holder, so a popular file spreads as a tree. Mixed into :class:`core.state.scheduler.SchedulerState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import constants as C
from .events import FetchPeer, FetchUrl, Instruction, RemoveWorker, RunMinitask, SendFile, WorkerLost
from .records import FileRecord, WorkerRecord
from .spec import FileSpec


class TransferPlanner:
    """Choosing sources, staging inputs, counting transfers in flight, keeping temp replicas."""

    if TYPE_CHECKING:  # state owned by SchedulerState, declared for the type checker
        workers: dict[str, WorkerRecord]
        files: dict[str, FileRecord]
        tuning: dict[str, float]
        stats: dict[str, float]
        transfers: dict[tuple[str, str], str]
        url_active: dict[str, int]
        manager_sending: dict[str, int]
        _now: float
        _schedule_needed: bool

        def _file(self, f: FileSpec) -> FileRecord: ...
        def _on_worker_lost(self, ev: WorkerLost, out: list[Instruction]) -> None: ...

    def _source(self, f: FileSpec, w: WorkerRecord) -> str | None:
        """Where worker ``w`` would get ``f`` now: "have", "manager", "url:<origin>", "minitask", a
        peer worker id; or None when every source is busy (the task tries another worker or waits).

        A shareable file already on its way into the cluster is not sent again: the next workers
        fetch it from the first holder, at most ``worker-source-max-transfers`` at a time per
        source, so a popular file spreads as a tree.
        """
        name = f.cache_name
        if name in w.replicas:
            return "have"
        frec = self.files.get(name)
        if f.kind == "minitask":
            assert f.minitask is not None
            for m in f.minitask.inputs:
                if self._source(m.file, w) is None:
                    return None
            return "minitask"
        shareable = f.kind == "temp" or (
            bool(self.tuning["peer-transfers"]) and f.peer_transfer and f.level > C.VINE_CACHE_LEVEL_TASK
        )
        # Wait for a peer copy only when a holder will be able to serve it soon (it is receiving
        # the file, or serving others up to its limit); a holder that just failed is skipped.
        busy = False
        if shareable and frec is not None:
            limit = self.tuning["worker-source-max-transfers"]
            quiet = self._now - self.tuning["transient-error-interval"]
            for wid, state in frec.replicas.items():
                src = self.workers.get(wid)
                if src is None or src is w or not src.transfer_addr:
                    continue
                if state == "creating":
                    busy = True
                elif src.xfer_failed_at < quiet:
                    if src.outgoing < limit:
                        return wid
                    busy = True
        if f.kind == "temp":
            return None
        if f.kind == "url":
            origin = url_origin(f.source)
            if self.url_active[origin] < self.tuning["file-source-max-transfers"] and not busy:
                return f"url:{origin}"
            return None
        if busy:
            return None  # being sent to (or served by) another worker: fetch from it when it is ready
        return "manager"

    def _stage(self, f: FileSpec, w: WorkerRecord, out: list[Instruction], placing: bool = False) -> None:
        """Instruct worker ``w`` to obtain ``f`` from the source :meth:`_source` picked.

        ``placing``: a task that needs ``f`` has just been placed on ``w``, so ``f`` must be on its
        way there even when every source is at its transfer limit (a task with many inputs from one
        peer uses up the limit with its own first inputs): the least busy holder is used anyway.
        """
        source = self._source(f, w)
        name = f.cache_name
        if source is None and placing:
            source = self._least_busy_holder(f, w)
        if source == "have" or source is None:
            return
        frec = self._file(f)
        if source == "minitask":
            assert f.minitask is not None
            for m in f.minitask.inputs:
                self._stage(m.file, w, out)
            out.append(RunMinitask(w.id, name))
        elif source.startswith("url:"):
            self._start_transfer(w, name, source)
            out.append(FetchUrl(w.id, name))
        elif source == "manager":
            self._start_transfer(w, name, source)
            out.append(SendFile(w.id, name))
        else:
            self._start_transfer(w, name, source)
            out.append(FetchPeer(w.id, name, source))
        w.replicas[name] = "creating"
        frec.replicas[w.id] = "creating"

    def _least_busy_holder(self, f: FileSpec, w: WorkerRecord) -> str | None:
        frec = self.files.get(f.cache_name)
        if frec is None:
            return None
        holders = [self.workers[wid] for wid, st in frec.replicas.items()
                   if st == "ready" and wid in self.workers and wid != w.id and self.workers[wid].transfer_addr]
        if holders:
            return min(holders, key=lambda h: (h.xfer_failed_at, h.outgoing)).id
        if f.kind == "url":
            return f"url:{url_origin(f.source)}"
        if f.kind in ("file", "buffer"):
            return "manager"
        return None  # a temp with no ready copy elsewhere, or a mini-task: wait as before

    def _start_transfer(self, dest: WorkerRecord, name: str, source: str) -> None:
        self.transfers[(dest.id, name)] = source
        if source == "manager":
            self.manager_sending[name] += 1
        elif source.startswith("url:"):
            self.url_active[source[4:]] += 1
        else:
            self.workers[source].outgoing += 1

    def _end_transfer(self, dest: str, name: str, out: list[Instruction], size: int = -1, failed: bool = False) -> None:
        source = self.transfers.pop((dest, name), None)
        if source is None:
            return
        if source == "manager":
            self.manager_sending[name] -= 1
        elif source.startswith("url:"):
            self.url_active[source[4:]] -= 1
        else:
            src = self.workers.get(source)
            if src is not None:
                src.outgoing -= 1
                if failed:
                    self._source_failed(src, out)
                elif size >= 0:
                    src.xfer_good += 1
            if size >= 0 and not failed:
                self.stats["peer_transfers"] += 1
                self.stats["bytes_peer"] += size
        self._schedule_needed = True

    def _source_failed(self, src: WorkerRecord, out: list[Instruction]) -> None:
        """A copy from ``src`` broke: skip it as a source for a while; drop it if it keeps failing."""
        src.xfer_failed_at = self._now
        src.xfer_bad += 1
        if src.xfer_bad >= 5 and src.xfer_bad >= src.xfer_good:
            out.append(RemoveWorker(src.id, "XFER_ERRORS"))
            self._on_worker_lost(WorkerLost(self._now, src.id, "XFER_ERRORS"), out)

    def _replicate(self, frec: FileRecord, out: list[Instruction]) -> None:
        """Keep ``temp-replica-count`` copies of a temp, so losing one worker costs no recomputation."""
        want = int(self.tuning["temp-replica-count"])
        have = len(frec.replicas)
        if want <= have:
            return
        holders = [self.workers[wid] for wid, st in frec.replicas.items() if st == "ready" and wid in self.workers]
        targets = sorted(
            (w for w in self.workers.values() if w.id not in frec.replicas and w.transfer_addr),
            key=lambda w: -(max(w.total.disk, 0) - max(w.committed.disk, 0) - w.cache_bytes / 1e6),
        )
        for dest in targets[: want - have]:
            src = min((h for h in holders if h.transfer_addr), key=lambda h: h.outgoing, default=None)
            if src is None:
                return
            self._start_transfer(dest, frec.spec.cache_name, src.id)
            out.append(FetchPeer(dest.id, frec.spec.cache_name, src.id))
            dest.replicas[frec.spec.cache_name] = "creating"
            frec.replicas[dest.id] = "creating"


def url_origin(url: str) -> str:
    """scheme://host:port of a URL: transfers are limited per origin, compared by value."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
