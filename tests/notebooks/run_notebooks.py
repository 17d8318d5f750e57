"""Execute the notebooks of notebooks/ in a real Jupyter kernel and say what they left running.

Used by tests/notebooks/test_notebooks.py, and runnable by hand::

    .venv/bin/python tests/notebooks/run_notebooks.py                       # every notebook
    .venv/bin/python tests/notebooks/run_notebooks.py notebooks/01-quickstart.ipynb --save-executed out/
    .venv/bin/python tests/notebooks/run_notebooks.py --keep-workdir /tmp/nb     # keep logs and files

Each notebook runs in a kernel of this Python (kernel name ``python3``: ipykernel's spec, whose
``python`` jupyter_client replaces with this interpreter; this venv's ``bin`` comes first on PATH),
with a fresh temporary directory as its working directory, cell after cell, under one deadline
for the whole notebook. A cell that raises stops the run (nbclient's ``CellExecutionError``).

While it runs, a watcher thread samples the kernel's descendant processes every 0.2 s and
remembers each one (workers, factories, libraries, Parsl's processes). After the last cell,
with the kernel still alive, anything it remembered that still runs was left behind by the
notebook: the run reports it, then kills it, so neither a failing nor a leaky notebook leaves
processes on the machine. The kernel's environment also carries ``VINE_NOTEBOOK_RUN=<id>``; once
the kernel has shut down, any process still carrying it (one that left the kernel's tree by a
double fork, say) is left behind too, and killed.

A cell that is still running when the notebook has used two thirds of its budget, and again
just before the deadline interrupts it, gets a ``py-spy dump`` of the kernel (every thread's
Python stack): the dumps are in ``NotebookRun.stack_dumps``, which ``main`` prints and the
tests put in their failure message, so a stalled CI run shows where it was stuck.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

import nbformat
import psutil
import zmq
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")

# A process the notebook's last cell told to stop may take a moment to be gone (a worker that
# was told to exit finishes its frame and removes its workspace). Past this it was left behind.
EXIT_GRACE_S = 5.0

# A cell still running at this share of the notebook's budget is looked into (py-spy dump), and
# again this many seconds before the deadline interrupts it.
FIRST_DUMP_SHARE = 2 / 3
LAST_DUMP_BEFORE_S = 3.0
PY_SPY_TIMEOUT_S = 20.0

# The client waits for the kernel's messages in fresh polls of at most this long (SlicedReceive).
RECEIVE_SLICE_S = 1.0

# The environment variable that marks the kernel and everything it starts.
MARKER_VARIABLE = "VINE_NOTEBOOK_RUN"

# run.summary() of every notebook executed in this process (printed at the end of a pytest run).
RUN_SUMMARIES: list[str] = []


def notebook_paths() -> list[str]:
    """The notebooks shipped in notebooks/, in their numbered order."""
    return sorted(os.path.join(NOTEBOOK_DIR, n) for n in os.listdir(NOTEBOOK_DIR) if n.endswith(".ipynb"))


def is_worker(cmdline: list[str]) -> bool:
    """A ``vine_worker``: ``python -m core.worker ...`` (how the Factory starts it) or the console script."""
    return "core.worker" in cmdline or any(os.path.basename(arg) == "vine_worker" for arg in cmdline[:2])


@dataclass
class SeenProcess:
    process: psutil.Process
    cmdline: list[str]

    def describe(self) -> str:
        return f"pid {self.process.pid}: {' '.join(self.cmdline)[:200]}"

    def running(self) -> bool:
        # is_running() also compares the start time, so a recycled pid is not mistaken for ours.
        try:
            return self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


class DescendantWatcher(threading.Thread):
    """Remembers every process that descends from ``root_pid`` while it runs (sampled)."""

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        super().__init__(name=f"watch-{root_pid}", daemon=True)
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.seen: dict[tuple[int, float], SeenProcess] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def sample(self) -> None:
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in children:
            try:
                key = (proc.pid, proc.create_time())
                cmdline = proc.cmdline()
                with self._lock:
                    known = self.seen.get(key)
                    if known is None:
                        self.seen[key] = SeenProcess(proc, cmdline)
                    elif cmdline and known.cmdline != cmdline:
                        # First seen between its fork and its exec (with its parent's command line):
                        # it is what it became, a worker or the program a shell started.
                        known.cmdline = cmdline
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue  # it ended between the listing and the question

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self.sample()

    def snapshot(self) -> list[SeenProcess]:
        with self._lock:
            return list(self.seen.values())


def py_spy_dump(pid: int) -> str:
    """Every thread's Python stack in process ``pid`` (``py-spy dump``), or why there is none."""
    exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(exe):
        exe = shutil.which("py-spy") or ""
    if not exe:
        return "(no stack: py-spy is not installed next to this Python nor on PATH)"
    try:
        out = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=PY_SPY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"(no stack: py-spy dump --pid {pid} took longer than {PY_SPY_TIMEOUT_S:.0f} s)"
    text = out.stdout.strip()
    if out.returncode != 0 or not text:
        text = f"{text}\n(py-spy dump --pid {pid} exited {out.returncode}: {out.stderr.strip()})".strip()
    return text


