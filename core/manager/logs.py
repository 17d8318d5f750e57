"""Run-info directories and the four TaskVine logs: debug, transactions, performance, taskgraph.

Layout: ``<run_info_path>/<timestamp>/vine-logs/{debug,transactions,performance,taskgraph}`` plus
``workflow.json`` (written at close), with a ``most-recent`` link to the latest run. Sizes in the
transactions log are bytes, and its header says so.

The debug log carries, besides the project's own messages, the lines TaskVine's manager writes about
each worker, task and file (``worker A connected``, ``tx to H (A): task N`` .. ``end``, ``rx from H (A):
complete ..``, ``Task N state change: READY (1) to RUNNING (2)``, ``put``/``puturl``/``cache-update``/
``unlink``), so TaskVine's report tool (``vine_parse``, ``vine_report``) reads a run of ours. A ``tx to``
line is a message this manager sent, an ``rx from`` line what a worker's message said, each in
TaskVine's words. Free-text messages are kept from looking like those lines to the tool (see
:func:`tool_safe`).
"""

from __future__ import annotations

import collections
import functools
import getpass
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from .. import constants as C

if TYPE_CHECKING:
    from ..api.files import File
    from ..api.task import Task
    from ..state.resources import Resources

PERFORMANCE_COLUMNS = (
    "timestamp workers_connected workers_init workers_idle workers_busy workers_able workers_joined workers_removed "
    "workers_released workers_idled_out workers_blocked workers_slow workers_lost "
    "tasks_waiting tasks_on_workers tasks_running tasks_with_results tasks_submitted tasks_dispatched tasks_done "
    "tasks_failed tasks_successful tasks_cancelled tasks_exhausted_attempts tasks_recovery "
    "time_send time_receive time_send_good time_receive_good time_status_msgs time_internal time_polling "
    "time_application time_scheduling time_execute time_execute_good time_execute_exhaustion "
    "bytes_sent bytes_received bandwidth "
    "capacity_tasks capacity_cores capacity_memory capacity_disk capacity_instantaneous capacity_weighted "
    "total_cores total_memory total_disk committed_cores committed_memory committed_disk "
    "max_cores max_memory max_disk min_cores min_memory min_disk inuse_cache"
).split()


UNITS = {"cores": "cores", "memory": "MB", "disk": "MB", "gpus": "gpus", "wall_time": "s", "cpu_time": "s", "max_concurrent_processes": "procs"}


def resources_json(res: dict[str, float]) -> str:
    return _res_json_items(tuple(res.items()))


@functools.lru_cache(maxsize=1024)
def _box_json(box: Resources) -> str:
    # A task's requested box as resources_json writes its dict: a run's tasks share a few boxes.
    return resources_json(box.to_dict())


# The same, looked up by the box's identity (core/api/specs.py shares one box per shape), which costs
# less per submit than hashing a Resources; an entry keeps its box, so an id is never reused meanwhile.
_BOX_JSON_MAX = 4096
_box_json_by_id: dict[int, tuple[Resources, str]] = {}


def _box_json_shared(box: Resources) -> str:
    entry = _box_json_by_id.get(id(box))
    if entry is not None and entry[0] is box:
        return entry[1]
    text = _box_json(box)
    if len(_box_json_by_id) < _BOX_JSON_MAX:
        _box_json_by_id[id(box)] = (box, text)
    return text


@functools.lru_cache(maxsize=1024)
def _res_json_items(items: tuple[tuple[str, float | None], ...]) -> str:
    # Most tasks of a run ask for the same few shapes: format each shape once (unset ones left out).
    return json.dumps({k: [v, UNITS.get(k, "")] for k, v in items if v is not None and v >= 0}, separators=(",", ":"))


