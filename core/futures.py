"""Futures over a Manager: ``FuturesExecutor``, ``VineFuture``, ``wait`` and ``as_completed`` (REFERENCE §1.6).

::

    user thread                          collector thread                 manager / workers
    ───────────                          ────────────────                 ─────────────────
    ex.submit(f, x) ─► FuturePythonTask ─────────────────────────────────► runs; result stays on
         │                (temp output)                                    the worker as a temp
         └─► VineFuture ◄── set_result / set_exception ◄── wait_for(its task)
    ex.submit(g, fut) ─► fut's temp is g's input: the value never passes through the manager
    fut.result() ────────► fetches the temp only now (and only once)

A ``VineFuture`` is a real :class:`concurrent.futures.Future`: ``done``, ``running``, ``cancel``,
``add_done_callback``, ``concurrent.futures.wait`` and ``as_completed`` all work on it, and callbacks
fire when the task finishes (not at the first ``result()`` as in TaskVine). ``result()`` re-raises the
function's exception, whose ``__cause__`` carries the remote traceback. ``cancel()`` also stops a
task already running on a worker (``running()`` tells whether it is on one).

A future of a function call whose task has ``enable_temp_output()`` chains the same way (its value
stays on the worker); without it the call's result comes back inline, so a task taking it as an
argument is held back until the call finishes, then gets its value as a small input file.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from . import constants as C
from .api.files import File
from .api.library import FunctionCall, FunctionCallNoResult
from .api.python_task import PythonTask, PythonTaskNoResult, content_buffer
from .errors import ManagerError, TaskError
from .wire.remote import encode_result

ALL_COMPLETED = concurrent.futures.ALL_COMPLETED
FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
TimeoutError = concurrent.futures.TimeoutError  # what result(timeout) raises; TaskVine's module exports it

_LAZY: Any = type("_LazyResult", (), {"__repr__": lambda self: "<result on a worker>"})()
RESULT_PENDING = "result_pending"


def _timeout(timeout: Any) -> float | None:
    if timeout in (None, "wait_forever", C.VINE_WAIT_FOREVER):
        return None
    return float(timeout)


class VineFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The future of one task submitted through a :class:`FuturesExecutor`."""

    def __init__(self, task: PythonTask | FunctionCall) -> None:
        super().__init__()
        self._task = task
        self._executor: FuturesExecutor | None = None
        self._fetch_lock = threading.Lock()

    @property
    def task(self) -> PythonTask | FunctionCall:
        return self._task

    def result(self, timeout: Any = None) -> Any:
        """The task's value (fetched from the worker the first time); re-raises its exception.

        ``timeout`` in seconds (None or ``"wait_forever"``: no limit); TimeoutError after it.
        """
        value = super().result(_timeout(timeout))
        if value is _LAZY:
            value = self._materialize()
        return value

    def exception(self, timeout: Any = None) -> BaseException | None:
        return super().exception(_timeout(timeout))

    def _materialize(self) -> Any:
        with self._fetch_lock:
            if self._result is not _LAZY:
                return self._result
            cls = FunctionCall if isinstance(self._task, FunctionCall) else PythonTask
            value = cls.output.fget(self._task)  # type: ignore[attr-defined]
            if isinstance(value, BaseException):
                raise value
            self._result = value
            return value

    def running(self) -> bool:
        """True while the task runs on a worker."""
        return not self.done() and self._task._state == C.VINE_TASK_RUNNING

    def cancel(self) -> bool:
        """Cancel the task (stopping it if it already runs); False once it has finished."""
        with self._condition:  # re-entrant: the base methods take it too
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            self.set_running_or_notify_cancel()  # wakes concurrent.futures.wait / as_completed waiters
        ex = self._executor
        if ex is not None and self._task.id:
            ex.manager.cancel_by_task_id(self._task.id)
        return True

    # -- as another task's argument ------------------------------------------------------------------
    def _vine_reference(self) -> tuple[File, bool]:
        task = self._task
        if isinstance(task, PythonTask) and task.output_file is not None and task.output_file.kind == "temp":
            return task.output_file, task._serialize_output
        if isinstance(task, FunctionCall) and task.output_file is not None:
            return task.output_file, True
        if not self.done():
            raise TaskError(f"the future of task {task.id} has no file on a worker yet; the executor holds dependents until it is done")
        assert self._executor is not None
        if self.cancelled():
            data = encode_result(False, concurrent.futures.CancelledError(f"task {task.id} was cancelled"))
        else:
            exc = super().exception(0)
            if exc is not None:
                data = encode_result(False, exc, getattr(exc, "__vine_traceback__", None))
            else:
                data = encode_result(True, self.result(0))
        return content_buffer(self._executor.manager, data), True

    def _needs_value(self) -> bool:
        """True when a dependent must wait for this future (it has no temp file to read)."""
        task = self._task
        on_worker = isinstance(task, (PythonTask, FunctionCall)) and task._temp_output and task.output_file is not None
        return not on_worker  # an inline function call, or a task itself still held back (not submitted yet)


