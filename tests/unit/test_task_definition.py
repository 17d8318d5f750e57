"""Unit tests for the task definition inside ``task`` and ``minitask`` messages (core.wire.messages
records): every shape round-trips through a frame; a missing or mistyped field anywhere inside is a
RemoteProtocolError naming its path; definitions are frozen; and each shape is made from real Task
objects (``Task._task_spec`` with what the manager adds, core/manager/links.py). No sockets, no workers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator

import pytest

from core import Manager, Task
from core.api.library import FunctionCall, LibraryTask
from core.api.python_task import FUNCTION_NAME, PythonTask
from core.errors import RemoteProtocolError
from core.manager.links import minitask_definition, monitor_options, output_refs
from core.state.resources import Resources
from core.state.spec import FileSpec, MinitaskSpec, MountSpec
from core.wire import messages as M
from core.wire.protocol import FrameDecoder, encode_message

INPUTS = (M.InputRef("file-1-data", "data.csv", 0, "file", 0o644, symlink=True),
          M.InputRef("buffer-2-fn", ".vine_function", 1, "buffer", in_place=True),
          M.InputRef("url-3", "page.html", 2, "url"))
OUTPUTS = (M.OutputRef("file-4-out", "out.txt", 0, "file", send_back=True, watch=True),
           M.OutputRef("temp-5", "t.bin", 1, "temp", failure_only=True),
           M.OutputRef("buffer-6", "b", 0, "buffer", send_back=True, success_only=True))
COMMON: dict[str, Any] = dict(resources={"cores": 1.0, "memory": 100.0}, inputs=INPUTS, outputs=OUTPUTS,
                              env={"A": "1", "UNSET": None}, environments=("poncho-env",), time_max=2.5,
                              time_end=1_900_000_000_000_000, stdout_limit=1 << 30,
                              monitor=M.MonitorOptions(watchdog=True, interval=0.5), queued=True)

SHAPES: dict[str, M.Message] = {
    "command": M.Task(M.TaskDefinition(1, "cat data.csv > out.txt", **COMMON)),
    "python": M.Task(M.TaskDefinition(2, "python3 .vine_runner.py task", **COMMON, python=M.PythonRun(
        ".vine_function", ".vine_args", ".vine_result", False, ("numpy", "parsl"), result_inline=True, args_inline="gASV"))),
    "function call": M.Task(M.TaskDefinition(3, "function_call lib f", **COMMON, library_instance=-4, function_call=M.CallRef(
        "lib", "f", args="gASV", args_file=".vine_args", mode="direct", output=".vine_result"))),
    "library start": M.Task(M.TaskDefinition(-4, "python3 .vine_runner.py library", **COMMON,
                                             library=M.LibraryStart("lib", "direct", 3))),
    "mini-task": M.Minitask("file-7", M.MinitaskDefinition("tar xzf a.tgz", "a", INPUTS[:1], {"X": "y"}), 1),
    "bare command": M.Task(M.TaskDefinition(5, "true")),
}


def _through_a_frame(msg: M.Message) -> M.Message:
    frames = FrameDecoder().feed(encode_message(msg))
    assert len(frames) == 1
    return frames[0].message


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_round_trips(name: str) -> None:
    msg = SHAPES[name]
    back = _through_a_frame(msg)
    assert back == msg and type(back) is type(msg)
    defn = back.task  # type: ignore[attr-defined]
    assert isinstance(defn.inputs, tuple) and all(type(i) is M.InputRef for i in defn.inputs)
    if isinstance(defn, M.TaskDefinition):
        assert isinstance(defn.outputs, tuple) and isinstance(defn.environments, tuple)


def test_defaults_are_not_sent_and_come_back() -> None:
    header = SHAPES["bare command"].to_header()
    assert header == {"type": "task", "task": {"id": 5, "command": "true"}}
    back = M.decode(header)
    assert isinstance(back, M.Task)
    assert back.task.inputs == () and back.task.python is None and back.task.stdout_limit is None
    assert back.task.env == {} and back.task.resources == {}
    other = M.decode({"type": "task", "task": {"id": 6, "command": "true"}})
    assert isinstance(other, M.Task) and other.task.env is not back.task.env  # fresh defaults
    # Optional fields of nested records are left out too.
    inp = M.Task(M.TaskDefinition(1, "x", inputs=(M.InputRef("n", "r"),))).to_header()["task"]["inputs"]
    assert inp == [{"name": "n", "remote": "r"}]


def test_definitions_are_frozen() -> None:
    defn = SHAPES["python"].task  # type: ignore[attr-defined]
    for obj, field in ((defn, "command"), (defn.inputs[0], "name"), (defn.outputs[0], "send_back"), (defn.python, "output")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, "changed")
    decoded = _through_a_frame(SHAPES["python"]).task  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.queued = False


# --- every field of every record: missing and mistyped ---------------------------------------------------------

WRONG: dict[str, Any] = {"an integer": "7", "a byte count": -1, "a number": "2.5", "a string": 5, "true or false": 1,
                         "an object": [], "a list": {}}


def _paths(record: M.WireRecord, obj: dict[str, Any], path: str) -> Iterator[tuple[str, M.WireField, list[Any]]]:
    """(path, field, where: [the JSON object holding it]) for every field of ``record`` and below."""
    for f in record.FIELDS:
        yield f"{path}.{f.name}", f, [obj]
        value = getattr(record, f.name)
        if isinstance(value, M.WireRecord):
            yield from _paths(value, obj[f.name], f"{path}.{f.name}")
        elif isinstance(value, tuple) and value and isinstance(value[0], M.WireRecord):
            for i, item in enumerate(value):
                yield from _paths(item, obj[f.name][i], f"{path}.{f.name}[{i}]")


CASES = [(shape, path, f) for shape, msg in SHAPES.items() if shape != "bare command"
         for path, f, _ in _paths(msg.task, msg.to_header()["task"], "task")]  # type: ignore[attr-defined]


def _find(header: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The JSON object holding the field at ``path`` (``task.inputs[2].name``) inside ``header``, and the field's name."""
    obj: Any = header
    *outer, last = path.split(".")
    for part in outer:
        name, _, index = part.partition("[")
        obj = obj[name]
        if index:
            obj = obj[int(index.rstrip("]"))]
    return obj, last