# Whole words and phrases TaskVine's report tool acts on wherever they appear in a debug line; in free
# text (exception messages, warnings, the application's own lines) the space before such a word, or
# inside such a phrase, becomes a no-break space: the line reads the same, the tool passes it by.
_TOOL_WORDS = re.compile(
    r" (?=(?:connected|removed|put|puturl|puturl_now|unlink|complete|stdout|kill|info|exhausted|resources"
    r"|cache-update|cache-invalid|transfer-port)(?: |$))"
    r"|(?<=state) (?=change:)|(?<=manager) (?=end)|(?<=recovery) (?=task)|(?<=Failed) (?=to send)"
    r"|(?<=listening) (?=on port)|(?<=tx) (?=to )|(?<=rx) (?=from )|(?<=added) (?=dependency)"
)
NO_BREAK_SPACE = "\u00a0"


def tool_safe(text: str) -> str:
    """``text`` with the spaces that would make TaskVine's report tool misread it made no-break.

    The tool splits a debug line on spaces and acts on words such as ``connected``, ``put`` or
    ``complete`` anywhere in it; a warning like "no connected worker can hold it" would otherwise
    become a worker of its own in the tool's report, and a stray ``put`` stops it.
    """
    return _TOOL_WORDS.sub(NO_BREAK_SPACE, text)


# " state change: READY (1) to RUNNING (2)" for every pair of states, indexed [old][new].
_STATE_CHANGES = [[f" state change: {C.TASK_STATE_NAMES[a]} ({a}) to {C.TASK_STATE_NAMES[b]} ({b})" for b in range(6)]
                  for a in range(6)]
_TO_READY = [row[C.VINE_TASK_READY] for row in _STATE_CHANGES]  # the READY lines' ends, by the state before


@functools.lru_cache(maxsize=1024)
def _task_shape_lines(library: str | None, category: str, cores: float, gpus: float, memory: float,
                      disk: float) -> tuple[str, ...]:
    # The lines a task message shares with every task of its shape: made once per shape.
    head = [f"needs_library {library}"] if library else []
    return (*head, f"category {_url_encoded(category)}", f"cores {_fmt(cores)}", f"gpus {_fmt(gpus)}",
            f"memory {_fmt(memory)}", f"disk {_fmt(disk)}")


_NEEDS_ENCODING = re.compile(r"[\x00-\x20%]")


def _url_encoded(name: str) -> str:
    # TaskVine URL-encodes names in its messages (spaces, control characters, %): a name must not
    # split a debug line into more words, or into two lines.
    if _NEEDS_ENCODING.search(name) is None:
        return name
    return _NEEDS_ENCODING.sub(lambda m: f"%{ord(m.group()):02X}", name)