def main_thread_idle(stack: str) -> bool:
    """True when a ``py-spy dump`` of a kernel shows its main thread running no cell code.

    The kernel runs a cell's code on its main thread under IPython's ``run_cell``; without it the
    main thread waits in its event loop: the cell has ended in the kernel even if the client is
    still waiting for its reply.
    """
    blocks = stack.split("\nThread ")
    main = [b for b in blocks if '"MainThread"' in b.split("\n", 1)[0]]
    return bool(main) and "run_cell" not in main[0]


class StallDumper(threading.Thread):
    """Dumps the kernel's stacks when one cell runs into the last third of the notebook's budget.

    ``cell_started(index)`` arms it for a cell, ``cell_ended()`` disarms it. A dump is taken once
    the notebook has used ``FIRST_DUMP_SHARE`` of its budget during the cell, and once more
    ``LAST_DUMP_BEFORE_S`` before the deadline (nbclient interrupts the cell at the deadline).
    """

    def __init__(self, pid: int, start: float, deadline: float) -> None:
        super().__init__(name=f"stall-dump-{pid}", daemon=True)
        self.pid = pid
        self.notebook_start = start
        self.moments = sorted([start + FIRST_DUMP_SHARE * (deadline - start), deadline - LAST_DUMP_BEFORE_S])
        self.dumps: list[str] = []
        self._cell: int | None = None
        self._taken = 0  # how many of self.moments are behind us
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = False

    def cell_started(self, index: int) -> None:
        with self._changed:
            self._cell = index
            self._changed.notify()

    def cell_ended(self) -> None:
        with self._changed:
            self._cell = None
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self.join(PY_SPY_TIMEOUT_S + 5)

    def run(self) -> None:
        with self._changed:
            while not self._stopped and self._taken < len(self.moments):
                now = time.monotonic()
                due = self.moments[self._taken]
                if now < due:
                    self._changed.wait(due - now)
                    continue
                self._taken += 1
                cell = self._cell
                if cell is None:
                    continue  # between cells at that moment: nothing is stuck
                self._lock.release()  # py-spy takes a while; cell_ended must not wait for it
                try:
                    stack = py_spy_dump(self.pid)
                finally:
                    self._lock.acquire()
                idle = (" -- BUT THE KERNEL IS IDLE (no cell code on its main thread): the cell ended in the kernel "
                        "and its reply has not reached this client") if main_thread_idle(stack) else ""
                self.dumps.append(f"--- py-spy dump of the kernel (pid {self.pid}) {due - self.notebook_start:.0f} s into the notebook, "
                                  f"cell {cell} still running{idle}:\n{stack}")