def retrieve_output(arg: Any) -> Any:
    """Returns its argument. Every library made by :meth:`FuturesExecutor.create_library_from_functions`
    holds it (as TaskVine's do), so ``ex.future_funcall(lib, "retrieve_output", fut)`` is a call whose
    value is ``fut``'s."""
    return arg


def _futures_in(obj: Any, out: list[VineFuture]) -> None:
    if isinstance(obj, VineFuture):
        out.append(obj)
    elif type(obj) in (list, tuple):
        for x in obj:
            _futures_in(x, out)
    elif type(obj) is dict:
        for x in obj.values():
            _futures_in(x, out)


class _WithFuture:
    """What future tasks share: the future, and ``output`` that waits on it."""

    _future: VineFuture

    @property
    def future(self) -> VineFuture:
        return self._future

    def output(self, timeout: Any = "wait_forever") -> Any:
        """The value (or the exception raised); ``"result_pending"`` if not done within ``timeout``."""
        return _future_output(self._future, timeout)


class FuturePythonTask(_WithFuture, PythonTask):  # type: ignore[misc]
    """A PythonTask whose result stays on the worker (a temp file) until its future's ``result()``."""

    def __init__(self, func: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(func, *args, **kwargs)
        self.enable_temp_output()
        self._future = VineFuture(self)


class FutureFunctionCall(_WithFuture, FunctionCall):  # type: ignore[misc]
    """A FunctionCall with a future."""

    def __init__(self, library_name: str, fn_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(library_name, fn_name, *args, **kwargs)
        self._future = VineFuture(self)


def _future_output(fut: VineFuture, timeout: Any) -> Any:
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        return RESULT_PENDING
    except concurrent.futures.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - output returns the exception, as PythonTask.output does
        return exc


# --- helpers run on workers ------------------------------------------------------------------------------


def _apply_each(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(x) for x in chunk]


def _apply_pairs(fn: Callable[[Any, Any], Any], chunk: list[tuple[Any, Any]]) -> list[Any]:
    return [fn(a, b) for a, b in chunk]


def _concat(parts: list[list[Any]]) -> list[Any]:
    return [x for part in parts for x in part]


def _reduce_chunk(fn: Callable[[list[Any]], Any], arity: int, items: list[Any]) -> Any:
    items = list(items)
    while True:
        items = [fn(items[i:i + arity]) for i in range(0, len(items), arity)]
        if len(items) == 1:
            return items[0]


def _matrix(nrows: int, ncols: int, parts: list[list[Any]]) -> list[list[Any]]:
    flat = [x for part in parts for x in part]
    return [flat[i * ncols:(i + 1) * ncols] for i in range(nrows)]


class FuturesExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs functions as tasks of its own Manager.

    ``FuturesExecutor(manager_name="my-run")`` works on a laptop: with ``factory=True`` (default) it
    starts local workers itself (``opts`` are Factory options such as ``{"min-workers": 4}``; by
    default one 1-core worker per CPU). Pass ``manager=`` to use an existing Manager (whose tasks
    the executor must then be the only one to ``wait`` for). ``port=None`` means 9123, or any free
    port if 9123 is taken.
    """

    def __init__(self, port: Any = None, batch_type: str = "local", manager: Any = None, manager_host_port: str | None = None,
                 manager_name: str | None = None, factory_binary: str | None = None, worker_binary: str | None = None,
                 log_file: str = os.devnull, factory: bool = True, opts: dict[str, Any] | None = None) -> None:
        from .manager.facade import Manager

        self._owns_manager = manager is None
        if manager is None:
            if port is None:
                try:
                    manager = Manager(port=C.VINE_DEFAULT_PORT, name=manager_name)
                except ManagerError:
                    manager = Manager(port=0, name=manager_name)
            else:
                manager = Manager(port=port, name=manager_name)
        self.manager = manager
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._inflight: dict[int, VineFuture] = {}
        self._held: int = 0
        self._shutdown = False
        self._factory: Any = None
        self._local_workers: list[Any] = []
        self._opts: dict[str, Any] = dict(opts or {})
        self._collector = threading.Thread(target=self._collect, name=f"vine-futures-{manager.port}", daemon=True)
        self._collector.start()
        if factory:
            self._start_factory(batch_type, manager_host_port, manager_name, factory_binary, worker_binary, log_file)

    @property
    def port(self) -> int:
        return int(self.manager.port)

    # -- workers -------------------------------------------------------------------------------------
    def _start_factory(self, batch_type: str, host_port: str | None, name: str | None, factory_binary: str | None,
                       worker_binary: str | None, log_file: str) -> None:
        from .deploy.factory import Factory

        fac = Factory(batch_type, manager=self.manager if not host_port else None, manager_host_port=host_port,
                      manager_name=None if (host_port or batch_type == "local") else name,
                      factory_binary=factory_binary, worker_binary=worker_binary, log_file=log_file)
        opts = dict(self._opts)
        if batch_type == "local":
            n = max(1, os.cpu_count() or 1)
            opts.setdefault("min-workers", n)
            opts.setdefault("max-workers", max(int(opts["min-workers"]), n))
            opts.setdefault("cores", 1)
        else:
            opts.setdefault("min-workers", 5)
        for key, value in opts.items():
            setattr(fac, key.replace("-", "_"), value)
        fac.start()
        self._factory = fac

    def set(self, name: str, value: Any) -> None:
        """Set a factory option (``min-workers``, ``cores``, ...), also while it runs."""
        self._opts[name] = value
        if self._factory is not None:
            setattr(self._factory, name.replace("-", "_"), value)

    def get(self, name: str) -> Any:
        if self._factory is not None:
            return getattr(self._factory, name.replace("-", "_"))
        return self._opts.get(name)

    # -- libraries -----------------------------------------------------------------------------------------
    def create_library_from_functions(self, name: str, *function_list: Callable[..., Any], poncho_env: Any = None,
                                      init_command: str | None = None, add_env: bool = True,
                                      hoisting_modules: list[Any] | None = None, import_modules: list[Any] | None = None,
                                      exec_mode: str = "fork", library_context_info: list[Any] | None = None,
                                      library_resources: dict[str, float] | None = None) -> Any:
        """A LibraryTask of ``function_list`` on this executor's manager, for ``future_funcall``.

        The keywords are :meth:`Manager.create_library_from_functions`'s. The library also holds
        :func:`retrieve_output` (as TaskVine's does), unless one of ``function_list`` has that name.
        Install it with :meth:`install_library`.
        """
        return self.manager.create_library_from_functions(
            name, retrieve_output, *function_list, poncho_env=poncho_env, init_command=init_command, add_env=add_env,
            hoisting_modules=hoisting_modules, import_modules=import_modules, exec_mode=exec_mode,
            library_context_info=library_context_info, library_resources=library_resources)

    def install_library(self, libtask: Any) -> None:
        """Install a library on this executor's manager (``Manager.install_library``)."""
        self.manager.install_library(libtask)

    def remove_library(self, name: str) -> None:
        """Remove an installed library (``Manager.remove_library``)."""
        self.manager.remove_library(name)

    # -- building tasks ------------------------------------------------------------------------------------
    def future_task(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FuturePythonTask:
        """A task for ``fn(*args, **kwargs)``, not yet submitted (set resources, then ``submit`` it)."""
        return FuturePythonTask(fn, *args, **kwargs)

    def future_funcall(self, library_name: str, fn_name: str, *args: Any, **kwargs: Any) -> FutureFunctionCall:
        """A call of ``fn_name`` in an installed library, not yet submitted."""
        return FutureFunctionCall(library_name, fn_name, *args, **kwargs)

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> VineFuture:  # type: ignore[override]
        """Run ``fn(*args, **kwargs)`` (or submit a FuturePythonTask / FutureFunctionCall); its future."""
        if isinstance(fn, (FuturePythonTask, FutureFunctionCall)):
            if args or kwargs:
                raise TypeError("submit(task) takes no further arguments; give them to future_task()")
            task = fn
        elif callable(fn):
            task = self.future_task(fn, *args, **kwargs)
        else:
            raise TypeError(f"submit needs a function or a future task, got {type(fn).__name__}")
        return self._submit_task(task)

    def _submit_task(self, task: FuturePythonTask | FutureFunctionCall) -> VineFuture:
        fut = task._future
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            if fut._executor is not None:
                raise TaskError(f"task {task.id} was already submitted")
            fut._executor = self
            deps: list[VineFuture] = []
            _futures_in((task._raw_args, task._raw_kwargs), deps)
            # Once per future however often it appears (f(a, a)): each appearance would add its own
            # done-callback, and the second would submit the task again.
            waiting = list({id(d): d for d in deps if d._needs_value() and not d.done()}.values())
            if not waiting:
                self._send(task)
                return fut
            self._held += 1
            remaining = {id(d) for d in waiting}

        def release(dep: VineFuture) -> None:
            with self._lock:
                remaining.discard(id(dep))
                if remaining:
                    return
                self._held -= 1
                if fut.done() or self._shutdown:  # cancelled while held
                    self._cv.notify_all()
                    return
                try:
                    self._send(task)
                except Exception as exc:  # noqa: BLE001 - surface the failure on the future
                    fut.set_exception(exc)
                self._cv.notify_all()

        for d in waiting:
            d.add_done_callback(release)
        return fut

    def _send(self, task: PythonTask | FunctionCall) -> None:
        """Submit to the manager (caller holds the lock, so ids and bookkeeping stay in step)."""
        fut: VineFuture = task._future  # type: ignore[union-attr]
        if fut.cancelled():
            return
        self.manager.submit(task)
        self._inflight[task.id] = fut
        self._cv.notify_all()

    # -- collecting results ----------------------------------------------------------------------------------
    def _collect(self) -> None:
        m = self.manager
        while True:
            with self._lock:
                while not self._inflight and not self._shutdown:
                    self._cv.wait()
                if self._shutdown and not self._inflight:
                    return
            if m._closed:
                return
            task = m._wait_for(lambda t: t.id in self._inflight, 0.5)
            if task is None:
                continue
            with self._lock:
                fut = self._inflight.pop(task.id, None)
                self._cv.notify_all()
            if fut is not None:
                self._resolve(fut, task)

    def _resolve(self, fut: VineFuture, task: Any) -> None:
        if fut.done():
            return  # cancelled by the user
        try:
            if task.result == "cancelled":  # cancelled through the manager, not the future
                with fut._condition:
                    if not fut.done() and concurrent.futures.Future.cancel(fut):
                        fut.set_running_or_notify_cancel()
                return
            if isinstance(task, FunctionCall) and task.output_file is not None and task.result == "success" and task.exit_code == 0:
                fut.set_result(_LAZY)  # the value stays on the worker until result() is called
            elif isinstance(task, FunctionCall):
                value = FunctionCall.output.fget(task)  # type: ignore[attr-defined]
                if isinstance(value, BaseException):
                    fut.set_exception(value)
                else:
                    fut.set_result(value)
            elif task.result != "success" or task.exit_code != 0:
                value = PythonTask.output.fget(task)  # type: ignore[attr-defined]
                if not isinstance(value, BaseException):
                    value = PythonTaskNoResult(f"task {task.id} ended with '{task.result}' (exit code {task.exit_code})")
                fut.set_exception(value)
            else:
                fut.set_result(_LAZY)
        except concurrent.futures.InvalidStateError:
            pass

    # -- functional helpers ------------------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any], iterable: Iterable[Any],  # type: ignore[override]
            library_name: str | None = None, chunk_size: int = 1) -> VineFuture:
        """A future of ``[fn(x) for x in iterable]``, one task per ``chunk_size`` items."""
        if library_name is not None:
            raise NotImplementedError("map over a library is not supported; use future_funcall")
        items = list(iterable)
        size = max(1, int(chunk_size))
        parts = [self.submit(_apply_each, fn, items[i:i + size]) for i in range(0, len(items), size)]
        return self.submit(_concat, parts)

    def reduce(self, fn: Callable[[list[Any]], Any], iterable: Iterable[Any], library_name: str | None = None,
               chunk_size: int = 2, fn_arity: int = 2) -> VineFuture:
        """A future of reducing ``iterable`` with ``fn``, which gets a list of at most ``fn_arity`` items."""
        if library_name is not None:
            raise NotImplementedError("reduce over a library is not supported; use future_funcall")
        if int(fn_arity) < 2:
            raise ValueError("fn_arity must be at least 2")
        layer: list[Any] = list(iterable)
        if not layer:
            raise ValueError("reduce of an empty sequence")
        arity = int(fn_arity)
        chunk = max(int(chunk_size), arity)
        while True:
            layer = [self.submit(_reduce_chunk, fn, arity, layer[i:i + chunk]) for i in range(0, len(layer), chunk)]
            if len(layer) == 1:
                return layer[0]

    def allpairs(self, fn: Callable[[Any, Any], Any], iterable_rows: Iterable[Any], iterable_cols: Iterable[Any],
                 library_name: str | None = None, chunk_size: int = 1) -> VineFuture:
        """A future of the matrix ``[i][j] = fn(rows[i], cols[j])``."""
        if library_name is not None:
            raise NotImplementedError("allpairs over a library is not supported; use future_funcall")
        rows, cols = list(iterable_rows), list(iterable_cols)
        pairs = [(a, b) for a in rows for b in cols]
        size = max(1, int(chunk_size))
        parts = [self.submit(_apply_pairs, fn, pairs[i:i + size]) for i in range(0, len(pairs), size)]
        return self.submit(_matrix, len(rows), len(cols), parts)

    # -- lifecycle -------------------------------------------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what is pending; wait; stop workers and the manager."""
        with self._lock:
            if self._shutdown and self._factory is None and not self._owns_manager:
                return
            pending = list(self._inflight.values())
        if cancel_futures:
            for fut in pending:
                fut.cancel()
        if wait:
            with self._lock:
                while self._inflight or self._held:
                    self._cv.wait(1.0)
        with self._lock:
            self._shutdown = True
            self._cv.notify_all()
        if self._factory is not None:
            self._factory.stop()
            self._factory = None
        if self._owns_manager:
            self.manager.close()
            self._owns_manager = False
        self._collector.join(5)


def _as_future(f: Any) -> VineFuture | concurrent.futures.Future:  # type: ignore[type-arg]
    if isinstance(f, concurrent.futures.Future):
        return f
    fut = getattr(f, "_future", None)
    if isinstance(fut, VineFuture):
        if fut._executor is None:
            raise ValueError(f"{f!r} was never submitted; submit it to a FuturesExecutor first")
        return fut
    raise TypeError(f"expected a future (or a submitted future task), got {type(f).__name__}")


def wait(fs: Iterable[Any], timeout: Any = None, return_when: str = ALL_COMPLETED) -> Any:
    """``concurrent.futures.wait`` for VineFutures (and submitted future tasks): ``.done``, ``.not_done``."""
    return concurrent.futures.wait([_as_future(f) for f in fs], _timeout(timeout), return_when)


def as_completed(fs: Iterable[Any], timeout: Any = None) -> Iterator[Any]:
    """Futures as they finish; TimeoutError if some are still running after ``timeout`` seconds."""
    return concurrent.futures.as_completed([_as_future(f) for f in fs], _timeout(timeout))


__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "FunctionCallNoResult", "FutureFunctionCall", "FuturePythonTask",
    "FuturesExecutor", "PythonTaskNoResult", "RESULT_PENDING", "TimeoutError", "VineFuture", "as_completed",
    "retrieve_output", "wait",
]