class RunLogs:
    """Open log files of one manager run.

    Records are queued and written by the manager's ticker (every 0.5 s, :meth:`flush`) and at
    close: a line-buffered log cost a write system call per record, a third of a tiny task's manager
    time, and even a buffered one a lock and a file write per record. A queued record is a string
    appended to a deque (no lock: ``deque.append`` is atomic, and keeps the order they happened in),
    or a tuple formatted when it is written.
    """

    def __init__(self, run_info_path: str, template: str | None = None) -> None:
        stamp = time.strftime(template or "%Y-%m-%dT%H%M%S")
        base = os.path.abspath(run_info_path)
        run_dir = os.path.join(base, stamp)
        n = 1
        while os.path.exists(run_dir):  # two managers started within one second
            n += 1
            run_dir = os.path.join(base, f"{stamp}.{n}")
        self.run_dir = run_dir
        self.log_dir = os.path.join(run_dir, "vine-logs")
        self.staging_dir = os.path.join(run_dir, "staging")
        os.makedirs(self.log_dir)
        for sub in ("outputs", "arguments", "functions"):
            os.makedirs(os.path.join(self.staging_dir, sub), exist_ok=True)
        link = os.path.join(base, "most-recent")
        try:
            tmp = f"{link}.{os.getpid()}"
            os.symlink(os.path.basename(run_dir), tmp)
            os.replace(tmp, link)
        except OSError:
            pass
        self.pid = os.getpid()
        # Re-entrant: a fatal signal's handler (core.manager.exit_guard) may close the logs while the main
        # thread was interrupted inside a write.
        self._lock = threading.RLock()
        self.start_us = _now_us()
        # Transfer time and size between manager and workers, for the performance log (µs, bytes).
        self.transfer_totals: dict[str, float] = {"time_send": 0.0, "time_receive": 0.0, "bytes_received_files": 0.0}
        self._receiving: dict[tuple[str, str], float] = {}
        self.closed = False
        self._debug = self._open("debug")
        # Debug lines wait here until the ticker's flush: a deque append needs no lock and no write
        # call, and a task's life writes five blocks of them.
        self._debug_queue: collections.deque[str | tuple[float, int, str, int, str, int]] = collections.deque()
        # Transaction records likewise, in order: a line, or a submitted task's READY record as
        # (time, id, category, attempt, requested box as JSON, previous state), formatted when
        # written (task_ready; the debug queue holds the same tuple for the task's debug line).
        self._tx_queue: collections.deque[str | tuple[float, int, str, int, str, int]] = collections.deque()
        self._graph_queue: collections.deque[str] = collections.deque()  # taskgraph lines
        self._tx = self._open("transactions")
        self._perf = self._open("performance")
        self._graph = self._open("taskgraph")
        self._tx.write(
            "# time manager_pid MANAGER manager_pid START|END time_from_origin\n"
            "# time manager_pid WORKER worker_id CONNECTION host:port\n"
            "# time manager_pid WORKER worker_id DISCONNECTION (UNKNOWN|IDLE_OUT|FAST_ABORT|FAILURE|STATUS_WORKER|EXPLICIT|XFER_ERRORS)\n"
            "# time manager_pid WORKER worker_id RESOURCES {resources}\n"
            "# time manager_pid WORKER worker_id CACHE_UPDATE filename size_in_bytes wall_time_us start_time_us\n"
            "# time manager_pid WORKER worker_id TRANSFER (INPUT|OUTPUT) filename size_in_bytes wall_time_us start_time_us\n"
            "# time manager_pid TASK task_id READY category FIRST_RESOURCES|MAX_RESOURCES attempt {resources_requested}\n"
            "# time manager_pid TASK task_id RUNNING worker_id FIRST_RESOURCES|MAX_RESOURCES {resources_allocated}\n"
            "# time manager_pid TASK task_id WAITING_RETRIEVAL worker_id\n"
            "# time manager_pid TASK task_id RETRIEVED RESULT exit_code {limits_exceeded} {resources_measured}\n"
            "# time manager_pid TASK task_id DONE RESULT exit_code\n"
            "# time manager_pid APPLICATION text\n"
        )
        self._perf.write("# " + " ".join(PERFORMANCE_COLUMNS) + "\n")
        # Graphviz dot, as TaskVine's taskgraph log: `dot -Tpng taskgraph > graph.png`. Lines starting
        # with '#' are discarded by dot.
        self._graph.write('# taskvine taskgraph (Graphviz dot)\ndigraph "taskvine" {\n'
                          "node [style=filled,fontname=Helvetica,fontsize=10];\n")
        self.transaction(f"MANAGER {self.pid} START 0")
        self._last_perf = 0.0
        self._last_perf_row: tuple[Any, ...] | None = None
        self._stamp: tuple[int, str] = (-1, "")  # (time in 1/100 s, its debug-line prefix)
        # What TaskVine's report tool must be told consistently: each task's last logged state, the
        # worker a task was sent to ("host (addr)"), and the id of each peer or URL transfer in flight.
        self._task_states: dict[int, int] = {}
        self._task_worker: dict[int, str] = {}
        self._transfer_ids: dict[tuple[str, str], str] = {}
        self._next_transfer = itertools.count(1)

    def _open(self, name: str) -> TextIO:
        return open(os.path.join(self.log_dir, name), "a", buffering=1 << 16)

    def _write(self, fh: TextIO, text: str) -> None:
        # The I/O thread and the user's threads (declarations, log_*_app) both write: one lock.
        with self._lock:
            if not fh.closed:
                fh.write(text)

    def flush(self) -> None:
        with self._lock:
            self._drain_queues()
            for fh in (self._debug, self._tx, self._perf, self._graph):
                if not fh.closed:
                    fh.flush()

    def _drain_queues(self) -> None:
        # Under self._lock: every queued record into its file (still buffered: flush() pushes them out).
        self._drain_tx_queue()
        self._drain_debug_queue()
        queue, chunk = self._graph_queue, []
        while queue:
            chunk.append(queue.popleft())
        if chunk and not self._graph.closed:
            self._graph.write("".join(chunk))

    def _drain_tx_queue(self) -> None:
        # Under self._lock; popleft until empty, as _drain_debug_queue (a record appended meanwhile by
        # another thread is taken now or next time, never lost). A READY tuple is formatted here.
        queue, chunk = self._tx_queue, []
        pid_task = f" {self.pid} TASK "
        # A burst's READY lines differ in time and id only: their ends are formatted once per box
        # (with the category and attempt they were made for) in this drain.
        ends: dict[str, tuple[str, int, str]] = {}
        while queue:
            item = queue.popleft()
            if type(item) is str:
                chunk.append(item)
            else:
                t, tid, category, attempt, requested, _ = item
                end = ends.get(requested)
                if end is None or end[0] != category or end[1] != attempt:
                    end = ends[requested] = (category, attempt, f" READY {category} FIRST_RESOURCES {attempt} {requested}\n")
                chunk.append(f"{int(t * 1e6)}{pid_task}{tid}{end[2]}")
        if chunk and not self._tx.closed:
            self._tx.write("".join(chunk))

    def _drain_debug_queue(self) -> None:
        # Under self._lock. popleft until empty: a line appended meanwhile by another thread is
        # either taken now or at the next flush, never lost.
        queue, chunk = self._debug_queue, []
        tick, stamp = -1, ""  # the prefix of the last READY line's hundredth of a second
        while queue:
            item = queue.popleft()
            if type(item) is str:
                chunk.append(item)
                continue
            # A tuple is a submitted task's READY line, formatted only now (see task_ready).
            if int(item[0] * 100) != tick:
                tick, stamp = int(item[0] * 100), self._prefix(item[0])
            chunk.append(f"{stamp}vine: Task {item[1]}{_TO_READY[item[5]]}\n")
        if chunk and not self._debug.closed:
            self._debug.write("".join(chunk))

    def _prefix(self, t: float | None = None) -> str:
        """``2026/12/01 13:02:54.01 vine_manager[PID]`` for now (or time ``t``): formatted once per
        hundredth of a second."""
        if t is None:
            t = time.time()
        tick = int(t * 100)
        cached = self._stamp
        if cached[0] == tick:
            return cached[1]
        prefix = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(t)) + f".{tick % 100:02d} vine_manager[{self.pid}]"
        self._stamp = (tick, prefix)  # one assignment: a reader in another thread sees old or new, whole
        return prefix

    def debug(self, msg: str, flag: str = "vine") -> None:
        """A free-text line of the debug log (see :func:`tool_safe`)."""
        self._debug_queue.append(f"{self._prefix()}{flag}: {tool_safe(msg)}\n")

    def _debug_lines(self, lines: Iterable[str], flag: str = "vine") -> None:
        # One write for a block: the report tool reads a task's "tx to .. task N" .. "end" lines, and
        # a worker's "resources" .. "end" lines, as one unit, so no other thread's line may fall inside.
        head = f"{self._prefix()}{flag}: "
        self._debug_queue.append(head + ("\n" + head).join(lines) + "\n")

    def _debug_line(self, line: str) -> None:
        self._debug_queue.append(f"{self._prefix()}vine: {line}\n")

    # -- TaskVine's debug-log lines (what its report tool reads) -------------------------------------------
    def manager_listening(self, port: int) -> None:
        self._debug_lines([f"listening on port {port}"], flag="tcp")

    def _state_line(self, tid: int, new: int) -> str:
        old = self._task_states.get(tid, C.VINE_TASK_INITIAL)
        self._task_states[tid] = new
        return f"Task {tid}{_STATE_CHANGES[old][new]}"

    def debug_worker_joined(self, host: str, addr: str, wid: str, resources: Mapping[str, float],
                            transfer_port: int | None, cache: Mapping[str, int], files: Mapping[str, File]) -> None:
        """A worker connected: its address, id, resources, transfer port and what its cache holds."""
        body = [f"info worker-id {wid}", "resources"]
        body += [f"{r} {float(resources.get(r, 0)):.6f}" for r in ("cores", "memory", "disk", "gpus")]
        body.append("end")
        if transfer_port:
            body.append(f"transfer-port {transfer_port}")
        # Files kept from an earlier run: a worker (or forever) level, since they outlived their manager.
        body += [self._cache_update(wid, name, size, files.get(name), C.VINE_CACHE_LEVEL_WORKER) for name, size in cache.items()]
        self._message_block([f"worker {addr} connected"], f"rx from {host} ({addr}): ", body, [])

    def debug_worker_left(self, host: str, addr: str, wid: str) -> None:
        for key in [k for k in self._transfer_ids if k[0] == wid]:
            del self._transfer_ids[key]
        self._debug_line(f"worker {host} ({addr}) removed")

    def _message_block(self, before: list[str], channel: str, body: list[str], after: list[str]) -> None:
        """``before`` lines, then ``body`` lines each after ``channel`` ("tx to H (A): "), then ``after``:
        one write. The channel and the time are joined in by str.join, not formatted per line."""
        sep = f"\n{self._prefix()}vine: "
        text = sep.join([*before, channel + (sep + channel).join(body), *after])
        self._debug_queue.append(sep[1:] + text + "\n")

    def debug_task_sent(self, host: str, addr: str, task: Task, allocation: Mapping[str, float],
                        library: str | None = None, recreates: Iterable[str] = (), task_id: int | None = None) -> None:
        """The task message, as TaskVine's manager logs it line by line, then READY -> RUNNING.

        A task sent again (its worker was lost, or it was forsaken) first goes back to READY; a
        recovery task (``recreates`` names the lost temps it makes again; ``task_id`` is its own id,
        ``task`` the producer it re-runs) is announced first.
        """
        tid = task.id if task_id is None else task_id
        before = []
        prev = self._task_states.get(tid)
        if prev is None:
            before.append(self._state_line(tid, C.VINE_TASK_READY))
            before += [f"Submitted recovery task {tid} ({tool_safe(task.command)}) to re-create lost temporary file {name}."
                       for name in recreates]
        elif prev in (C.VINE_TASK_RUNNING, C.VINE_TASK_WAITING_RETRIEVAL):
            before.append(self._state_line(tid, C.VINE_TASK_READY))
        body = [f"task {tid}", f"cmd {len(task.command.encode())}",
                *_task_shape_lines(library, task.category, allocation.get("cores", 0), allocation.get("gpus", 0),
                                   allocation.get("memory", 0), allocation.get("disk", 0))]
        body += [f"infile {m.file.cache_name} {_url_encoded(m.remote_name)} {m.flags}" for m in task.inputs]
        body += [f"outfile {m.file.cache_name} {_url_encoded(m.remote_name)} {m.flags}" for m in task.outputs]
        body.append("end")
        where = f"{host} ({addr})"
        self._task_worker[tid] = where
        self._message_block(before, f"tx to {where}: ", body, [self._state_line(tid, C.VINE_TASK_RUNNING)])

    def debug_task_complete(self, host: str, addr: str, wid: str, tid: int, result: int, exit_code: int, stdout_len: int,
                            start: float, end: float, sandbox_mb: int, outputs: Mapping[str, int], kept: Mapping[str, int],
                            unlinked: Iterable[str], files: Mapping[str, File], accepted: bool) -> None:
        """A worker's ``complete`` message: the outputs it made, the task's end, the files it dropped.

        ``accepted``: the manager takes this as the task's result (RUNNING -> WAITING_RETRIEVAL);
        otherwise the task will be sent again.
        """
        if tid not in self._task_states:
            return  # a library instance, or a task the log never announced: nothing the tool could place
        body = [self._cache_update(wid, name, size, files.get(name), C.VINE_CACHE_LEVEL_TASK) for name, size in outputs.items()]
        body.append(f"complete {result} {exit_code} {stdout_len} {stdout_len} {int(start * 1e6)} {int(end * 1e6)} {sandbox_mb} {tid}")
        # Returned outputs the worker did not keep, and task-level inputs it removed (TaskVine's manager
        # would send "unlink" for each; our worker removes them itself and says so in "complete").
        body += [f"unlink {name}" for name in outputs if name not in kept]
        body += [f"unlink {name}" for name in unlinked]
        after = []
        if accepted and self._task_states[tid] == C.VINE_TASK_RUNNING:
            after.append(self._state_line(tid, C.VINE_TASK_WAITING_RETRIEVAL))
        self._message_block([], f"rx from {host} ({addr}): ", body, after)

    def debug_task_retrieved(self, tid: int, done: bool = False) -> None:
        """The manager has the task's result (RETRIEVED); ``done``: no one will wait for it (a recovery task)."""
        prev = self._task_states.get(tid)
        if prev is None or prev >= C.VINE_TASK_RETRIEVED:
            return
        lines = []
        where = self._task_worker.pop(tid, None)
        if prev == C.VINE_TASK_WAITING_RETRIEVAL and where is not None:
            # TaskVine's manager sends "kill N" to remove the sandbox; our worker already did.
            lines.append(f"task {tid} reaped from {where}, its sandbox already cleaned: kill {tid}")
        lines.append(self._state_line(tid, C.VINE_TASK_RETRIEVED))
        if done:
            lines.append(self._state_line(tid, C.VINE_TASK_DONE))
            del self._task_states[tid]
        self._debug_lines(lines)

    def debug_task_done(self, tid: int) -> None:
        """``wait`` returned the task to the application."""
        if self._task_states.get(tid) == C.VINE_TASK_RETRIEVED:
            line = self._state_line(tid, C.VINE_TASK_DONE)
            del self._task_states[tid]
            self._debug_line(line)

    def debug_put(self, host: str, addr: str, name: str, level: int, size: int) -> None:
        self._debug_line(f"tx to {host} ({addr}): put {name} {level} {size}")

    def debug_puturl(self, host: str, addr: str, wid: str, source: str, name: str, level: int, size: int, mode: int) -> None:
        """The worker fetches ``name`` from ``source`` (a URL, or ``workerip://host:port/name`` for a peer)."""
        tid = f"{self.pid}-{next(self._next_transfer)}"
        self._transfer_ids[(wid, name)] = tid
        self._debug_line(f"tx to {host} ({addr}): puturl {_url_encoded(source)} {name} {level} {max(size, 0)} 0{mode:o} {tid}")

    def debug_mini_task(self, host: str, addr: str, source: str, name: str, level: int, size: int, mode: int) -> None:
        self._debug_line(f"tx to {host} ({addr}): mini_task {_url_encoded(source)} {name} {level} {max(size, 0)} 0{mode:o}")

    def _cache_update(self, wid: str, name: str, size: int, f: File | None, level: int) -> str:
        transfer = self._transfer_ids.pop((wid, name), "X")  # X: made or sent here, not fetched
        kind = f.type() if f is not None else C.VINE_FILE
        level = f.level if f is not None else level
        return f"cache-update {name} {kind} {level} {size} 0 0 0 {transfer}"

    def debug_cache_update(self, host: str, addr: str, wid: str, name: str, size: int, f: File | None) -> None:
        self._message_block([], f"rx from {host} ({addr}): ", [self._cache_update(wid, name, size, f, C.VINE_CACHE_LEVEL_TASK)], [])

    def debug_cache_invalid(self, host: str, addr: str, wid: str, name: str, reason: str) -> None:
        transfer = self._transfer_ids.pop((wid, name), None)
        tail = f" {transfer}" if transfer else ""
        self._debug_line(f"rx from {host} ({addr}): cache-invalid {name} {len(reason)}{tail}")

    def debug_unlink(self, host: str, addr: str, name: str) -> None:
        self._debug_line(f"tx to {host} ({addr}): unlink {name}")

    def debug_kill(self, host: str, addr: str, tid: int) -> None:
        self._debug_line(f"tx to {host} ({addr}): kill {tid}")

    def transaction(self, record: str) -> None:
        self._tx_queue.append(f"{_now_us()} {self.pid} {record}\n")

    def worker_connected(self, wid: str, addr: str, resources: dict[str, float]) -> None:
        self.transaction(f"WORKER {wid} CONNECTION {addr}")
        self.transaction(f"WORKER {wid} RESOURCES {resources_json(resources)}")

    def worker_disconnected(self, wid: str, reason: str) -> None:
        self.transaction(f"WORKER {wid} DISCONNECTION {reason}")

    def cache_update(self, wid: str, name: str, size: int, wall_us: int = 0, start_us: int = 0) -> None:
        self.transaction(f"WORKER {wid} CACHE_UPDATE {name} {size} {wall_us} {start_us}")

    def transfer(self, wid: str, direction: str, name: str, size: int, wall_us: int, start_us: int) -> None:
        """A file moved between the manager and worker ``wid`` (INPUT: to it; OUTPUT: from it)."""
        if direction == "OUTPUT" and not start_us:
            started = self._receiving.pop((wid, name), None)
            if started is not None:
                start_us = int(started * 1e6)
                wall_us = max(_now_us() - start_us, 0)
        totals = self.transfer_totals
        if direction == "INPUT":
            totals["time_send"] += wall_us
        else:
            totals["time_receive"] += wall_us
            totals["bytes_received_files"] += size
        self.transaction(f"WORKER {wid} TRANSFER {direction} {name} {size} {wall_us} {start_us}")

    def receive_started(self, wid: str, name: str) -> None:
        """Worker ``wid`` began sending ``name``: its OUTPUT record gets the wall time from here."""
        self._receiving[(wid, name)] = time.time()

    def task_ready(self, tid: int, category: str, attempt: int, requested: Resources, now: float | None = None) -> None:
        """A submitted task: its READY transaction and debug lines (``now``: its submit time, read
        by the caller; else the clock is read here). Called in the submitting thread, so it only
        notes what the lines say; they are formatted in a batch at the flush, in their place in both
        logs. A burst of submits then costs the user's thread a tuple per task, not two formatted
        lines. Both tuples hold only numbers and strings (the box as its JSON, shared), so the
        cyclic collector stops tracking them at its first look instead of carrying one tracked
        tuple per queued task until the flush (each counts toward the next full collection)."""
        t = time.time() if now is None else now
        states = self._task_states
        old = states.get(tid, C.VINE_TASK_INITIAL)
        states[tid] = C.VINE_TASK_READY
        record = (t, tid, category, attempt, _box_json_shared(requested), old)  # one tuple for both lines
        self._tx_queue.append(record)
        self._debug_queue.append(record)

    def task_running(self, tid: int, wid: str, alloc: dict[str, float]) -> None:
        self.transaction(f"TASK {tid} RUNNING {wid} FIRST_RESOURCES {resources_json(alloc)}")

    def task_retrieved(self, tid: int, result: str, exit_code: int, measured: dict[str, float], wid: str = "",
                       limits: dict[str, float] | None = None) -> None:
        head = f"{_now_us()} {self.pid} TASK {tid} "  # both records at one time: they happen together
        exceeded = resources_json(limits) if limits else "{}"
        self._tx_queue.append(f"{head}WAITING_RETRIEVAL {wid}\n" if wid else f"{head}WAITING_RETRIEVAL\n")
        self._tx_queue.append(f"{head}RETRIEVED {result} {exit_code} {exceeded} {resources_json(measured)}\n")

    def task_done(self, tid: int, result: str, exit_code: int) -> None:
        self.transaction(f"TASK {tid} DONE {result} {exit_code}")

    def graph_file(self, name: str, source: str, size: int) -> None:
        """A declared file: a node named by its cache name, labelled with its source's last part."""
        label = os.path.basename(source.rstrip("/")) or source
        self._graph_queue.append(f'{_dot_id(name)} [shape=box,color=lightblue,label={_dot_id(label)},'
                                 f'tooltip={_dot_id(f"{source} ({size} bytes)")}];\n')

    def graph_task(self, tid: int, command: str, inputs: list[str], outputs: list[str]) -> None:
        """A finished task: a node ``task-N`` labelled with its program, an edge from each input, one to each output."""
        node = f'"task-{tid}"'
        text = f"{node} [color=green,label={_program_label(command)}];\n"
        if inputs or outputs:
            lines = [f"{_dot_id(name)} -> {node};" for name in inputs]
            lines += [f"{node} -> {_dot_id(name)};" for name in outputs]
            text += "\n".join(lines) + "\n"
        self._graph_queue.append(text)

    def performance_due(self, now: float, interval: float) -> bool:
        """Whether :meth:`performance` would consider writing a line at ``now``."""
        return now - self._last_perf >= interval

    def performance(self, stats: dict[str, float], now: float, interval: float, force: bool = False) -> None:
        if not force and now - self._last_perf < interval:
            return
        row = tuple(stats.get(c, 0) for c in PERFORMANCE_COLUMNS[1:])
        if row == self._last_perf_row and not force:
            return
        self._last_perf = now
        self._last_perf_row = row
        self._write(self._perf, f"{_now_us()} " + " ".join(_fmt(v) for v in row) + "\n")

    def close(self, stats: dict[str, float], name: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.performance(stats, time.time(), 0, force=True)
        self.transaction(f"MANAGER {self.pid} END {_now_us() - self.start_us}")
        self._graph_queue.append("}\n")
        self._debug_line("manager end")
        self._write_workflow_info(name)
        with self._lock:
            self._drain_queues()
            for fh in (self._debug, self._tx, self._perf, self._graph):
                fh.close()

    def _write_workflow_info(self, name: str | None) -> None:
        """``vine-logs/workflow.json``: who ran the manager, as an RO-Crate (TaskVine writes one at close;
        ``vine_parse -R`` looks for run directories that have it)."""
        info: dict[str, Any] = {"@id": "managerInfo", "@name": "Manager description"}
        try:
            info["userId"] = getpass.getuser()
        except (KeyError, OSError):  # no login name for this uid (a container): leave it out
            pass
        if name:
            info["managerName"] = name
        software = {"@id": "core", "@type": "SoftwareApplication", "name": "core (a TaskVine-compatible manager)"}
        crate = {"@context": "https://w3id.org/ro/crate/1.1/context", "@graph": [software, info]}
        try:
            with open(os.path.join(self.log_dir, "workflow.json"), "w") as fh:
                json.dump(crate, fh, indent=2)
        except OSError:  # a removed run directory or a full disk must not stop the manager's close
            pass


@functools.lru_cache(maxsize=256)
def _program_label(command: str) -> str:
    # A task node's label: its program's name (a run's tasks share a few commands, or none).
    words = command.split()
    return _dot_id(os.path.basename(words[0]) if words else "")


def _dot_id(text: str) -> str:
    """``text`` as a quoted Graphviz ID (quotes and backslashes escaped, no line breaks)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ") + '"'


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _now_us() -> int:
    return int(time.time() * 1e6)