@pytest.mark.parametrize("shape, path, f", [c for c in CASES if c[2].required], ids=lambda v: v if isinstance(v, str) else "")
def test_a_missing_nested_field_is_named(shape: str, path: str, f: M.WireField) -> None:
    header = json.loads(json.dumps(SHAPES[shape].to_header()))
    obj, name = _find(header, path)
    del obj[name]
    with pytest.raises(RemoteProtocolError) as info:
        M.decode(header)
    assert str(info.value) == f"message '{SHAPES[shape].TYPE}' lacks field '{path}'"


@pytest.mark.parametrize("shape, path, f", [c for c in CASES if c[2].accepted is not None],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_mistyped_nested_field_is_named(shape: str, path: str, f: M.WireField) -> None:
    header = json.loads(json.dumps(SHAPES[shape].to_header()))
    obj, name = _find(header, path)
    obj[name] = WRONG.get(f.describe.removesuffix(" or null"), "not a record")
    with pytest.raises(RemoteProtocolError) as info:
        M.decode(header)
    text = str(info.value)
    assert f"message '{SHAPES[shape].TYPE}' field '{path}' is " in text and f.describe in text, text


@pytest.mark.parametrize("where, value, complaint", [
    ("inputs", [{"name": "a", "remote": "b"}, 5], "field 'task.inputs' holds 5, not an input reference"),
    ("env", {"A": 3}, "field 'task.env' holds 3, not a string or null"),
    ("environments", ["e", None], "field 'task.environments' holds None, not a string"),
    ("resources", {"cores": "1"}, "field 'task.resources' holds '1', not a number"),
])
def test_the_items_of_nested_containers_are_checked(where: str, value: Any, complaint: str) -> None:
    with pytest.raises(RemoteProtocolError, match=complaint):
        M.decode({"type": "task", "task": {"id": 1, "command": "x", where: value}})


def test_the_index_named_is_the_bad_item() -> None:
    good = {"name": "a", "remote": "b"}
    with pytest.raises(RemoteProtocolError, match=r"lacks field 'task.inputs\[2\].name'"):
        M.decode({"type": "task", "task": {"id": 1, "command": "x", "inputs": [good, good, {"remote": "r"}, good]}})
    with pytest.raises(RemoteProtocolError, match=r"field 'task.python.warm_imports' holds 3, not a string"):
        M.decode({"type": "task", "task": {"id": 1, "command": "x", "python": {"function": "f", "args": "a", "warm_imports": ["m", 3]}}})


def test_a_null_record_is_taken_only_where_declared() -> None:
    msg = M.decode({"type": "task", "task": {"id": 1, "command": "x", "python": None}})
    assert isinstance(msg, M.Task) and msg.task.python is None
    with pytest.raises(RemoteProtocolError, match="field 'task' is None, not a task definition"):
        M.decode({"type": "task", "task": None})


# --- the manager's builder, from real Task objects ----------------------------------------------------------------


@pytest.fixture
def m(tmp_path: Any) -> Iterator[Manager]:
    mgr = Manager(port=0, run_info_path=str(tmp_path / "run-info"))
    try:
        yield mgr
    finally:
        mgr.close()


def _submitted(m: Manager, t: Task) -> Task:
    """``t`` as the manager holds it once submitted (its buffers declared by submit_finalize)."""
    m.submit(t)
    return t


def test_builder_command_task(m: Manager, tmp_path: Any) -> None:
    src = tmp_path / "in.txt"
    src.write_text("x")
    t = Task("cat in.txt > out.txt")
    t.add_input(m.declare_file(str(src)), "in.txt")
    t.add_output(m.declare_file(str(tmp_path / "out.txt")), "out.txt")
    t.set_env_var("GREETING", "hi")
    t.set_time_max(30)
    _submitted(m, t)
    defn = t._task_spec(id=t.id, resources=Resources(cores=1, memory=10).to_dict(), outputs=output_refs(t), stdout_limit=99,
                        queued=True, monitor=monitor_options({"watchdog": True, "interval": 2}))
    assert defn.id == t.id and defn.command == "cat in.txt > out.txt" and defn.env == {"GREETING": "hi"}
    assert [(i.remote, i.kind) for i in defn.inputs] == [("in.txt", "file")] and not defn.inputs[0].in_place
    assert [(o.remote, o.send_back) for o in defn.outputs] == [("out.txt", True)]
    assert defn.resources["cores"] == 1 and defn.time_max == 30 and defn.stdout_limit == 99 and defn.queued
    assert defn.monitor == M.MonitorOptions(True, 2.0)
    assert _through_a_frame(M.Task(defn)) == M.Task(defn)


def test_builder_python_task(m: Manager) -> None:
    t = PythonTask(sum, [1, 2])
    t.set_warm_imports(["json"])
    _submitted(m, t)
    defn = t._task_spec(id=t.id, resources=Resources(cores=1).to_dict())
    assert defn.python is not None and defn.python.result_inline and defn.python.warm_imports == ("json",)
    assert [i.remote for i in defn.inputs if i.in_place] == [FUNCTION_NAME]
    assert _through_a_frame(M.Task(defn)) == M.Task(defn)


def double(x: int) -> int:
    return 2 * x


def test_builder_function_call_and_library_start(m: Manager) -> None:
    lib = m.create_library_from_functions("mylib", double)
    assert isinstance(lib, LibraryTask)
    m.install_library(lib)
    call = FunctionCall("mylib", "double", 1)
    _submitted(m, call)
    defn = call._task_spec(id=call.id, resources={"cores": 1.0}, library_instance=-3)
    assert defn.function_call is not None and defn.function_call.library == "mylib" and defn.function_call.function == "double"
    assert defn.library_instance == -3 and defn.function_call.args is not None  # small arguments travel inline
    start = lib._task_spec(id=-3, resources={"cores": 2.0}, library=M.LibraryStart("mylib", "direct", 2))
    assert start.library == M.LibraryStart("mylib", "direct", 2) and start.outputs == () and start.id == -3
    assert start.command == lib.command and {i.remote for i in start.inputs} == {m.remote_name for m in lib.inputs}
    for d in (defn, start):
        assert _through_a_frame(M.Task(d)) == M.Task(d)


def test_builder_minitask() -> None:
    url = FileSpec("url-1", "url", "http://example.invalid/a.tgz", 1)
    mini = MinitaskSpec("tar xzf a.tgz", (("K", "v"), ("GONE", None)), "a", (MountSpec(url, "a.tgz"),))
    defn = minitask_definition(mini)
    assert defn == M.MinitaskDefinition("tar xzf a.tgz", "a", (M.InputRef("url-1", "a.tgz", 1, "url"),), {"K": "v", "GONE": None})
    run = defn.as_task(-9)
    assert run.id == -9 and run.command == defn.command and run.inputs == defn.inputs and run.env == defn.env
    assert _through_a_frame(M.Minitask("x", defn, 1)) == M.Minitask("x", defn, 1)


def test_records_are_made_like_the_dataclasses_they_are() -> None:
    """Frozen records get a faster __init__ (core.wire.messages._compile_frozen_init): same signature."""
    a, b = M.TaskDefinition(1, "x"), M.TaskDefinition(2, "y")
    assert a.env == {} and a.env is not b.env and a.resources is not b.resources  # a fresh dict each
    assert M.InputRef("n", "r", 2, "url", 0o600, True, True) == M.InputRef(name="n", remote="r", level=2, kind="url", mode=0o600,
                                                                           symlink=True, in_place=True)
    assert M.TaskDefinition(3, "z", env={"K": "v"}).env == {"K": "v"}
    with pytest.raises(TypeError):
        M.TaskDefinition(4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        M.InputRef("n", "r", bogus=1)  # type: ignore[call-arg]
    assert repr(M.LibraryStart("lib")) == "LibraryStart(name='lib', mode='fork', slots=1)"
