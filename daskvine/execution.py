"""The submit/wait loop of one ``get``: keys become tasks when their inputs exist.

::

    GraphPlan ──► data keys: values known ──► ready keys ─┬─ alias / local: resolved here at once
                                                          └─ remote: heap (task_priority_mode)
       ┌──────────────────────────────────────────────────────────┘
       ▼  submit (max_pending, submit_per_cycle)        wait_for_tag(this run's tag)
    manager ──► workers ──► finished task ──► value back (targets, checkpoints) or temp kept
       ▲                                       │ dependents whose inputs all exist become ready
       └──────────── retry (worker-side failures, up to ``retries``) ◄─ failed without a result

In function-calls mode with temps a key is submitted as soon as its inputs are *submitted*: core
holds the call until the temps exist and runs it on the producer's worker (call pipelining). A call
whose producer ended without its temp ends "input missing"; it is parked until its inputs finish and
then submitted again, without counting an attempt.

A key's *own* exception (the function raised) is raised at once, with its remote traceback, as
dask's local schedulers do: re-running deterministic code five times only delays the error.
Failures of the cluster (a crash by signal, a lost result, a missing input, a library that would not
start) are retried up to ``retries`` attempts per key, then raise :class:`GraphTaskFailed`.
Workers that disconnect cost nothing here: core re-runs their tasks and re-makes lost temps.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
import time
from typing import TYPE_CHECKING, Any

from core import constants as C
from core.api.library import FunctionCallNoResult
from core.api.python_task import ARGS_NAME, PythonTask, PythonTaskNoResult

from .callbacks import ON_WORKER, CallbackSet, initial_state
from .errors import DaskVineError, GraphTaskFailed, UnpicklableResult
from .graph import GraphPlan
from .options import GetOptions
from .progress import GraphProgress
from .runner import WrappedResult
from .tasks import DependencyArgs, NodeTaskFactory, category_of

if TYPE_CHECKING:
    from .manager import DaskVine

WAIT_SLICE = 1.0  # s: longest block in wait, so the loop notices interrupts and stalls promptly


def _temp_output(t: Any) -> bool:
    out = getattr(t, "output_file", None)
    return out is not None and out.kind == "temp"


class _ReadyKeys(list):  # type: ignore[type-arg]
    """``state["ready"]``: a list as in dask, with O(1) removal of any key."""

    def __init__(self, keys: list[Any]) -> None:
        super().__init__(keys)
        self._at = {k: i for i, k in enumerate(keys)}

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def add(self, key: Any) -> None:
        if key not in self._at:
            self._at[key] = len(self)
            self.append(key)

    def discard(self, key: Any) -> None:
        i = self._at.pop(key, None)
        if i is None:
            return
        last = super().pop()
        if i < len(self):
            self[i] = last
            self._at[last] = i


class GraphRun:
    """One ``get``: the plan, what is known, what is running, and the loop."""

    def __init__(self, manager: DaskVine, plan: GraphPlan, opts: GetOptions, factory: NodeTaskFactory,
                 callbacks: CallbackSet, tag: str) -> None:
        self.m = manager
        self.plan = plan
        self.opts = opts
        self.factory = factory
        self.cbs = callbacks
        self.tag = tag
        self.lazy = opts.lazy_transfers and factory.temps_possible
        self.dsk = {k: plan.graph[k] for k in plan.order}
        self.values: dict[Any, Any] = {}
        self.refs: dict[Any, Any] = {}  # key -> the finished task holding its value as a temp
        self.unfinished = {k: len(d) for k, d in plan.dependencies.items()}
        self.in_flight: dict[int, Any] = {}  # task id -> key
        self.attempts: collections.Counter[Any] = collections.Counter()
        self.made: list[Any] = []  # every task submitted, for cleanup
        self.heap: list[tuple[float, int, Any]] = []
        self.seq = itertools.count()
        self.local_queue: collections.deque[Any] = collections.deque()
        self.category_time: dict[str, tuple[int, float]] = {}
        self.remaining = 0
        self.prune_count: dict[Any, int] = {}
        self.prune_watchers: dict[Any, list[Any]] = collections.defaultdict(list)
        self.progress: GraphProgress | None = None
        data = {}
        for k in plan.order:
            if plan.kinds[k] == "data":
                data[k] = plan.graph[k]()
        self.values.update(data)
        for k, d in plan.dependencies.items():
            self.unfinished[k] = sum(1 for x in d if x not in data)
        # Submit-ahead (function calls with temps): a consumer is submitted once its inputs are
        # *submitted*, not finished; core holds it until the temps exist and can start it on the
        # producer's worker with no round trip through here (call pipelining).
        self.eager = self.lazy and opts.task_mode == "function-calls"
        self.blocking = dict(self.unfinished)  # inputs neither finished nor submitted-ahead
        self.eager_counted: set[Any] = set()  # keys whose submission already counted for their dependents
        self.submitted: set[Any] = set()
        self.parked: set[Any] = set()  # submitted ahead, ended "input missing": wait for every input now
        self.state = initial_state(plan.dependencies, plan.dependents, data)
        self.state["ready"] = _ReadyKeys(self.state["ready"])
        remote_consumers: dict[Any, int] = collections.Counter()
        for k in plan.remote_keys:
            for d in plan.dependencies[k]:
                remote_consumers[plan.source_of(d)] += 1
        self.dependency_arg = DependencyArgs(manager, self.values, self.refs, remote_consumers, plan.source_of)
        self.remaining = len(plan.order) - len(data)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict[Any, Any]:
        """Compute every planned key; returns the values of the requested keys (aliases resolved)."""
        succeeded = False
        try:
            self.cbs.start(self.dsk)
            self.cbs.start_state(self.dsk, self.state)
            self.progress = GraphProgress(self.remaining, self.opts.progress_label, self.opts.progress_disable)
            if self.lazy:
                self._plan_pruning()
            initial, self.state["ready"] = list(self.state["ready"]), _ReadyKeys([])
            for k in initial:
                self._became_ready(k)
            while self.remaining:
                self._resolve_local()
                if not self.remaining:
                    break
                self._submit_ready()
                if not self.in_flight:
                    raise DaskVineError(f"{self.remaining} key(s) can never run: nothing is running and nothing is ready "
                                        "(a bug in DaskVine; please report the graph)")
                t = self.m.wait_for_tag(self.tag, WAIT_SLICE)
                while t is not None:
                    self._finished(t)
                    t = self.m.wait_for_tag(self.tag, 0) if self.in_flight else None
            succeeded = True
            return {k: self.values[self.plan.source_of(k)] for k in self.plan.targets}
        except BaseException:
            self._cancel_in_flight()
            raise
        finally:
            try:
                self._cleanup()
            finally:
                if self.progress is not None:
                    self.progress.close()
                self.cbs.finish(self.dsk, self.state, not succeeded)

    def _became_ready(self, key: Any) -> None:
        if key in self.state["ready"] or key in self.submitted:
            return  # already queued: its last input may count twice (finished after submitted-ahead)
        kind = self.plan.kinds[key]
        self.state["waiting"].pop(key, None)
        self.state["ready"].add(key)
        if kind in ("alias", "local"):
            self.local_queue.append(key)
            return
        heapq.heappush(self.heap, (-self._priority(key), next(self.seq), key))

    def _priority(self, key: Any) -> float:
        mode = self.opts.task_priority_mode
        n = next(self.seq)
        if mode == "FIFO":
            return -n
        if mode == "LIFO":
            return n
        if mode == "random":
            return random.random()
        if mode == "depth-first":
            return self.plan.depth[key]
        if mode == "breadth-first":
            return -self.plan.depth[key]
        if mode in ("longest-category-first", "shortest-category-first"):
            count, mean = self.category_time.get(category_of(key), (0, 0.0))
            if count == 0:
                return float("inf")  # unmeasured categories first, so their times become known
            return mean if mode == "longest-category-first" else -mean
        # largest-input-first: the node with the most inputs (their sizes are not known here) first
        return len(self.plan.dependencies[key])

    def _resolve_local(self) -> None:
        """Aliases and pure containers: resolved in the manager, in dependency order, no recursion."""
        while self.local_queue:
            key = self.local_queue.popleft()
            self.state["ready"].discard(key)
            self.state["running"].add(key)
            self.cbs.pretask(key, self.dsk, self.state)
            if self.plan.kinds[key] == "alias":
                target = self.plan.graph[key].target
                if target in self.values:
                    self.values[key] = self.values[target]
                else:
                    self.refs[key] = self.refs[target]
            else:
                node = self.plan.graph[key]
                self.values[key] = node({d: self.values[d] for d in self.plan.dependencies[key]})
            self._key_done(key, "manager")

    def _submit_ready(self) -> None:
        budget = self.opts.submit_per_cycle or len(self.heap)
        cap = self.opts.max_pending
        while self.heap and budget > 0 and (cap is None or len(self.in_flight) < cap):
            neg_priority, _, key = heapq.heappop(self.heap)
            self._submit(key, -neg_priority)
            budget -= 1

    def _submit(self, key: Any, priority: float) -> None:
        deps = tuple(self.plan.dependencies[key])
        args = [self.dependency_arg(d) for d in deps]
        keep = self.lazy and key not in self.plan.needs_value
        t = self.factory.build(key, self.plan.graph[key], deps, args, keep, priority)
        self.m.submit(t)
        self.made.append(t)
        self.in_flight[t.id] = key
        self.submitted.add(key)
        st = self.state
        st["ready"].discard(key)
        st["waiting"].pop(key, None)
        st["running"].add(key)
        if self.opts.vine_submit is not None:
            self.opts.vine_submit(key, t)
        self.cbs.pretask(key, self.dsk, st)
        if keep and self.eager:
            self.refs[key] = t  # consumers may take it as an argument before it finishes
            if key not in self.eager_counted:
                self.eager_counted.add(key)
                for c in self.plan.dependents[key]:
                    self.blocking[c] -= 1
                    if self.blocking[c] == 0 and self.plan.kinds[c] == "remote" and c not in self.submitted \
                            and c not in self.parked:
                        self._became_ready(c)

    # -- outcomes ---------------------------------------------------------------------------------------
    def _finished(self, t: Any) -> None:
        key = self.in_flight.pop(t.id, None)
        if key is None:
            return
        if t.result_code != C.VINE_RESULT_SUCCESS:
            if t.result_code == C.VINE_RESULT_INPUT_MISSING and self._park(key):
                return
            self._retry(key, t)
            return
        own_error = self._own_exception(t)
        if own_error is not None:
            self._raise_for(key, t, own_error)
        if isinstance(t, PythonTask) and t.exit_code != 0:  # ended without a result (sys.exit, killed)
            self._retry(key, t)
            return
        if _temp_output(t):
            self.refs[key] = t
        else:
            value = t.output
            if isinstance(value, (PythonTaskNoResult, FunctionCallNoResult)):
                self._retry(key, t)
                return
            if type(value) is WrappedResult:
                self.opts.wrapper_proc(value.info)
                value = value.value
            self.values[key] = value
        if self.opts.vine_done is not None:
            self.opts.vine_done(key, t)
        self.factory.observe(t)
        self._time_category(t)
        if self.opts.verbose:
            print(f"daskvine: {key!r} done on {t.hostname or t.addrport} (task {t.id})")
        self._key_done(key, t.addrport or t.hostname)

    def _own_exception(self, t: Any) -> BaseException | None:
        """The exception the node's own code raised, or None. Never fetches a temp that succeeded."""
        if _temp_output(t) and not t.exit_code:
            return None
        out = t.output
        if isinstance(out, BaseException) and getattr(out, "__vine_traceback__", None) is not None:
            return out
        return None

    def _raise_for(self, key: Any, t: Any, exc: BaseException) -> None:
        tb = getattr(exc, "__vine_traceback__", "") or ""
        if isinstance(exc, RuntimeError) and "cannot be pickled" in str(exc) and "encode_" in tb:
            raise UnpicklableResult(f"dask key {key!r} returned a value that cannot be pickled, so it cannot leave "
                                    f"worker {t.hostname}: {exc}") from exc
        if "load_reference" in tb:
            culprit = self._failed_input(key)
            if culprit is not None:
                ckey, cexc = culprit
                if isinstance(cexc, RuntimeError) and "cannot be pickled" in str(cexc):
                    raise UnpicklableResult(f"dask key {ckey!r} returned a value that cannot be pickled, so it cannot "
                                            f"reach its consumer {key!r}: {cexc}") from cexc
        if hasattr(exc, "add_note"):
            exc.add_note(f"(raised by dask key {key!r}, vine task {t.id} on {t.hostname})")
        raise exc

    def _failed_input(self, key: Any) -> tuple[Any, BaseException] | None:
        """Which temp input of ``key`` holds a failure instead of a value (fetched only on this error path)."""
        from core.wire.remote import decode_result

        for d in self.plan.dependencies[key]:
            src = self.refs.get(d)
            if src is None:
                continue
            try:
                ok, value, _ = decode_result(self.m.fetch_file(src.output_file, timeout=60, binary=True))
            except Exception:  # noqa: BLE001, S112 - best effort on an error path
                continue
            if not ok:
                return d, value
        return None

    def _park(self, key: Any) -> bool:
        """A key submitted ahead whose producer ended without its temp (it failed, or is being
        retried): wait for all its inputs to finish, then submit it again. No attempt is counted.
        False if every input has finished (then the missing input is a real failure)."""
        finished = self.state["finished"]
        pending = {d for d in self.plan.dependencies[key] if d not in finished and d not in self.values}
        if not pending:
            return False
        self.submitted.discard(key)
        self.parked.add(key)
        self.state["running"].discard(key)
        self.state["waiting"][key] = pending
        return True

    def _retry(self, key: Any, t: Any) -> None:
        self.attempts[key] += 1
        if self.attempts[key] >= self.opts.retries:
            why = t.output
            raise GraphTaskFailed(f"dask key {key!r} failed {self.attempts[key]} time(s) (retries={self.opts.retries}); "
                                  f"the last attempt, task {t.id} on {t.hostname}, ended with '{t.result}' "
                                  f"(exit code {t.exit_code}): {why}")
        self.state["running"].discard(key)
        self.state["ready"].add(key)
        heapq.heappush(self.heap, (-float("inf"), next(self.seq), key))  # a retry goes first

    def _time_category(self, t: Any) -> None:
        start, end = t.get_metric("time_when_submitted"), t.get_metric("time_when_done")
        if start and end:
            n, mean = self.category_time.get(t.category, (0, 0.0))
            runtime = (end - start) / 1e6
            self.category_time[t.category] = (n + 1, runtime if n == 0 else 0.8 * mean + 0.2 * runtime)

    def _key_done(self, key: Any, worker: Any) -> None:  # noqa: C901 - the bookkeeping of one finished key, which must stay in one pass
        st = self.state
        st["running"].discard(key)
        st["finished"].add(key)
        value = self.values.get(key, ON_WORKER)
        st["cache"][key] = value
        for d in self.plan.dependencies[key]:
            wd = st["waiting_data"].get(d)
            if wd is not None:
                wd.discard(key)
                if not wd and d not in self.plan.needs_value:
                    st["released"].add(d)
        self.remaining -= 1
        self.cbs.posttask(key, value, self.dsk, st, worker)
        if self.progress is not None:
            self.progress.advance()
        counted = key in self.eager_counted
        for c in self.plan.dependents[key]:
            self.unfinished[c] -= 1
            if not counted:
                self.blocking[c] -= 1
            w = st["waiting"].get(c)
            if w is not None:
                w.discard(key)
                if not w:
                    del st["waiting"][c]
            if c in self.submitted:
                continue
            if c in self.parked or self.plan.kinds[c] != "remote":
                if self.unfinished[c] == 0:
                    self.parked.discard(c)
                    self._became_ready(c)
            elif self.blocking[c] == 0:
                self._became_ready(c)
        for s in self.prune_watchers.pop(key, ()):
            self.prune_count[s] -= 1
            if self.prune_count[s] == 0:
                src = self.refs.get(s)
                if src is not None and self.plan.kinds[s] == "remote":
                    self.m.prune_file(src.output_file)

    # -- pruning and cleanup ----------------------------------------------------------------------------
    def _plan_pruning(self) -> None:
        """For each temp: the consumers, and theirs down to ``prune_depth`` more levels, that must
        finish before it is pruned (aliases count as the level of what they stand for)."""
        plan = self.plan
        levels = self.opts.prune_depth + 1
        for s in plan.remote_keys:
            if s in plan.needs_value:
                continue
            seen: set[Any] = set()
            frontier = [s]
            for _ in range(levels):
                nxt = []
                for k in frontier:
                    stack = list(plan.dependents[k])
                    while stack:
                        x = stack.pop()
                        if x in seen:
                            continue
                        seen.add(x)
                        if plan.kinds[x] == "alias":
                            stack.extend(plan.dependents[x])
                        else:
                            nxt.append(x)
                frontier = nxt
                if not frontier:
                    break
            if seen:
                self.prune_count[s] = len(seen)
                for x in seen:
                    self.prune_watchers[x].append(s)

    def _cancel_in_flight(self) -> None:
        """Cancel this graph's tasks and collect them, so the manager is clean for the next ``get``."""
        for tid in list(self.in_flight):
            self.m.cancel_by_task_id(tid)
        deadline = time.monotonic() + 30
        while self.in_flight and time.monotonic() < deadline:
            t = self.m.wait_for_tag(self.tag, 1.0)
            if t is not None:
                self.in_flight.pop(t.id, None)

    def _cleanup(self) -> None:
        """Forget this graph's temps, shared values and kept argument buffers: workers delete them."""
        self.dependency_arg.release()
        for t in self.made:
            out = getattr(t, "output_file", None)
            if out is not None and out.kind == "temp":
                self.m.undeclare_file(out)
                for mount in t.inputs:
                    if mount.remote_name == ARGS_NAME:
                        self.m.undeclare_file(mount.file)