class SlicedReceive:
    """A kernel client channel's ``get_msg``, waiting in fresh polls of at most ``RECEIVE_SLICE_S``.

    Seen here (notebook 02, 4 runs in about 36 on a loaded machine, ipykernel 7.4, nbclient 0.11):
    the kernel had sent cell 7's reply and gone idle (py-spy; the reply's and the idle status's
    timestamps), it answered a second client's kernel_info at once, yet nbclient's one long wait
    on its socket did not return until the budget's interrupt made it poll again, and the reply
    was read at once. The likely cause is a missed wake-up (a ZMQ socket's descriptor signals
    edges; a poll that misses one sleeps on a readable socket); with fresh polls of a second each,
    28 runs in a row had no stall. ``missed`` counts the polls that timed out although the socket
    was readable (ZMQ_EVENTS): direct evidence of a lost wake-up, when it happens.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.receive = channel.get_msg
        self.missed = 0

    async def __call__(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            step = RECEIVE_SLICE_S if left is None else max(0.0, min(RECEIVE_SLICE_S, left))
            try:
                return await self.receive(timeout=step)  # type: ignore[no-any-return]
            except Empty:
                if self.channel.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    self.missed += 1
                if left is not None and left <= RECEIVE_SLICE_S:
                    raise


@dataclass
class NotebookRun:
    """What one execution of a notebook did."""

    path: str
    workdir: str
    seconds: float = 0.0
    error: BaseException | None = None
    seen: list[SeenProcess] = field(default_factory=list)
    left_behind: list[SeenProcess] = field(default_factory=list)
    kernel_executable: str = ""
    stack_dumps: list[str] = field(default_factory=list)  # the kernel's stacks while a cell ran long (StallDumper)
    missed_wakeups: int = 0  # polls of the kernel's sockets that timed out on a waiting message (SlicedReceive)
    notebook: nbformat.NotebookNode | None = None

    @property
    def workers_seen(self) -> list[SeenProcess]:
        return [p for p in self.seen if is_worker(p.cmdline)]

    def summary(self) -> str:
        name = os.path.basename(self.path)
        status = "ok" if self.error is None else f"FAILED: {type(self.error).__name__}"
        left = f", {len(self.left_behind)} process(es) left behind" if self.left_behind else ""
        missed = f", {self.missed_wakeups} missed wake-up(s) of the client's sockets" if self.missed_wakeups else ""
        return f"{name}: {status} in {self.seconds:.1f} s, {len(self.workers_seen)} worker process(es) seen{left}{missed}"


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this one, with this venv's scripts first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("MPLBACKEND", None)  # a CI's MPLBACKEND=Agg would hide the plots; the kernel picks inline
    return env


def run_notebook(path: str, workdir: str, timeout: float = 240.0, record: bool = True) -> NotebookRun:
    """Execute ``path`` in a fresh ``python3`` kernel whose working directory is ``workdir``.

    ``timeout`` bounds the whole notebook: each cell gets what is left of it. The executed
    notebook (with outputs) is in the result; the file on disk is not changed. ``record`` adds
    the run's summary line to RUN_SUMMARIES.
    """
    nb = nbformat.read(path, as_version=4)
    run = NotebookRun(path=path, workdir=workdir, notebook=nb)
    client = NotebookClient(nb, timeout=int(timeout), kernel_name="python3",
                            resources={"metadata": {"path": workdir}}, store_widget_state=True,
                            interrupt_on_timeout=True)  # a cell past the budget gets KeyboardInterrupt, the kernel ends cleanly
    client.reset_execution_trackers()
    start = time.monotonic()
    deadline = start + timeout
    # Every process the kernel starts inherits this variable (unless a program clears its children's
    # environment), so one that escaped the kernel's tree (double-forked, reparented) is found too.
    marker = uuid.uuid4().hex
    env = kernel_env()
    env[MARKER_VARIABLE] = marker
    with client.setup_kernel(env=env, cwd=workdir):
        pid = client.km.provisioner.pid  # type: ignore[union-attr]
        receivers = [SlicedReceive(client.kc.shell_channel), SlicedReceive(client.kc.iopub_channel)]  # type: ignore[union-attr]
        client.kc.shell_channel.get_msg, client.kc.iopub_channel.get_msg = receivers  # type: ignore[union-attr]
        run.kernel_executable = psutil.Process(pid).cmdline()[0]
        watcher = DescendantWatcher(pid)
        watcher.start()
        dumper = StallDumper(pid, start, deadline)
        dumper.start()
        try:
            for index, cell in enumerate(nb.cells):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{os.path.basename(path)} ran past its {timeout:.0f} s budget before cell {index}")
                client.timeout = max(1, math.ceil(left))
                cell_start = time.monotonic()
                dumper.cell_started(index)
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as exc:
                    # Interrupted by the budget (nbclient's KeyboardInterrupt at its timeout), not failed by itself.
                    if exc.ename == "KeyboardInterrupt" and time.monotonic() - cell_start >= client.timeout:
                        raise TimeoutError(f"{os.path.basename(path)}: cell {index} ran past the notebook's {timeout:.0f} s budget") from exc
                    raise
                finally:
                    dumper.cell_ended()
                watcher.sample()
        except (CellExecutionError, TimeoutError, RuntimeError) as exc:
            # nbclient's cell timeout is a TimeoutError; a dead kernel is a DeadKernelError (RuntimeError).
            run.error = exc
        finally:
            run.seconds = time.monotonic() - start
            dumper.stop()
            run.stack_dumps = list(dumper.dumps)
            run.missed_wakeups = sum(r.missed for r in receivers)
            watcher.stop()
            run.seen = watcher.snapshot()
            # Also what left the kernel's tree (double-forked, reparented), looked for now: the kernel's
            # shutdown may signal its whole process group (jupyter_client does when the kernel is slow to
            # exit), which would end such a process before the search below could see it was left.
            known = {p.process.pid for p in run.seen} | {pid}
            escaped = [p for p in marked_processes(marker) if p.process.pid not in known]
            run.left_behind = _left_behind(run.seen + escaped)
            _kill(run.left_behind)
    # The kernel has shut down: whatever still carries the marker outlived the notebook and its kernel.
    strays = _left_behind(marked_processes(marker))
    _kill(strays)
    run.left_behind += [p for p in strays if all(p.process.pid != q.process.pid for q in run.left_behind)]
    if run.error is not None:  # what each cell printed, to look into the failure
        nbformat.write(nb, os.path.join(workdir, "executed-" + os.path.basename(path)))
    if record:
        RUN_SUMMARIES.append(run.summary())
    return run


def marked_processes(marker: str) -> list[SeenProcess]:
    """Running processes whose environment holds ``MARKER_VARIABLE=marker``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER_VARIABLE) == marker:
                found.append(SeenProcess(proc, proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return found


def _left_behind(seen: list[SeenProcess]) -> list[SeenProcess]:
    deadline = time.monotonic() + EXIT_GRACE_S
    alive = [p for p in seen if p.running()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if p.running()]
    for p in alive:  # what each is now: one last seen between its fork and its exec has exec'd since
        try:
            p.cmdline = p.process.cmdline() or p.cmdline
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return alive


def _kill(procs: list[SeenProcess]) -> None:
    for p in procs:
        try:
            p.process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs([p.process for p in procs], timeout=5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Execute notebooks in a real Jupyter kernel; fail on a failing cell or a process left behind.")
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (default: every notebook in notebooks/)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds for each whole notebook (default 240)")
    ap.add_argument("--save-executed", metavar="DIR", help="also write each executed notebook, with its outputs, into DIR")
    ap.add_argument("--keep-workdir", metavar="DIR", help="run each notebook in DIR/<notebook name> and keep what it wrote "
                                                           "(logs in vine-run-info/); default: a temporary directory")
    args = ap.parse_args(argv)
    failures = 0
    for path in args.notebooks or notebook_paths():
        if args.keep_workdir:
            workdir = os.path.join(os.path.abspath(args.keep_workdir), os.path.splitext(os.path.basename(path))[0])
            os.makedirs(workdir, exist_ok=False)
            run = run_notebook(os.path.abspath(path), workdir, args.timeout)
        else:
            with tempfile.TemporaryDirectory(prefix="vine-notebook-") as workdir:
                run = run_notebook(os.path.abspath(path), workdir, args.timeout)
        print(run.summary())
        if run.error is not None:
            print(str(run.error)[-3000:], file=sys.stderr)
        for dump in run.stack_dumps:
            print(dump, file=sys.stderr)
        for p in run.left_behind:
            print(f"  left behind: {p.describe()}", file=sys.stderr)
        failures += run.error is not None or bool(run.left_behind)
        if args.save_executed and run.notebook is not None:
            os.makedirs(args.save_executed, exist_ok=True)
            nbformat.write(run.notebook, os.path.join(args.save_executed, os.path.basename(path)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
