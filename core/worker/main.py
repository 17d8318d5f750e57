"""``vine_worker``: runs tasks for a manager, in sandboxes, from a cache of immutable files.

::

     manager ──task/file/fetch──►  Worker (asyncio, one thread)
        ▲                          ├─ cache/<cachename>      immutable inputs and outputs
        │                          ├─ sandbox/t.<id>/        one per running task, inputs linked in
        └──cache_update/complete── ├─ child processes        `sh -c command`, exit seen via pidfd
                                   └─ transfer server  ◄──── other workers fetch cached files

A task's inputs are in the cache (or on their way: a URL, a peer transfer, a mini-task) before it
starts; its outputs move into the cache when it ends, and the ones the manager wants back are
streamed home before the ``complete`` message, so a completed task is a finished task.

The Worker holds its parts as members, each given what it uses: ``cache`` (:class:`WorkerCache`),
``sandboxes`` (:class:`WorkerSandboxes`), ``transfers`` (:class:`WorkerTransfers`), ``commands``
(:class:`CommandProcesses`: a command task's process, started, supervised and reaped) and ``python``
(:class:`PythonRunner`, which reaches the task path through the ``WorkerTasks`` protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import logging
import os
import shutil
import signal
import socket
import ssl as ssl_module
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine

from .. import constants as C
from ..errors import AuthenticationError, ProtocolError, TransferError
from ..state.prefetch import start_in_order, waits_in_queue
from ..wire import messages as M
from ..wire.connection import (
    Connection,
    client_handshake,
    open_connection,
    path_size,
    send_path,
)
from ..wire.protocol import Frame, pages_of
from ..wire.receive import FileReceiver, IncomingStreams
from ..wire.tls import GatedListener, TLSSetupError, client_context, self_signed_server_context, start_gated_server
from .cache import WorkerCache
from .children import block_child_signal
from .commands import CommandProcesses
from .options import batch_job_id, build_parser, detect_resources, set_cpu_scheduling, spawn_threads
from .pipelined import LocalMakers
from .python import PythonRunner
from .reaper import TaskReaper
from .running import RunningTask, close_stdout, read_stdout, stdout_now, take_stdout
from .sandbox import WorkerSandboxes
from .spawner import Spawner
from .transfers import WorkerTransfers

log = logging.getLogger("vine_worker")

# Errors of this host, not of a task: a task that meets one is given back to the manager to run again.
_HOST_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.ENOMEM})


class Worker:
    """One ``vine_worker``: its connection to the manager and its tasks; the cache, sandboxes,
    transfers, command processes and Python runner are its members (``cache``, ``sandboxes``,
    ``transfers``, ``commands``, ``python``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = os.path.abspath(args.workdir or f"/tmp/worker-{os.getuid()}-{os.getpid()}")
        self.cache_dir = os.path.join(self.workdir, "cache")
        self.meta_dir = os.path.join(self.workdir, "cache-meta")
        self.sandbox_dir = os.path.join(self.workdir, "sandbox")
        for d in (self.cache_dir, self.meta_dir, self.sandbox_dir):
            os.makedirs(d, exist_ok=True)
        detected = detect_resources(self.workdir, args.disk_percent)
        self.total = {
            "cores": float(args.cores) if args.cores is not None else detected["cores"],
            "memory": float(args.memory) if args.memory is not None else detected["memory"],
            "disk": float(args.disk) if args.disk is not None else detected["disk"],
            "gpus": float(args.gpus) if args.gpus is not None else detected["gpus"],
        }
        self.password = open(args.password, "rb").read().strip() if args.password else None
        # With TLS to the manager, the transfer port and peer fetches use TLS too (core.wire.tls).
        self.tls_client = client_context() if args.ssl else None
        self.id = "worker-" + hashlib.md5(f"{socket.gethostname()}:{os.getpid()}:{time.time()}".encode()).hexdigest()
        self.conn: Connection | None = None
        self.tasks: dict[int, RunningTask] = {}
        self.committed = {"cores": 0.0, "memory": 0.0, "disk": 0.0, "gpus": 0.0}
        self.reaper: TaskReaper | None = None  # kills this worker's task processes if it dies (main)
        self.receivers = IncomingStreams()  # files streaming in from the manager
        self.last_work = time.monotonic()
        self.end_time = time.time() + args.wall_time if args.wall_time else 0.0
        self.transfer_server: GatedListener | None = None
        self.transfer_port = 0
        self._stop = asyncio.Event()
        self.prefetched: list[RunningTask] = []  # tasks sent ahead, waiting for room (FIFO)
        self.makers = LocalMakers()  # temps the started tasks are making: queued consumers wait for them (pipelined.py)
        self._background: set[asyncio.Task[Any]] = set()
        # Its parts, each given what it uses (none of them imports another's module for it):
        self.cache = WorkerCache(self.cache_dir, self.meta_dir, self.send)
        self.sandboxes = WorkerSandboxes(self.sandbox_dir, self.cache, self.tasks, self.prefetched)
        self.transfers = WorkerTransfers(self.cache, self.sandboxes, self.send, lambda: self.conn, self._spawn, self.execute,
                                         self.tls_client, self.password)
        self.python = PythonRunner(self, self.cache, self.sandboxes)
        # Task shells start from threads where cores are free for it, so their spawns overlap (spawner.py).
        self.spawner = Spawner(spawn_threads(getattr(args, "spawn_threads", None), self.total["cores"]))
        self.commands = CommandProcesses(self.workdir, self.total, self.spawner, self.send, self.sandboxes.kept_stdout)
        self.cache.load()

    # -- connection ------------------------------------------------------------------------------------
    def send(self, msg: M.Message, payload: bytes = b"") -> None:
        """Send ``msg`` to the manager, if connected (a message lost with the connection is moot)."""
        if self.conn is not None:
            try:
                self.conn.send(msg, payload)
            except (ConnectionError, RuntimeError):
                pass

    def flush(self) -> None:
        """Write what :meth:`send` queued now, not at the end of this loop turn (moot, as there, if
        the connection is going)."""
        if self.conn is not None:
            try:
                self.conn.flush()
            except (ConnectionError, RuntimeError):
                pass

    async def _start_transfer_server(self) -> GatedListener:
        """The peer port: ``--transfer-port``, else the first free one of TCP_LOW_PORT..TCP_HIGH_PORT, else any."""
        from ..wire.ports import port_candidates

        tls = self_signed_server_context() if self.args.ssl else None
        last: OSError | None = None
        for port in port_candidates(self.args.transfer_port or 0):
            try:
                return await start_gated_server(self.transfers.serve_peer, host="0.0.0.0", port=port, ssl=tls,
                                                what="transfer port", log=log)
            except OSError as exc:
                last = exc
        raise OSError(f"no free transfer port in TCP_LOW_PORT..TCP_HIGH_PORT: {last}")

    async def main(self) -> int:
        # First, before any task can start: the guardian kills what this worker started if it is SIGKILLed.
        self.reaper = TaskReaper(self.sandbox_dir)
        loop = asyncio.get_running_loop()
        # The loop's executor (getaddrinfo, URL downloads) starts no process: its threads block
        # SIGCHLD, so a shell ending while the loop is inside posix_spawn wakes none of them.
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="vine-worker-io", initializer=block_child_signal))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.transfer_server = await self._start_transfer_server()
        self.transfer_port = self.transfer_server.sockets[0].getsockname()[1]
        watchdog = asyncio.create_task(self._watchdog())
        try:
            return await self._connect_loop()
        finally:
            watchdog.cancel()
            for rt in list(self.tasks.values()):
                self.kill(rt)
            self.commands.exits.close()
            self.spawner.close()
            if self.reaper is not None:
                self.reaper.close()
            self.transfer_server.close()
            self.cache.drop_levels_below(C.VINE_CACHE_LEVEL_WORKER + 1)
            if not self.args.workdir and not self.args.keep_workspace:
                shutil.rmtree(self.workdir, ignore_errors=True)

    async def _watchdog(self) -> None:
        parent = os.getppid()
        while not self._stop.is_set():
            await asyncio.sleep(0.5)
            if self.args.parent_death and os.getppid() != parent:
                log.info("parent died; exiting")
                self._stop.set()
            if self.end_time and time.time() > self.end_time:
                log.info("wall time reached; exiting")
                self._stop.set()

    def _targets(self) -> list[tuple[str, int]]:
        spec = self.args.manager
        if len(spec) == 2:
            return [(spec[0], int(spec[1]))]
        out = []
        for part in spec[0].split(";"):
            host, _, port = part.rpartition(":")
            out.append((host, int(port)))
        return out

    async def _connect_loop(self) -> int:
        deadline = time.monotonic() + self.args.connect_timeout
        backoff = 0.1
        tls_refused: str | None = None  # set while the only managers we reach hang up in the TLS handshake
        while not self._stop.is_set():
            for host, port in self._targets():
                try:
                    conn = await open_connection(host, port, ssl=self._client_ssl(), timeout=5)
                except (ssl_module.SSLError, ConnectionResetError) as exc:
                    if self.tls_client is None:
                        log.debug("cannot reach %s:%s: %s", host, port, exc)
                        continue
                    # Reached, then hung up on in the TLS handshake: say why (an unreachable manager is only a debug line).
                    log.error("TLS handshake with %s:%s failed (%s: %s): does that manager use TLS? "
                              "start the worker without --ssl for a plain one", host, port, type(exc).__name__, exc)
                    tls_refused = f"{host}:{port}"
                    continue
                except (OSError, asyncio.TimeoutError) as exc:
                    log.debug("cannot reach %s:%s: %s", host, port, exc)
                    continue
                try:
                    await self._serve_manager(conn)
                except AuthenticationError as exc:
                    log.error("%s", exc)
                    print(f"vine_worker: {exc}", file=sys.stderr)
                    return 1
                except (ProtocolError, OSError, asyncio.TimeoutError) as exc:
                    log.warning("connection to %s:%s ended: %s", host, port, exc)
                finally:
                    conn.close()
                    self._manager_gone()
                if self.args.single_shot or self._stop.is_set():
                    return 0
                deadline = time.monotonic() + self.args.connect_timeout
                backoff = 0.1
                tls_refused = None
            if time.monotonic() > deadline:
                if tls_refused is not None:
                    # Not an idle timeout: the worker never got in because the two sides disagree on TLS.
                    print(f"vine_worker: giving up after {self.args.connect_timeout:g}s: the TLS handshake with {tls_refused} "
                          "failed every time; does that manager use TLS? start the worker without --ssl for a plain one",
                          file=sys.stderr)
                    return 1
                log.info("no manager for %ss; exiting", self.args.connect_timeout)
                return 0
            try:
                await asyncio.wait_for(self._stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 8)
        return 0

    def _client_ssl(self) -> Any:
        """Workers encrypt but do not verify the manager's certificate (as TaskVine): the password,
        when set, is what authenticates both sides (its proofs are bound to the TLS channel)."""
        return self.tls_client

    def _manager_gone(self) -> None:
        self.conn = None
        self.prefetched.clear()
        self.makers.clear()
        for rt in list(self.tasks.values()):
            self.kill(rt)
            self.sandboxes.cleanup(rt)
            close_stdout(rt)  # never read now: its coroutine or its pidfd's callback finds it gone
        self.tasks.clear()
        self.committed = dict.fromkeys(self.committed, 0.0)
        self.receivers.abort_all()
        for fut in self.cache.pending.values():
            if not fut.done():
                fut.set_result(False)
        self.cache.pending.clear()
        self.cache.drop_on_arrival.clear()
        self.cache.drop_levels_below(C.VINE_CACHE_LEVEL_WORKER)

    async def _serve_manager(self, conn: Connection) -> None:
        await client_handshake(conn, "worker", self.password, timeout=30, worker_id=self.id)
        self.conn = conn
        # A workdir of 25,000 forever files lists more than one frame holds: the rest follows in pages.
        pages = pages_of({name: size for name, (size, _lvl) in self.cache.entries.items()})
        conn.send(M.Ready(
            resources=self.total, cache=pages[0], hostname=socket.gethostname(), worker_id=self.id,
            features=list(self.args.feature or []), cache_more=len(pages) > 1, transfer_port=self.transfer_port,
            end_time=self.end_time, workdir=self.workdir, pid=os.getpid(), batch_job_id=batch_job_id(),
        ))
        for n, page in enumerate(pages[1:], 2):
            await conn.drain()
            conn.send(M.CachePage(page, n < len(pages)))
        await conn.drain()
        self.last_work = time.monotonic()
        # One task reads and handles the manager's frames for the whole connection, awaiting the
        # connection itself: a read costs one wake-up of it (a task per read, waited for with
        # asyncio.wait, took four turns of the loop per frame). This coroutine waits for that
        # task's end, a stop, or the idle timeout.
        reading = asyncio.create_task(self._read_frames(conn))
        stop = asyncio.create_task(self._stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({reading, stop}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if reading in done:
                    reading.result()  # the connection's end, or the ProtocolError / OSError that ended it
                    return
                if stop in done:
                    return
                if self.args.timeout and not self.tasks and time.monotonic() - self.last_work > self.args.timeout:
                    log.info("idle for %ss; exiting", self.args.timeout)
                    # Say why (as TaskVine's worker does), so the manager logs IDLE_OUT, not a loss.
                    conn.send(M.IdleDisconnecting(self.args.timeout))
                    try:
                        await asyncio.wait_for(conn.drain(), 2)
                    except (OSError, asyncio.TimeoutError):
                        pass
                    self._stop.set()
                    return
        finally:
            reading.cancel()
            stop.cancel()

    async def _read_frames(self, conn: Connection) -> None:
        """Handle the manager's frames until the connection ends or it says ``exit``.

        Each frame is handled in the transport's read callback as its bytes arrive
        (Connection.deliver_frames, as the manager reads its workers), and what the frames of one
        read queued (completes, messages to libraries) leaves in one write once they are handled.
        Read through ``recv``, a frame cost a future, a wake-up of this coroutine and a turn of the
        loop before it was handled: per FunctionCall about a tenth of the worker's time.
        """
        exiting = False

        def handle(frame: Frame) -> None:
            nonlocal exiting
            if exiting:
                return  # nothing after ``exit`` is handled
            if isinstance(frame.message, M.Exit):
                exiting = True
                self._stop.set()
                return
            self._handle(frame)

        def answered() -> None:  # the frames of a read handled: the messages they queued leave now
            self.python.flush_libraries()
            self.flush()

        await conn.deliver_frames(handle, answered)

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, holding it: the event loop keeps only weak references to
        tasks, so an unheld one waiting on a socket can be collected before it finishes."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- messages from the manager ------------------------------------------------------------------
    def _handle(self, frame: Frame) -> None:
        msg = frame.message
        if isinstance(msg, M.FileChunk):  # first: most frames of a big input are its chunks
            self.receivers.chunk(frame)
        elif isinstance(msg, M.FileBegin):
            self.cache.drop_on_arrival.discard(msg.name)
            self.cache.expect(msg.name)
            self.receivers.begin(FileReceiver(frame, self.cache.path(msg.name)))
        elif isinstance(msg, M.FileEnd):
            r = self.receivers.end(msg.name)
            try:
                r.finish()
            except TransferError as exc:
                self.cache.failed(r.name, str(exc))
                return
            level = r.header.get("level")
            self.cache.ready(r.name, level if isinstance(level, int) else C.VINE_CACHE_LEVEL_WORKFLOW)
        elif isinstance(msg, M.Task):
            self._start_task(msg.task)
        elif isinstance(msg, M.Kill):
            self.unqueue(msg.id)
            rt = self.tasks.get(msg.id)
            if rt is not None:
                self.kill(rt)
                self.release(rt)
                self.sandboxes.cleanup(rt)
                close_stdout(rt)  # never read now: its coroutine or its pidfd's callback finds it gone
        elif isinstance(msg, M.FetchUrl):
            self.cache.drop_on_arrival.discard(msg.name)
            self.cache.expect(msg.name)
            self._spawn(self.transfers.fetch_url(msg.name, msg.url, msg.level))
        elif isinstance(msg, M.FetchPeer):
            self.cache.drop_on_arrival.discard(msg.name)
            self.cache.expect(msg.name)
            self.transfers.fetch_peer(msg.name, msg.source, msg.level)
        elif isinstance(msg, M.Minitask):
            self.cache.drop_on_arrival.discard(msg.name)
            self.cache.expect(msg.name)
            self._spawn(self.transfers.run_minitask(msg.name, msg.task, msg.level))
        elif isinstance(msg, M.Get):
            self._spawn(self.transfers.send_back(msg.name, msg.request))
        elif isinstance(msg, M.Unlink):
            if msg.name not in self.cache.pending:
                self.cache.unlink(msg.name)
            else:
                self.cache.drop_on_arrival.add(msg.name)
        elif isinstance(msg, M.Keepalive):
            self.send(M.Alive(self.committed, len(self.tasks)))
        else:
            raise ProtocolError(f"unexpected message {msg.TYPE!r} from the manager")

    # -- running tasks ----------------------------------------------------------------------------------
    def _fits(self, alloc: dict[str, float]) -> list[str]:
        """Resources ``alloc`` would push over this worker's total (empty if it fits now)."""
        # Plain loops, no max(): this runs for every task, twice for a prefetched one.
        over = []
        total = self.total
        for k, used in self.committed.items():
            want = alloc.get(k, 0)
            if (want if want > 0 else 0) + used > total[k] + 1e-9 and total[k] >= 0:
                over.append(k)
        return over

    def _commit(self, alloc: dict[str, float], sign: float) -> None:
        """Add (``sign`` 1) or give back (-1) ``alloc`` to the resources committed here (never below 0)."""
        committed = self.committed
        for k, used in committed.items():
            want = alloc.get(k, 0)
            used += sign * (want if want > 0 else 0)
            committed[k] = used if used > 0 else 0.0

    def _start_task(self, spec: M.TaskDefinition, queued: bool | None = None) -> None:
        """Start the task ``spec`` defines, or queue it (``queued``: may it wait here? default: as the manager said)."""
        if self.cache.drop_on_arrival:
            self.cache.drop_on_arrival.difference_update(i.name for i in spec.inputs)
        alloc = {k: float(v) for k, v in spec.resources.items()}
        rt = RunningTask(spec.id, spec, "", alloc)
        over = self._fits(alloc)
        if (spec.queued if queued is None else queued) and waits_in_queue(self.prefetched, not over and not self.makers.blocks(spec)):
            # Prefetched: starts, in order, the moment its allocation fits (the manager mirrors this).
            self.prefetched.append(rt)
            self.last_work = time.monotonic()
            return
        if over:
            self.send(M.Complete(spec.id, C.VINE_RESULT_FORSAKEN, -1, reason=f"no room for {over}"))
            return
        self._start_now(rt)

    def _start_queued(self, rt: RunningTask) -> None:
        """Start prefetched task ``rt``, whose allocation now fits."""
        if self.cache.drop_on_arrival:
            self.cache.drop_on_arrival.difference_update(i.name for i in rt.spec.inputs)
        self._start_now(rt)

    def _start_now(self, rt: RunningTask) -> None:
        spec = rt.spec
        self._commit(rt.alloc, 1)
        if spec.function_call is not None:
            # A call the manager sends ahead may need this call's temp output: it waits for it here.
            for o in spec.outputs:
                if o.kind == "temp":
                    self.cache.expect(o.name)
        self.last_work = time.monotonic()
        if not self.python.fast_call(rt):
            self.start_general(rt)

    def start_general(self, rt: RunningTask) -> None:
        """Run ``rt`` the ordinary way: in a sandbox of its own, by a coroutine."""
        try:
            rt.sandbox = self.sandboxes.make(f"t.{rt.id}")
        except OSError as exc:
            # Out of descriptors or disk, or an old sandbox that could not be removed: this host's
            # problem, so the task goes back to the manager (forsaken) and the connection stays.
            log.warning("task %s: cannot make its sandbox: %s", rt.id, exc)
            self._commit(rt.alloc, -1)
            self.send(M.Complete(rt.id, C.VINE_RESULT_FORSAKEN, -1, reason=f"worker problem: cannot make a sandbox: {exc}"))
            return
        self.tasks[rt.id] = rt
        self.makers.started(rt.spec)
        if self._plain_command(rt):
            self._start_command(rt)
        elif not self.python.start_forked(rt):  # a plain PythonTask starts from callbacks alone
            rt.starter = asyncio.create_task(self.python.task_coroutine(rt))  # libraries have their own runner

    def _plain_command(self, rt: RunningTask) -> bool:
        """A command task with every input here and nothing to supervise but its time limits: it runs
        with no coroutine (``_start_command``)."""
        spec = rt.spec
        if spec.python is not None or spec.function_call is not None or spec.library is not None or spec.environments:
            return False
        if spec.monitor is not None or any(o.watch for o in spec.outputs):
            return False
        entries = self.cache.entries
        return all(i.name in entries for i in spec.inputs)

    def _start_command(self, rt: RunningTask) -> None:
        """Start a plain command task from callbacks alone: its inputs placed, its shell spawned, its
        end seen by the shell's pidfd (``_command_ended``), its completion sent from there. The
        coroutine of ``run_task`` cost several loop turns and frames per task (task creation, its
        first step, the wake-up on the shell's end), a measurable part of a short task's cost
        (README, issue 13 session 22); the steps and the results are the same."""
        try:
            self.sandboxes.link_inputs(rt)
            if not rt.spec.inputs and not self.spawner.threads:
                # posix_spawn holds this loop until the shell has exec'd (0.15-0.5 ms): the frames
                # queued so far (often the end of the task whose slot this one takes) leave first,
                # so the manager reads them meanwhile. Not for a task with inputs: it may be the
                # next link of a chain, sent ahead behind the task that just ended, whose end is
                # then no news the manager needs soon, while the write would hold up this start.
                self.flush()
            self.commands.start(rt, self._command_ended)
        except Exception as exc:  # noqa: BLE001 - the worker must survive any single task
            self._command_ended(rt, exc)

    def _command_ended(self, rt: RunningTask, error: BaseException | None) -> None:
        """A plain command task's end (its shell reaped), or its failure to start (``error``)."""
        if error is None:
            result, code, reason = self._exit_result(rt, rt.returncode if rt.returncode is not None else 255)
        else:
            (result, reason), code = self._task_error(rt, error), -1
        if self.tasks.get(rt.id) is not rt:
            return  # killed by the manager
        self.end_task(rt, result, code, reason)

    def release(self, rt: RunningTask) -> None:
        if rt.spec.function_call is not None:
            for o in rt.spec.outputs:  # tell local consumers whether it was made
                fut = self.cache.pending.get(o.name) if o.kind == "temp" else None
                if fut is not None and o.name not in self.receivers:
                    del self.cache.pending[o.name]
                    if not fut.done():
                        fut.set_result(o.name in self.cache.entries)
        elif self.makers.ended(rt.spec) and rt.id not in self.tasks:
            self.start_queued()  # its slot went before its outputs were in (a PythonTask's): its consumers start now
        self.free_slot(rt)

    def free_slot(self, rt: RunningTask) -> int:
        """Give back ``rt``'s resources (once) and start the prefetched tasks that now fit; how many started.

        The manager's mirror of this worker's queue frees the slot when ``rt``'s ``complete``
        arrives and then starts the same tasks by the same rule, so it may free it later than this
        worker (a PythonTask frees it when its process has ended, before its outputs are collected):
        until then the manager sees those tasks as still queued here, and a queued task whose own
        ``complete`` comes first simply leaves that queue (core/state/scheduler.py ``_release``).
        """
        if self.tasks.pop(rt.id, None) is None:
            return 0
        self._commit(rt.alloc, -1)
        return self.start_queued()

    def start_queued(self) -> int:
        """Start the queue's head while its allocation fits and no started task is making one of its
        inputs: the rule the manager's scheduler mirrors (core/state/prefetch.py), so both agree on what runs."""
        if not self.prefetched:
            return 0
        return start_in_order(self.prefetched, lambda queued: not self._fits(queued.alloc) and not self.makers.blocks(queued.spec),
                              self._start_queued)

    def unqueue(self, tid: int) -> None:
        """Queued task ``tid`` was killed: it leaves the queue, and the one behind it may start now
        (the manager's mirror of the queue starts it when it ends the killed one)."""
        if any(p.id == tid for p in self.prefetched):
            self.prefetched[:] = [p for p in self.prefetched if p.id != tid]
            self.start_queued()

    # -- a task's process (core/worker/commands.py), as the Python runner and transfers use it -----------
    def task_env(self, rt: RunningTask) -> dict[str, str]:
        """The task's whole environment (the caller only reads it: a plain task's may be shared)."""
        return self.commands.env(rt)

    async def execute(self, rt: RunningTask) -> int:
        """Run the task's process; its exit status (negative = killed by that signal)."""
        special = self.python.special_execute(rt)  # Python tasks (fork server) and function calls (library)
        if special is not None:
            return await special
        return await self.commands.run(rt)

    def supervise(self, rt: RunningTask) -> Coroutine[Any, Any, int]:
        """Wait for ``rt.done`` under the task's limits, watches and monitoring (CommandProcesses.supervise)."""
        return self.commands.supervise(rt)

    def watch(self, rt: RunningTask, outputs: list[M.OutputRef]) -> Coroutine[Any, Any, None]:
        return self.commands.watch(rt, outputs)

    def monitor(self, rt: RunningTask, options: M.MonitorOptions) -> Coroutine[Any, Any, None]:
        return self.commands.monitor(rt, options)

    def read_stdout(self, rt: RunningTask) -> tuple[bytes, bool]:
        """The task's captured output (at most STDOUT_LIMIT bytes) and whether it was cut (a library's)."""
        return read_stdout(rt)

    def kill(self, rt: RunningTask, reason: int | None = None) -> None:
        self.commands.kill(rt, reason)

    async def run_task(self, rt: RunningTask) -> None:
        spec = rt.spec
        result, code, reason = C.VINE_RESULT_SUCCESS, -1, ""
        retry = missing_input = False
        try:
            if not await self.cache.gather(spec):
                missing = [i.name for i in spec.inputs if i.name not in self.cache.entries]
                result, reason = C.VINE_RESULT_INPUT_MISSING, f"inputs not obtained: {missing}"
                # An input that failed to arrive from a peer is the cluster's fault, not the task's.
                retry = any(i.kind == "temp" or i.name in self.transfers.peer_failures for i in spec.inputs if i.name in missing)
                self.transfers.peer_failures.difference_update(missing)
                url_failures = self.transfers.url_failures
                unfetched = [url_failures.pop(i.name, i.name) for i in spec.inputs if i.name in missing and i.kind == "url"]
                if unfetched:
                    # As TaskVine's worker does: a URL this worker could not fetch forsakes the task
                    # here, so the manager tries it again without counting a try (set_max_forsaken).
                    result, reason, retry = C.VINE_RESULT_FORSAKEN, "; ".join(unfetched), False
                    missing_input = True
            else:
                self.sandboxes.link_inputs(rt)
                status = await self.execute(rt)
                retry = rt.retry  # e.g. a call whose library died before it started
                result, code, reason = self._exit_result(rt, status)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - the worker must survive any single task
            result, reason = self._task_error(rt, exc)
        if self.tasks.get(rt.id) is not rt:
            return  # killed by the manager
        end = time.time()
        await self._pass_slot_on(rt)
        if not self._wrap_up_now(rt, result, code, reason, retry, missing_input, end):
            await self._wrap_up(rt, result, code, reason, retry, missing_input, end)
        await self._drain_if_backed_up()

    def end_task(self, rt: RunningTask, result: int, code: int, reason: str) -> None:
        """The end of ``run_task`` for a task started without a coroutine (a plain command task,
        PythonRunner.start_forked): a PythonTask's slot passed on first (``_pass_slot_on``), then
        the task wrapped up, in a coroutine only when an output or its stdout must be streamed. Called
        from a callback, so a failure here is the task's (UNKNOWN), never the connection's."""
        end = time.time()
        ours, handed_off = self.tasks.get(rt.id) is rt, False
        try:
            if rt.spec.python is not None and rt.spec.function_call is None:
                self.free_slot(rt)  # the next queued task's fork request is written before this one's complete
            if not self._wrap_up_now(rt, result, code, reason, False, False, end):
                self._spawn(self._wrap_up_and_drain(rt, result, code, reason, end))
            handed_off = True
            if self.conn is not None and self.conn.writer.transport.get_write_buffer_size():
                self._spawn(self._drain_if_backed_up())
        except Exception as exc:  # noqa: BLE001 - a callback's error must not end the connection or lose the task
            log.exception("task %s: wrapping up failed", rt.id)
            if ours and not handed_off:
                self.release(rt)
                self.send(M.Complete(rt.id, C.VINE_RESULT_UNKNOWN, code, reason=f"worker error: {exc}", start=rt.start, end=end))

    async def _wrap_up_and_drain(self, rt: RunningTask, result: int, code: int, reason: str, end: float) -> None:
        await self._wrap_up(rt, result, code, reason, False, False, end)
        await self._drain_if_backed_up()

    @staticmethod
    def _exit_result(rt: RunningTask, status: int) -> tuple[int, int, str]:
        """(result, exit code, reason) of a task whose process ended with ``status``."""
        if rt.killed_for is not None:
            return rt.killed_for, 9, ""
        if status < 0:
            return C.VINE_RESULT_SIGNAL, -status, ""
        return C.VINE_RESULT_SUCCESS, status, ""

    @staticmethod
    def _task_error(rt: RunningTask, exc: BaseException) -> tuple[int, str]:
        """(result, reason) of a task the worker could not run: this host's fault (forsaken: the
        manager sends it again without counting a try) or the worker's (an unknown failure)."""
        if isinstance(exc, OSError) and exc.errno in _HOST_ERRNOS:
            # This host is out of descriptors, disk or memory: the task did nothing wrong.
            log.warning("task %s could not be run here: %s", rt.id, exc)
            return C.VINE_RESULT_FORSAKEN, f"worker problem: {exc}"
        log.exception("task %s failed inside the worker", rt.id, exc_info=exc)
        return C.VINE_RESULT_UNKNOWN, f"worker error: {exc}"

    def _wrap_up_now(self, rt: RunningTask, result: int, code: int, reason: str, retry: bool, missing_input: bool,
                     end: float) -> bool:
        """Collect the task's stdout and outputs and send its ``complete``, when none of it waits:
        no output sent back, no stdout to stream (the usual small task). False, with nothing done,
        otherwise (``_wrap_up`` then does it)."""
        inline = rt.inline_outputs  # a forked PythonTask's result, collected from memory here
        if any(o.send_back and o.remote not in inline for o in rt.spec.outputs):
            return False
        now = stdout_now(rt, self.conn)
        if now is None:
            return False
        stdout, cut = now
        if cut and result == C.VINE_RESULT_SUCCESS:
            result = C.VINE_RESULT_STDOUT_MISSING
        outputs: dict[str, int] = {}
        cached: dict[str, int] = {}
        if result != C.VINE_RESULT_INPUT_MISSING:
            ok = self._watched_last(rt, result, code)
            for o in rt.spec.outputs:
                if (o.failure_only and ok) or (o.success_only and not ok):
                    continue
                if o.remote in inline:
                    self.python.collect_inline_output(rt, o, inline.pop(o.remote), outputs, cached)
                else:
                    result = self._keep_output(rt, o, result, outputs, cached)
        self._complete(rt, result, code, reason, retry, missing_input, end, outputs, cached, stdout, None)
        return True

    async def _wrap_up(self, rt: RunningTask, result: int, code: int, reason: str, retry: bool, missing_input: bool,
                       end: float) -> None:
        """``_wrap_up_now`` for a task whose outputs are sent back or whose stdout is streamed."""
        stdout, cut, streamed = await take_stdout(rt, self.conn)
        if cut and result == C.VINE_RESULT_SUCCESS:
            result = C.VINE_RESULT_STDOUT_MISSING
        outputs: dict[str, int] = {}
        cached: dict[str, int] = {}
        if result != C.VINE_RESULT_INPUT_MISSING:
            ok = self._watched_last(rt, result, code)
            result = await self._collect_outputs(rt, ok, result, outputs, cached)
        self._complete(rt, result, code, reason, retry, missing_input, end, outputs, cached, stdout, streamed)

    def _watched_last(self, rt: RunningTask, result: int, code: int) -> bool:
        """Send the watched outputs' last bytes; whether the task succeeded (which outputs it keeps)."""
        watch = [o for o in rt.spec.outputs if o.watch]
        if watch:
            self.commands.watch_once(rt, watch)
        return result == C.VINE_RESULT_SUCCESS and code == 0

    def _complete(self, rt: RunningTask, result: int, code: int, reason: str, retry: bool, missing_input: bool, end: float,
                  outputs: dict[str, int], cached: dict[str, int], stdout: bytes, streamed: int | None) -> None:
        """The task's end: its sandbox cleaned up, its resources given back, its ``complete`` queued."""
        unlinked = self.sandboxes.cleanup(rt)
        self.last_work = time.monotonic()
        result_name, result_data = rt.complete_result or (None, b"")  # a small result inline (core/worker/python.py)
        self.send(
            M.Complete(rt.id, result, code, reason=reason, retry=retry, missing_input=missing_input,
                       start=rt.start, end=end, outputs=outputs, cached=cached, unlinked=unlinked,
                       measured=rt.usage.measured() if rt.usage else {}, limits=rt.limits, stdout_streamed=streamed,
                       result_name=result_name, result_size=len(result_data)),
            result_data + stdout if result_data else stdout,
        )
        # Queued first, then the slot given back: a prefetched command started by the release may
        # hold the loop in its spawn (_start_command), and this end leaves before that spawn.
        self.release(rt)

    async def _drain_if_backed_up(self) -> None:
        """Wait while the manager reads less than this worker sends.

        A ``complete`` is not flushed at once: the connection writes what was queued in one turn of
        the loop at its end, so the completes of tasks that end together leave in one write (a
        drain per task wrote each at once and left an empty flush to run in the next turn). Only
        when the socket already holds unsent bytes does a task drain, which waits while they are
        over the transport's high-water mark.
        """
        conn = self.conn
        if conn is None:
            return
        if conn.writer.transport.get_write_buffer_size():
            try:
                await conn.drain()
            except ConnectionError:
                pass

    async def _pass_slot_on(self, rt: RunningTask) -> None:
        """A PythonTask whose process has ended gives its slot to the next prefetched task now.

        That task's fork request leaves (one turn of the loop) before this task's outputs and
        complete are sent, so its fork overlaps this task's wrapping up (with small tasks, about
        half of a slot's time went there). The sandbox and the outputs stay this task's.
        """
        if rt.spec.python is not None and rt.spec.function_call is None and self.free_slot(rt):
            await asyncio.sleep(0)

    async def _collect_outputs(self, rt: RunningTask, ok: bool, result: int, outputs: dict[str, int], cached: dict[str, int]) -> int:
        inline = rt.inline_outputs  # a forked PythonTask's result
        for o in rt.spec.outputs:
            if (o.failure_only and ok) or (o.success_only and not ok):
                continue
            if o.remote in inline:
                self.python.collect_inline_output(rt, o, inline.pop(o.remote), outputs, cached)
                continue
            if not o.send_back:
                result = self._keep_output(rt, o, result, outputs, cached)
                continue
            src = os.path.join(rt.sandbox, o.remote)
            if not os.path.lexists(src):
                if result == C.VINE_RESULT_SUCCESS:
                    result = C.VINE_RESULT_OUTPUT_MISSING
                continue
            name = o.name
            self.cache.unlink(name)
            os.replace(src, self.cache.path(name))
            if self.conn is not None:
                await send_path(self.conn, name, self.cache.path(name), task=rt.id)
            if o.level <= C.VINE_CACHE_LEVEL_TASK:
                outputs[name] = path_size(self.cache.path(name))
                self.cache.unlink(name)
                continue
            outputs[name] = cached[name] = self.cache.add(name, max(o.level, C.VINE_CACHE_LEVEL_WORKFLOW))
        return result

    def _keep_output(self, rt: RunningTask, o: M.OutputRef, result: int, outputs: dict[str, int], cached: dict[str, int]) -> int:
        """Move output ``o`` (not sent back) from the sandbox into the cache; the task's result after it."""
        src = os.path.join(rt.sandbox, o.remote)
        if not os.path.lexists(src):
            return C.VINE_RESULT_OUTPUT_MISSING if result == C.VINE_RESULT_SUCCESS else result
        name = o.name
        level = max(o.level, C.VINE_CACHE_LEVEL_WORKFLOW)
        if not self.cache.adopt_small_output(name, src, level):
            # In memory now when adopted (a chain's next link gets it written from there); else a file.
            self.cache.unlink(name)
            os.replace(src, self.cache.path(name))
        # Announced in the task's "complete" message ("cached"), not in a cache_update of its own:
        # the manager then sees the file and the freed slot at once, and places a consumer here.
        outputs[name] = cached[name] = self.cache.add(name, level)
        return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        logging.basicConfig(
            level=logging.DEBUG, filename=args.debug_file,
            format="%(asctime)s vine_worker[%(process)d] %(levelname)s: %(message)s",
        )
    else:
        logging.basicConfig(level=logging.WARNING, format="vine_worker: %(message)s")
    args.connect_timeout = args.connect_timeout if args.connect_timeout is not None else args.timeout
    args.timeout = args.idle_timeout if args.idle_timeout is not None else args.timeout
    if args.manager_name and not args.manager:
        from ..deploy.catalog import find

        found = find(args.manager_name, args.catalog)
        if not found:
            print(f"vine_worker: no manager named {args.manager_name!r} in the catalog", file=sys.stderr)
            return 1
        uses_tls = {bool(e.get("ssl")) for e in found}
        if len(uses_tls) > 1:
            # One worker has one transfer port, TLS or plain: it cannot serve both kinds of manager's peers.
            listed = ", ".join(f"{e.get('project')}@{e['address']}:{e['port']} ({'TLS' if e.get('ssl') else 'plain'})" for e in found)
            print(f"vine_worker: the managers named {args.manager_name!r} disagree on TLS ({listed}); "
                  "give a name that matches only one kind", file=sys.stderr)
            return 1
        args.ssl = args.ssl or uses_tls.pop()
        args.manager = [";".join(f"{e['address']}:{int(e['port'])}" for e in found)]
    if len(args.manager) not in (1, 2):
        build_parser().error("give HOST PORT, HOST:PORT, or -M NAME")
    # Before any thread or process is started, so that all of them inherit it.
    warning = set_cpu_scheduling(args.cpu_scheduling)
    if warning:
        print(f"vine_worker: {warning}", file=sys.stderr)
    worker = Worker(args)
    try:
        return asyncio.run(worker.main())
    except TLSSetupError as exc:  # --ssl (or a TLS catalog entry) on a host without openssl
        print(f"vine_worker: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
