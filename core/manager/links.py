"""The manager's side of each connection: serving workers and status clients in the I/O thread.

Frames from a worker become scheduler events (``complete`` -> TaskFinished, ``cache_update`` ->
CacheUpdated, ...); returned outputs and fetched files are written as they stream in. Instructions
for a worker are sent in order: files always precede the tasks that use them. A member of
:class:`core.manager.Manager`; everything here runs in its I/O thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .. import constants as C
from ..api.files import File
from ..errors import AuthenticationError, ProtocolError, RemoteProtocolError, TransferError
from ..state.libraries import StartLibrary
from ..state.resources import Resources
from ..state.scheduler import (
    CacheInvalid,
    CacheUpdated,
    Dispatch,
    Event,
    FetchPeer,
    FetchUrl,
    Instruction,
    Keepalive,
    Kill,
    RunMinitask,
    SendFile,
    TaskFinished,
    Unlink,
    WorkerHeard,
    WorkerJoined,
    WorkerLost,
)
from ..wire import messages as M
from ..wire.connection import Connection, WriteBatch, send_bytes, send_path, server_handshake
from ..wire.preauth import leave_preauth_gate
from ..wire.protocol import Frame
from ..wire.receive import DiscardingReceiver, FileReceiver, IncomingStreams, MemoryReceiver, StreamReceiver
from .definitions import minitask_definition, monitor_options, output_refs  # noqa: F401 - also imported from here
from .output_targets import OutputWriter

if TYPE_CHECKING:
    from ..api.task import Task
    from ..state.scheduler import SchedulerState
    from .categories import CategorySettings
    from .libraries import ManagerLibraries
    from .logs import RunLogs
    from .metrics import ManagerMetrics
    from .settings import ManagerSettings

MEMORY_RECEIVE_MAX = 1 << 20  # a returned buffer or fetched file up to this size is received in memory, not staged
# No single stream (or watched output) from a worker may exceed twice the disk it reported, plus this:
# twice, because a worker reports a share of its free disk (--disk-percent, 50 by default) and a
# directory travels as a tar with a header per file.
STREAM_SLACK = 16 << 20
MAX_CACHE_ENTRIES = 2_000_000  # a worker's listed cache (its pages are held until it joins: bounded)
STDOUT_STORAGE = 1 << 30  # tune max-task-stdout-storage: the most bytes of a task's stdout kept (TaskVine's 1 GB)
_STAGING_IDS = itertools.count(1)  # names of staged streams: chosen here, never taken from the peer

log = logging.getLogger("core.manager")

@dataclass
class WorkerLink:
    """The I/O thread's view of one connected worker."""

    id: str
    conn: Connection
    hostname: str
    addrport: str
    transfer_addr: str | None
    outbox: asyncio.Queue[Instruction | None] = field(default_factory=asyncio.Queue)
    receivers: IncomingStreams = field(default_factory=IncomingStreams)  # its streams in progress
    # What this worker was asked to send, and nothing else is accepted from it (see _begin_receive):
    expected_outputs: dict[tuple[int, str], File] = field(default_factory=dict)  # (task id, cache name) -> output
    expected_fetches: dict[int, str] = field(default_factory=dict)  # fetch request id -> cache name
    watched: dict[tuple[int, str], tuple[File, int]] = field(default_factory=dict)  # (task, name) -> (file, bytes so far)
    sent_back: dict[int, list[str]] = field(default_factory=dict)  # task id -> the names of its outputs in the two above
    incoming: dict[str, tuple[File | None, int | None]] = field(default_factory=dict)  # streams begun: (output file, fetch id)
    expected_stdout: dict[int, int] = field(default_factory=dict)  # task id -> most bytes of its stdout kept (the tune)
    stdout_streams: dict[str, int] = field(default_factory=dict)  # stream name -> task id, for a stdout streamed back
    stdout_received: dict[int, bytes | None] = field(default_factory=dict)  # task id -> its streamed stdout (None: not kept)
    stream_limit: int = STREAM_SLACK  # bytes (see STREAM_SLACK)
    sender: asyncio.Task[None] | None = None
    idle: bool = True  # the sender coroutine is not in the middle of an instruction
    batch_job_id: str | None = None  # the batch job the worker says it runs in (for a factory's scale-down)
    disconnect_reason: str | None = None  # the transactions log's reason when the manager ends the link on purpose
    heard_at: float = 0.0  # when its last frame arrived
    heard_told: float = 0.0  # the last heard_at the scheduler was told of (a WorkerHeard event)


class WorkerLinks:
    """Connections to workers and status clients (a member of Manager, run in its I/O thread).

    It owns the fetches in flight; the rest it shares with the manager, which lends it at
    construction: the settings, the scheduler state (read here; changed through ``apply``), the
    logs and metrics, the links by worker id, the counters, the user's tasks and files by id and
    cache name, the staging directory, the library and category members, and the manager's
    ``apply`` (events into the state), ``call`` and ``collect_stats``.
    """

    def __init__(self, settings: ManagerSettings, state: SchedulerState, logs: RunLogs, metrics: ManagerMetrics,
                 links: dict[str, WorkerLink], counters: dict[str, float], tasks: dict[int, Task], files: dict[str, File],
                 staging: str, libraries: ManagerLibraries, categories: CategorySettings, *,
                 apply: Callable[..., None], call: Callable[..., Any], collect_stats: Callable[[], dict[str, float]],
                 lineage: dict[str, Task] | None = None, frames_answered: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._state = state
        self._logs = logs
        self._metrics = metrics
        self._links = links
        self._counters = counters
        self._tasks = tasks
        self._files = files
        self._staging = staging
        self._libraries = libraries
        self._categories = categories
        self._apply = apply
        self._call = call
        self._collect_stats = collect_stats
        self._lineage = lineage if lineage is not None else {}  # temp name -> its producer (recovery re-runs)
        self._fetches: dict[int, concurrent.futures.Future[bytes]] = {}  # fetch request id -> the waiting caller
        self._fetch_ids = iter(range(1, 1 << 62))
        self._write_batch: WriteBatch | None = None  # made in the loop, at the first connection
        self._frames_answered = frames_answered  # after the answers to a read's frames are written (wakes wait())
        # The ends of tasks read in one socket read, applied to the state together when the read's
        # frames are handled (see _defer_finish); the task ids among them.
        self._finished: list[Event] = []
        self._finished_ids: set[int] = set()

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        if self._write_batch is None:
            self._write_batch = WriteBatch(asyncio.get_running_loop())
        conn.write_batch = self._write_batch  # one write per connection per loop turn, all in one callback
        timeout = self._state.tuning.get("handshake-timeout", 30)
        self._counters["workers_init"] += 1  # connected, not yet through the handshake (performance log)
        initializing = True
        try:
            hello = await server_handshake(conn, self._settings.password, timeout)
            self._counters["workers_init"] -= 1
            initializing = False
            role = hello.message.role if isinstance(hello.message, M.Hello) else None
            if role == "status":
                await self._serve_status(conn, hello)
                return
            if role != "worker":
                raise ProtocolError(f"unknown role {role!r} in hello")
            ready = await conn.expect("ready", timeout)
            await self._serve_worker(conn, ready)
        except AuthenticationError as exc:
            self._logs.debug(f"rejected {conn.peer}: {exc}")
            log.warning("%s", exc)
        except asyncio.TimeoutError:
            self._logs.debug(f"disconnecting {conn.peer}: no handshake within {timeout}s")
        except (ProtocolError, TransferError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A malformed hello/ready (e.g. resources that are not an object) drops that peer only.
            self._logs.debug(f"disconnecting {conn.peer}: {type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            pass
        finally:
            if initializing:
                self._counters["workers_init"] -= 1
            conn.close()

    async def _serve_status(self, conn: Connection, hello: Frame) -> None:
        request = (await conn.expect("status", 10)).message
        assert isinstance(request, M.Status)  # expect() checked the type
        what = request.what
        pages = status_pages(self.status_local(what))
        for n, page in enumerate(pages, 1):
            conn.send(M.StatusReply(page, more=n < len(pages)))
            await conn.drain()  # one page buffered at a time

    def status_local(self, what: str) -> Any:
        s = self._collect_stats()
        if what == "manager":
            return [{"project": self._settings.name, "port": self._settings.port, "tasks_waiting": s["tasks_waiting"], "tasks_running": s["tasks_running"],
                     "tasks_done": s.get("tasks_done", 0), "workers": s["workers_connected"], "hungry": self._state.hungry(),
                     "tasks_submitted": s.get("tasks_submitted", 0), "total_cores": s["total_cores"],
                     "tasks_left": 0, **self._waiting_requests()}]
        if what == "workers":
            return [{"id": w.id, "hostname": w.hostname, "addrport": w.addrport, "tasks_running": len(w.tasks),
                     "batch_job_id": lk.batch_job_id if (lk := self._links.get(w.id)) else None,
                     **{f"total_{k}": v for k, v in w.total.to_dict().items()}} for w in self._state.workers.values()]
        if what == "tasks":
            return [{"task_id": r.id, "state": r.state, "command": r.spec.command, "worker": r.worker} for r in self._state.tasks.values()]
        if what == "categories":
            return self._categories.status()  # core/manager/categories.py
        raise ValueError(f"unknown status request {what!r}; use manager, workers, tasks or categories")

    def _waiting_requests(self) -> dict[str, float]:
        """Resources requested by waiting tasks (unset counts 1 core), so a factory can size workers."""
        totals = {f"tasks_total_{r}": 0.0 for r in ("cores", "memory", "disk", "gpus")}
        recovery = self._state.recovery_shapes  # (hidden recovery copies are not counted)
        for box, n in self._state.waiting_shapes.items():  # the distinct requests, kept by the scheduler
            n -= recovery.get(box, 0)
            for r in ("cores", "memory", "disk", "gpus"):
                v = getattr(box, r)
                totals[f"tasks_total_{r}"] += n * (v if v > 0 else (1.0 if r == "cores" else 0.0))
        return totals

    async def _serve_worker(self, conn: Connection, ready_frame: Frame) -> None:
        ready = ready_frame.message
        assert isinstance(ready, M.Ready)  # expect() checked the type
        wid = ready.worker_id or f"worker-{id(conn):x}"
        if wid in self._links:
            # Replacing the live link would let this connection's end remove the other's record.
            raise ProtocolError(f"worker id {wid} is already connected from {self._links[wid].addrport}; "
                                "refusing a second connection with the same id (it may retry once the first is gone)")
        host = conn.peer.rsplit(":", 1)[0]
        tport = ready.transfer_port
        link = WorkerLink(wid, conn, ready.hostname, conn.peer, f"{host}:{tport}" if tport else None)
        job = ready.batch_job_id
        link.batch_job_id = job if isinstance(job, str) and 0 < len(job) <= 128 else None
        res = _reported_resources(ready.resources)
        cache = {k: _byte_count(v, f"cache entry {k!r}") for k, v in ready.cache.items()}
        more = ready.cache_more
        while more:  # the rest of a big cache, before the worker is known (see core.wire.protocol.pages_of)
            page = (await conn.expect("cache_page", self._state.tuning.get("handshake-timeout", 30))).message
            assert isinstance(page, M.CachePage)  # expect() checked the type, decoding the fields'
            cache.update((k, _byte_count(v, f"cache entry {k!r}")) for k, v in page.entries.items())
            if len(cache) > MAX_CACHE_ENTRIES:
                raise RemoteProtocolError(f"listed over {MAX_CACHE_ENTRIES} cache entries")
            more = page.more
        link.stream_limit = _stream_limit(res)
        leave_preauth_gate()  # a worker now, no longer counted among the strangers
        self._links[wid] = link
        self._logs.worker_connected(wid, conn.peer, res.to_dict())
        self._logs.debug_worker_joined(link.hostname, conn.peer, wid, res.to_dict(), tport or None, cache, self._files)
        self._logs.debug(f"worker {wid} connected from {conn.peer} ({link.hostname}) with {res.to_dict()}")
        link.sender = asyncio.create_task(self._sender(link))
        reason = "UNKNOWN"
        try:
            self._apply(WorkerJoined(time.time(), wid, link.hostname, conn.peer, res, frozenset(ready.features),
                                     cache, link.transfer_addr, ready.end_time))
            # Each frame is handled as its bytes arrive, in the socket's read callback (no coroutine
            # wake-up and loop turn per read): this returns at the worker's end, or raises what ended it.
            await conn.deliver_frames(lambda frame: self._on_frame(link, frame), self._answered)
        except (ProtocolError, TransferError, ValueError, KeyError, TypeError) as exc:
            reason = "FAILURE"
            self._logs.debug(f"worker {wid} ({conn.peer}) sent a bad message, disconnecting: {type(exc).__name__}: {exc}")
            log.warning("disconnecting worker %s (%s, %s): %s: %s", wid, link.hostname, conn.peer, type(exc).__name__, exc)
        except OSError as exc:
            self._logs.debug(f"worker {wid} connection error: {exc}")
        finally:
            link.outbox.put_nowait(None)
            if link.sender is not None:
                link.sender.cancel()
            link.receivers.abort_all()
            self._links.pop(wid, None)
            reason = link.disconnect_reason or reason  # set when the manager removed it on purpose
            self._logs.worker_disconnected(wid, reason)
            self._logs.debug_worker_left(link.hostname, link.addrport, wid)
            self._logs.debug(f"worker {wid} disconnected ({reason})")
            # The fetches this worker was asked for and had not answered, or was still streaming:
            for rid in [*link.expected_fetches, *(r for _f, r in link.incoming.values() if r is not None)]:
                fut = self._fetches.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(TransferError(f"worker {wid} disconnected during fetch"))
            self._counters["bytes_sent"] += conn.bytes_sent
            self._counters["bytes_received"] += conn.bytes_received
            if self._finished:
                self._apply_finished()  # what its last read ended, before the worker's loss
            self._apply(WorkerLost(time.time(), wid, reason))

    def _answered(self) -> None:
        """The frames of a read are handled: the tasks they ended go to the state in one step, their
        answers (the next tasks) are written first, then the user's threads waiting for the tasks
        that finished are woken, in this loop turn."""
        if self._finished:
            self._apply_finished()
        if self._write_batch is not None:
            self._write_batch.flush()
        if self._frames_answered is not None:
            self._frames_answered()

    def _on_frame(self, link: WorkerLink, frame: Frame) -> None:
        link.heard_at = time.time()  # told to the scheduler at the next tick (Manager._heard_events)
        # Time of the handling, less the scheduling it set off (time_scheduling counts that).
        # Wall-clock, as TaskVine's time_status_msgs is: time.thread_time() is a system call
        # on this VM (3.2 us, and a point where the thread gets descheduled), twice per frame.
        busy = self._metrics.busy
        began, scheduling = time.perf_counter(), busy["scheduling"]
        self._on_worker_frame(link, frame)
        self._counters["time_status_msgs"] += (time.perf_counter() - began) * 1e6 - (busy["scheduling"] - scheduling)

    def _defer_finish(self, events: list[Event], task_id: int) -> None:
        """Hold a task's end (and the outputs it cached) until the rest of the read's frames are
        handled: a worker answers with a run of ``complete`` frames at once (one per call its
        library instances finished), and the state then takes them in one step, with one
        scheduling pass for all of them instead of one per task."""
        self._finished += events
        self._finished_ids.add(task_id)

    def _apply_finished(self) -> None:
        events, self._finished, self._finished_ids = self._finished, [], set()
        self._apply(*events)

    def _on_worker_frame(self, link: WorkerLink, frame: Frame) -> None:
        msg = frame.message  # decoded and checked here: a bad field ends this worker's connection
        now = time.time()
        if self._finished and (type(msg) is not M.Complete or msg.id < 0 or msg.id in self._finished_ids):
            # Any other frame, a library instance's end, or a second end of the same task: after
            # the ends held so far, in the order the worker sent them.
            self._apply_finished()
        if isinstance(msg, M.Complete):
            self._on_complete(link, frame)
        elif isinstance(msg, M.CacheUpdate):
            name, size = msg.name, msg.size
            self._logs.cache_update(link.id, name, size)
            self._logs.debug_cache_update(link.hostname, link.addrport, link.id, name, size, self._files.get(name))
            self._apply(CacheUpdated(now, link.id, name, size))
        elif isinstance(msg, M.CacheInvalid):
            rid = msg.request
            if rid is not None and link.expected_fetches.pop(rid, None) is not None and rid in self._fetches:
                self._fetches.pop(rid).set_exception(TransferError(f"worker {link.id} could not send {msg.name}: {msg.reason}"))
                return
            self._logs.debug_cache_invalid(link.hostname, link.addrport, link.id, msg.name, msg.reason)
            self._logs.debug(f"worker {link.id}: {msg.name} invalid: {msg.reason}")
            self._apply(CacheInvalid(now, link.id, msg.name, msg.reason))
        elif isinstance(msg, M.Alive):
            self._apply(WorkerHeard(now, link.id))
        elif isinstance(msg, M.FileBegin):
            self._begin_receive(link, frame)
        elif isinstance(msg, M.FileChunk):
            try:
                link.receivers.chunk(frame)
            except OSError as exc:  # e.g. ENOSPC on the manager's disk: drop the rest of this stream only
                link.receivers.refuse(msg.name, f"the manager cannot write {msg.name}: {exc.strerror or exc}")
        elif isinstance(msg, M.FileEnd):
            self._end_receive(link, frame)
        elif isinstance(msg, M.Watch):
            self._on_watch(link, frame)
        elif isinstance(msg, M.IdleDisconnecting):
            link.disconnect_reason = "IDLE_OUT"  # its connection ends next
            self._counters["workers_idled_out"] += 1
        else:
            raise ProtocolError(f"unexpected message {msg.TYPE!r} from a worker")

    def _begin_receive(self, link: WorkerLink, frame: Frame) -> None:
        """Start receiving a stream, if it is one the manager asked *this* worker for.

        Accepted: an output of a task dispatched to this worker (``task`` names it), or the answer
        to a fetch sent to it (``request``); each once. Where it goes is chosen here (the declared
        output's path, memory, or a staging name of our own), never from the peer's name, and its
        announced size is bounded by ``link.stream_limit``. Anything else ends the connection.
        """
        begin = frame.message
        assert isinstance(begin, M.FileBegin)  # dispatched by type; its size is a byte count (decoded)
        name, size = begin.name, begin.size
        if name in link.receivers:
            raise RemoteProtocolError(f"began sending {name!r} again in the middle of sending it")
        rid = begin.request
        f: File | None = None
        if begin.stdout:
            self._begin_stdout(link, frame, name, size)
            return
        if rid is not None:
            if link.expected_fetches.get(rid) != name:
                raise RemoteProtocolError(f"tried to send {name!r} as the answer to fetch {rid!r}, which asked it for "
                                          f"{link.expected_fetches.get(rid)!r}")
        else:
            tid = begin.task
            f = link.expected_outputs.get((tid, name)) if tid is not None else None
            if f is None:
                raise RemoteProtocolError(f"tried to write {name!r} (as output of task {tid!r}), which is not "
                                          "an output of a task this worker was given")
        if size > link.stream_limit:
            raise RemoteProtocolError(f"announced {size} bytes for {name!r}, over the {link.stream_limit} bytes a worker "
                                      "reporting its disk can send")
        if rid is not None:
            del link.expected_fetches[rid]
        else:
            del link.expected_outputs[(tid, name)]
        if f is not None and f.kind == "file":
            receiver: StreamReceiver = OutputWriter(frame, f.source())  # never destroys a directory
        elif not begin.dir and size <= MEMORY_RECEIVE_MAX:
            receiver = MemoryReceiver(frame)  # a returned buffer or a fetch: wanted as bytes
        else:
            try:
                receiver = FileReceiver(frame, os.path.join(self._staging, "outputs", f"stream-{next(_STAGING_IDS)}"))
            except OSError as exc:  # out of descriptors or disk here: this stream's failure, not the worker's
                receiver = DiscardingReceiver(frame, f"the manager cannot stage {name}: {exc.strerror or exc}")
        link.receivers.begin(receiver)
        link.incoming[name] = (f, rid)
        self._logs.receive_started(link.id, name)

    def _begin_stdout(self, link: WorkerLink, frame: Frame, name: str, size: int) -> None:
        """A task's stdout too big to travel in its ``complete`` message: once per dispatch, up to the
        tune max-task-stdout-storage, kept in memory as TaskVine does (staged on disk while it arrives)."""
        begin = frame.message
        assert isinstance(begin, M.FileBegin)  # see _begin_receive
        tid = begin.task
        limit = link.expected_stdout.pop(tid, None) if tid is not None else None
        if limit is None:
            raise RemoteProtocolError(f"sent stdout {name!r} for task {tid!r}, which it is not running (or sent it twice)")
        if size > limit:
            raise RemoteProtocolError(f"sent {size} bytes of stdout for task {tid}, over the {limit} asked for")
        receiver: StreamReceiver
        if size <= MEMORY_RECEIVE_MAX:
            receiver = MemoryReceiver(frame)
        else:
            try:
                receiver = FileReceiver(frame, os.path.join(self._staging, "outputs", f"stream-{next(_STAGING_IDS)}"))
            except OSError as exc:
                receiver = DiscardingReceiver(frame, f"the manager cannot stage the stdout of task {tid}: {exc.strerror or exc}")
        link.receivers.begin(receiver)
        link.stdout_streams[name] = tid

    def _end_stdout(self, link: WorkerLink, r: StreamReceiver) -> None:
        tid = link.stdout_streams.pop(r.name)
        data: bytes | None = None
        try:
            r.finish()
            if isinstance(r, FileReceiver):
                with open(r.target, "rb") as fh:
                    data = fh.read()
                os.unlink(r.target)
            elif isinstance(r, MemoryReceiver):
                data = r.data
        except OSError as exc:  # the task ends "stdout missing" (see _on_complete), the worker stays
            r.abort()
            log.warning("task %s: the manager could not keep its stdout: %s", tid, exc)
        if isinstance(r, DiscardingReceiver):
            log.warning("task %s: %s", tid, r.refused)
        link.stdout_received[tid] = data

    def _end_receive(self, link: WorkerLink, frame: Frame) -> None:
        r = link.receivers.end(str(frame["name"]))
        if r.name in link.stdout_streams:
            self._end_stdout(link, r)
            return
        f, rid = link.incoming.pop(r.name)
        try:
            size = r.finish()
            if isinstance(r, FileReceiver):
                with open(r.target, "rb") as fh:
                    data = fh.read()
                os.unlink(r.target)
        except OSError as exc:  # a local failure (descriptors, disk): the stream's task or fetch fails
            r.abort()
            r = DiscardingReceiver.instead_of(r, f"the manager cannot write {r.name}: {exc.strerror or exc}")
            size = r.finish()
        self._logs.transfer(link.id, "OUTPUT", r.name, size, 0, 0)
        if isinstance(r, DiscardingReceiver) and rid is not None:
            fut = self._fetches.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(TransferError(r.refused or f"the manager could not keep {r.name}"))
            return
        if isinstance(r, (OutputWriter, DiscardingReceiver)) and r.refused is not None:
            self._output_refused(link, r)
        if (f is not None and f.kind == "file") or isinstance(r, DiscardingReceiver):
            return
        if isinstance(r, MemoryReceiver):
            data = r.data
        if rid is not None:
            fut = self._fetches.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        elif f is not None and f.kind == "buffer":
            f.set_buffer_data(data)

    def _complete_result(self, link: WorkerLink, msg: M.Complete, payload: bytes) -> bytes:
        """Take the result a ``complete`` carries ahead of its stdout (``Complete.result_name``) as its
        stream would have been taken: only an output this worker was asked to send back for this
        task, once; a buffer keeps the bytes in memory, a declared file is written at its path (by
        the rules of core.manager.output_targets). Returns the rest of the payload: the stdout."""
        tid, name, size = msg.id, msg.result_name, msg.result_size
        assert name is not None  # the caller looked
        if size > len(payload):
            raise RemoteProtocolError(f"announced {size} bytes of {name!r} in a complete of task {tid} that carries "
                                      f"{len(payload)} bytes")
        f = link.expected_outputs.pop((tid, name), None)
        if f is None:
            raise RemoteProtocolError(f"sent {name!r} inside the complete of task {tid}, which is not an output of a "
                                      "task this worker was given (or was sent already)")
        data = payload[:size]
        self._logs.transfer(link.id, "OUTPUT", name, size, 0, 0)
        if f.kind == "buffer":
            f.set_buffer_data(data)
        elif f.kind == "file":
            writer = OutputWriter(Frame(M.FileBegin(name, size, mode=0o644, task=tid).to_header()), f.source())
            if writer.refused is None:
                writer.chunk(Frame({"type": "file_chunk", "name": name}, data))
                writer.finish()
            if writer.refused is not None:
                self._output_refused(link, writer)
        return payload[size:] if size else payload

    def _on_watch(self, link: WorkerLink, frame: Frame) -> None:
        """Append a watched output's new bytes, only from the worker running that task, only where
        the previous piece ended (or before: the file may have been rewritten), within the size bound."""
        watch = frame.message
        assert isinstance(watch, M.Watch)  # dispatched by type: id and offset are integers (decoded)
        tid, name, offset = watch.id, watch.name, watch.offset
        watched = link.watched.get((tid, name))
        if watched is None:
            raise RemoteProtocolError(f"sent watch data for {name!r} of task {tid!r}, which it was not asked to watch")
        f, written = watched
        if not 0 <= offset <= written:
            raise RemoteProtocolError(f"sent watch data for {name!r} at offset {offset!r}, but only {written} bytes were sent so far")
        end = offset + len(frame.payload)
        if end > link.stream_limit:
            raise RemoteProtocolError(f"grew watched {name!r} to {end} bytes, over the {link.stream_limit} bytes a worker "
                                      "reporting its disk can send")
        link.watched[(tid, name)] = (f, end)
        task = self._tasks.get(tid)
        if task is not None and task._output_refused is not None:
            return  # an earlier piece could not be written: the task fails, the rest is dropped
        try:
            mode = "r+b" if os.path.exists(f.source()) else "wb"
            with open(f.source(), mode) as fh:
                fh.seek(offset)
                fh.write(frame.payload)
                fh.truncate()
        except OSError as exc:  # the manager's own failure (a file in the way, descriptors, disk): that task's
            reason = f"cannot write watched output {f.source()}: {exc.strerror or exc}"
            log.warning("task %s: %s", tid, reason)
            self._logs.debug(f"task {tid} on {link.id}: output not written: {reason}")
            if task is not None:
                task._output_refused = reason

    def _forget_expected(self, link: WorkerLink, task_id: int) -> None:
        """The task ended on ``link`` (or is sent there again): its earlier outputs may no longer be sent or watched."""
        # By the task's own names (every end and every dispatch comes here: a scan of all that
        # is expected from the worker cost O(its tasks) each time).
        for name in link.sent_back.pop(task_id, ()):
            link.expected_outputs.pop((task_id, name), None)
            link.watched.pop((task_id, name), None)
        link.expected_stdout.pop(task_id, None)
        link.stdout_received.pop(task_id, None)

    def _output_refused(self, link: WorkerLink, r: OutputWriter | DiscardingReceiver) -> None:
        """An output of a task could not be written where declared: that task fails (on_complete), not the worker."""
        tid = r.header.get("task")
        log.warning("task %s: %s", tid, r.refused)
        self._logs.debug(f"task {tid} on {link.id}: output not written: {r.refused}")
        task = self._tasks.get(tid) if isinstance(tid, int) else None
        if task is not None:
            task._output_refused = r.refused

    def _on_complete(self, link: WorkerLink, frame: Frame) -> None:
        msg = frame.message
        assert isinstance(msg, M.Complete)  # dispatched by type in _on_worker_frame
        tid = msg.id
        measured_box = Resources.from_dict(msg.measured) if msg.measured else None  # the task's and the scheduler's (immutable)
        streamed = msg.stdout_streamed
        payload = frame.payload
        if msg.result_name is not None:  # a small result ahead of the stdout (before its outputs are forgotten)
            payload = self._complete_result(link, msg, payload)
        stdout = link.stdout_received.pop(tid, None) if streamed is not None else payload
        self._forget_expected(link, tid)  # its outputs were sent before this message
        task = self._tasks.get(tid)
        result, code = msg.result, msg.exit_code
        if stdout is None:  # announced as streamed, but not received (or not kept here)
            stdout = b""
            if result == C.VINE_RESULT_SUCCESS:
                result = C.VINE_RESULT_STDOUT_MISSING
        if task is not None and task._output_refused is not None and result == C.VINE_RESULT_SUCCESS:
            result = C.VINE_RESULT_OUTPUT_TRANSFER_ERROR  # see _output_refused
        if tid < 0:
            self._libraries.instance_ended(link.id, link.hostname, frame)  # library instances have negative ids
        accepted = task is not None and task._state < C.VINE_TASK_RETRIEVED and not msg.retry and result != C.VINE_RESULT_FORSAKEN
        if accepted:
            task._stdout = stdout
            task._exit_code = code
            task._hostname = link.hostname
            task._addrport = link.addrport
            start, end = msg.start, msg.end
            metrics = task.metrics
            last = metrics["time_workers_execute_last"] = (end - start) * 1e6 if start else 0
            metrics["time_workers_execute_all"] = metrics.get("time_workers_execute_all", 0) + last
            measured = msg.measured
            task._measured = measured_box or Resources()
            task._limits = dict(msg.limits)
            self._logs.task_retrieved(tid, C.result_enum_name(result), code, measured, link.id, task._limits)
        elif msg.reason:
            self._logs.debug(f"task {tid} on {link.id}: {C.result_string(result)}: {msg.reason}")
        start, end = msg.start, msg.end
        self._logs.debug_task_complete(link.hostname, link.addrport, link.id, tid, result, code, len(stdout), start, end,
                                       int(max(msg.measured.get("disk") or 0, 0)), msg.outputs,
                                       msg.cached, msg.unlinked, self._files, accepted)
        now = time.time()
        # Outputs the worker cached, then the end of the task, in one scheduling step: a consumer of
        # a temp output finds both the file and the producer's slot free on this worker.
        arrived: list[Event] = []
        for name, size in msg.cached.items():
            self._logs.cache_update(link.id, name, size)
            arrived.append(CacheUpdated(now, link.id, name, size))
        arrived.append(TaskFinished(now, link.id, tid, result, code, msg.retry, tuple(msg.unlinked),
                                    max(0.0, end - start) if start else 0.0, tuple(msg.limits), msg.missing_input, measured_box))
        self._defer_finish(arrived, tid)

    def start_fetch(self, f: File, fut: concurrent.futures.Future[bytes]) -> None:
        rec = self._state.files.get(f.cache_name)
        holders = [wid for wid, st in (rec.replicas.items() if rec else []) if st == "ready" and wid in self._links]
        if not holders:
            fut.set_exception(TransferError(f"{f!r} has no replica on any connected worker; was the task that makes it run?"))
            return
        rid = next(self._fetch_ids)
        self._fetches[rid] = fut
        self._links[holders[0]].expected_fetches[rid] = f.cache_name
        self._links[holders[0]].conn.send(M.Get(f.cache_name, request=rid))

    async def _sender(self, link: WorkerLink) -> None:
        """Carry out one worker's instructions in order, so files always precede the tasks using them."""
        try:
            while True:
                ins = await link.outbox.get()
                if ins is None:
                    return
                link.idle = False
                try:
                    await self._send_instruction(link, ins)
                except (OSError, TransferError) as exc:
                    self._logs.debug(f"sending to {link.id} failed: {exc}")
                    link.conn.close()
                    return
                finally:
                    link.idle = True
        except asyncio.CancelledError:
            pass

    async def _send_instruction(self, link: WorkerLink, ins: Instruction) -> None:
        if isinstance(ins, SendFile):
            await self._send_file(link, ins)
        else:
            self.send_message(link, ins)
        await link.conn.drain()

    def send_message(self, link: WorkerLink, ins: Instruction) -> None:  # noqa: C901 - one branch per instruction type, each a few lines
        """Every instruction but SendFile is one frame, written without waiting."""
        conn = link.conn
        if isinstance(ins, Dispatch):
            tid = ins.task_id
            task = self._tasks.get(tid)
            recovery = task is None and self._recovery_producer(tid)
            if recovery:  # a hidden recovery copy: its producer's message under the copy's id, the user's Task untouched
                task = recovery
            if task is None or (not recovery and task._state >= C.VINE_TASK_RETRIEVED):
                self._apply(TaskFinished(time.time(), link.id, tid, C.VINE_RESULT_CANCELLED))
                return
            missing = [m.file.source() for m in task.inputs if m.file.kind == "file" and not m.file.exists_locally()] if task.inputs else None
            if missing:
                self._logs.debug(f"task {tid}: input missing: {missing}")
                self._apply(TaskFinished(time.time(), link.id, tid, C.VINE_RESULT_INPUT_MISSING, -1))
                return
            self._forget_expected(link, tid)
            # Clamped: a negative tune keeps nothing, and no frame may carry an integer over 2**64.
            storage = min(max(0, int(self._state.tuning.get("max-task-stdout-storage", STDOUT_STORAGE))), 1 << 62)
            link.expected_stdout[tid] = storage
            outputs = task.outputs
            spec = task._task_spec(
                id=tid, resources=ins.allocation.to_dict(), outputs=output_refs(task) if outputs else (), stdout_limit=storage,
                queued=ins.queued, monitor=monitor_options(self._settings.monitoring) if self._settings.monitoring else None,
                library_instance=self._state.libs.instance_of(tid) if task.library_required is not None else None)
            if outputs:
                sent_back = []
                for m in outputs:
                    if m.file.kind in ("file", "buffer"):  # the outputs sent back (OutputRef.send_back)
                        link.expected_outputs[(tid, m.file.cache_name)] = m.file
                        sent_back.append(m.file.cache_name)
                        if m.watch and m.file.kind == "file":
                            link.watched[(tid, m.file.cache_name)] = (m.file, 0)
                if sent_back:
                    link.sent_back[tid] = sent_back
            if not recovery:
                task._allocated = ins.allocation
                task._state = C.VINE_TASK_RUNNING
            self._logs.task_running(tid, link.id, spec.resources)
            recovering = self._state.recovering
            recreates = [m.file.cache_name for m in outputs if recovering.get(m.file.cache_name) == tid] if recovering else ()
            self._logs.debug_task_sent(link.hostname, link.addrport, task, spec.resources, task.library_required, recreates, task_id=tid)
            conn.send(M.Task(spec))
        elif isinstance(ins, FetchUrl):
            frec = self._state.files[ins.name]
            f = frec.spec
            self._logs.debug_puturl(link.hostname, link.addrport, link.id, f.source, f.cache_name, f.level, frec.size, f.mode or 0o755)
            conn.send(M.FetchUrl(f.cache_name, f.source, f.level))
        elif isinstance(ins, FetchPeer):
            f = self._state.files[ins.name].spec
            src = self._links.get(ins.source)
            if src is None or not src.transfer_addr:
                self._apply(CacheInvalid(time.time(), link.id, f.cache_name, "peer source gone"))
                return
            self._logs.debug_puturl(link.hostname, link.addrport, link.id, f"workerip://{src.transfer_addr}/{f.cache_name}", f.cache_name,
                                    f.level, self._state.files[ins.name].size, f.mode or 0o755)
            conn.send(M.FetchPeer(f.cache_name, src.transfer_addr, f.level))
        elif isinstance(ins, RunMinitask):
            frec = self._state.files[ins.name]
            f, t = frec.spec, frec.spec.minitask
            assert t is not None
            self._logs.debug_mini_task(link.hostname, link.addrport, t.output, f.cache_name, f.level, frec.size, f.mode or 0o755)
            conn.send(M.Minitask(f.cache_name, minitask_definition(t), f.level))
        elif isinstance(ins, Kill):
            # Its expected outputs stay until the link ends or the task is sent again: the worker may
            # already be sending them (or a watch piece) when the kill arrives, and that is honest.
            self._logs.debug_kill(link.hostname, link.addrport, ins.task_id)
            conn.send(M.Kill(ins.task_id))
        elif isinstance(ins, Unlink):
            self._logs.debug_unlink(link.hostname, link.addrport, ins.name)
            conn.send(M.Unlink(ins.name))
        elif isinstance(ins, Keepalive):
            conn.send(M.Keepalive())
        elif isinstance(ins, StartLibrary):
            message = self._libraries.start_message(link.id, ins)
            if message is not None:
                conn.send(message)

    def _recovery_producer(self, record_id: int) -> Task | None:
        """The user's task a hidden recovery copy re-runs (its spec names it), found by a temp it makes."""
        rec = self._state.tasks.get(record_id)
        if rec is None or not rec.recovery:
            return None
        for m in rec.spec.outputs:
            producer = self._lineage.get(m.file.cache_name)
            if producer is not None and producer.id == rec.spec.id:
                return producer
        return None

    def _file_named(self, name: str) -> File | None:
        """A File the manager no longer lists (undeclared while a task still needed it), found among
        the inputs of the tasks it holds and of the producers kept for recovery."""
        for t in itertools.chain(self._tasks.values(), self._lineage.values()):
            for f in itertools.chain((m.file for m in t.inputs), t.environments):
                if f.cache_name == name:
                    return f
                if f.minitask is not None:
                    for m in f.minitask.inputs:
                        if m.file.cache_name == name:
                            return m.file
        return None

    async def _send_file(self, link: WorkerLink, ins: SendFile) -> None:
        conn = link.conn
        f = self._files.get(ins.name) or self._file_named(ins.name)
        if f is None:  # undeclared, and no task the manager holds uses it any more
            self._apply(CacheInvalid(time.time(), link.id, ins.name, "file undeclared"))
            return
        start = time.time()
        if f.kind == "buffer" or f.exists_locally():
            self._logs.debug_put(link.hostname, link.addrport, f.cache_name, f.level, len(f))
        if f.kind == "buffer":
            size = await send_bytes(conn, f.cache_name, f.buffer_data() or b"", mode=f.mode or 0o755, level=f.level)
        elif f.exists_locally():
            size = await send_path(conn, f.cache_name, f.source(), level=f.level)
        else:
            self._apply(CacheInvalid(time.time(), link.id, f.cache_name, "local file missing"))
            return
        self._counters["bytes_sent_files"] += size
        self._counters["files_sent"] += 1
        self._logs.transfer(link.id, "INPUT", f.cache_name, size, int((time.time() - start) * 1e6), int(start * 1e6))


STATUS_PAGE_BYTES = 256 << 10  # a status reply's rows go in frames of about this much JSON (the limit is MAX_HEADER)
STATUS_FIELD_CHARS = 4096  # a longer string in a status row (a task's command) is cut to this


def status_pages(data: Any) -> list[Any]:
    """A status reply as the pages it is sent in: one for anything but a list, else runs of rows of
    about STATUS_PAGE_BYTES each, so a reply grows with the run without outgrowing a frame."""
    if not isinstance(data, list):
        return [data]
    pages: list[list[Any]] = [[]]
    size = 0
    for row in data:
        if isinstance(row, dict):
            row = {k: v[:STATUS_FIELD_CHARS] + "..." if isinstance(v, str) and len(v) > STATUS_FIELD_CHARS else v
                   for k, v in row.items()}
        cost = len(json.dumps(row, separators=(",", ":"), default=str)) + 1
        if pages[-1] and size + cost > STATUS_PAGE_BYTES:
            pages.append([])
            size = 0
        pages[-1].append(row)
        size += cost
    return pages


def _reported_resources(reported: Any) -> Resources:
    """A worker's resource report as a box, refusing what no scheduler can use: a value that is not a
    number (a string "nan" would pass float()), or a negative amount. Non-finite numbers never get
    this far (core.wire.protocol refuses them in any frame)."""
    if not isinstance(reported, dict):
        raise RemoteProtocolError(f"reported resources {reported!r}, which is not an object")
    for name in ("cores", "memory", "disk", "gpus"):
        value = reported.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise RemoteProtocolError(f"reported {name} {value!r}, which is not a finite amount >= 0")
    return Resources.from_dict(reported)


def _byte_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RemoteProtocolError(f"reported {what} with size {value!r}, which is not a byte count")
    return value


def _stream_limit(res: Resources) -> int:
    """Bytes one stream from a worker reporting ``res`` may announce (see STREAM_SLACK)."""
    disk = res.disk if math.isfinite(res.disk) and res.disk > 0 else 0.0
    return int(2 * disk * (1 << 20)) + STREAM_SLACK
