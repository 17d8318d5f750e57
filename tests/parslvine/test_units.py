"""parslvine's pure parts: configs, resource specifications, the staging plan, the runner (no processes)."""

from __future__ import annotations

import os
import pickle

import pytest
from parsl.app.errors import RemoteExceptionWrapper
from parsl.data_provider.files import File
from parsl.serialize import serialize

from parslvine import TaskVineExecutor, TaskVineFactoryConfig, TaskVineManagerConfig
from parslvine.configs import check_manager_config
from parslvine.errors import ParslVineConfigError
from parslvine.resources import settings_from_spec
from parslvine.runner import decode_data, decode_reply, encode_data, encode_reply, remap_files, run_parsl_call
from parslvine.staging import plan_staging


def test_config_defaults_match_parsls():
    mc, fc = TaskVineManagerConfig(), TaskVineFactoryConfig()
    assert (mc.port, mc.address, mc.project_name, mc.max_retries, mc.shared_fs, mc.autocategory) == (9123, None, None, 1, False, True)
    assert (mc.autolabel, mc.autolabel_algorithm, mc.enable_peer_transfers, mc.init_command) == (False, "max-xput", True, "")
    assert (fc.min_workers, fc.max_workers, fc.workers_per_cycle, fc.worker_timeout, fc.factory_timeout) == (1, 1, 1, 300, 300)
    assert (fc.worker_executable, fc.batch_type, fc.cores) == ("vine_worker", "local", None)


@pytest.mark.parametrize("bad, words", [
    ({"app_pack": True}, "app_pack"),
    ({"extra_pkgs": ["numpy"]}, "extra_pkgs"),
    ({"autolabel_algorithm": "guess"}, "autolabel_algorithm"),
    ({"autolabel": True, "autolabel_algorithm": "bucketing"}, "bucketing"),
    ({"autolabel_window": 0}, "autolabel_window"),
    ({"autolabel_window": 2.5}, "autolabel_window"),
    ({"library_config": {"slots": 2}}, "num_slots"),
    ({"max_retries": -2}, "max_retries"),
])
def test_config_rejects_what_it_cannot_honour(bad, words):
    with pytest.raises(ParslVineConfigError, match=words):
        check_manager_config(TaskVineManagerConfig(**bad))


def test_executor_constructor_checks_its_arguments():
    with pytest.raises(ParslVineConfigError, match="worker_launch_method"):
        TaskVineExecutor(worker_launch_method="ssh")
    with pytest.raises(ParslVineConfigError, match="function_exec_mode"):
        TaskVineExecutor(function_exec_mode="fast")
    ex = TaskVineExecutor(label="x", worker_launch_method="provider")
    assert type(ex.provider).__name__ == "LocalProvider" and ex.provider.init_blocks == 1
    # Parsl's RepresentationMixin needs every constructor argument as an attribute.
    for name in ("label", "worker_launch_method", "function_exec_mode", "manager_config", "factory_config",
                 "provider", "storage_access", "remote_monitoring_radio"):
        assert hasattr(ex, name)
    assert "TaskVineExecutor(" in repr(ex)


def test_resource_specification_mapping():
    unknown: list[str] = []
    s = settings_from_spec({"cores": 2, "memory": 1000, "disk": 500, "gpus": 0, "running_time_min": 10, "priority": 3,
                            "category": "x", "cpus": 4}, "regular", unknown.append)
    assert (s.cores, s.memory, s.disk, s.gpus, s.running_time_min, s.priority, s.category) == (2, 1000, 500, 0, 10, 3, "x")
    assert s.exec_mode == "regular" and unknown == ["cpus"]
    assert settings_from_spec({"exec_mode": "serverless"}, "regular", unknown.append).exec_mode == "serverless"
    assert settings_from_spec({}, "serverless", unknown.append).exec_mode == "serverless"
    with pytest.raises(ParslVineConfigError, match="'memory'"):
        settings_from_spec({"memory": "lots"}, "regular", unknown.append)
    with pytest.raises(ParslVineConfigError, match="exec_mode"):
        settings_from_spec({"exec_mode": "fast"}, "regular", unknown.append)


def test_settings_and_plans_cross_to_the_manager_process_as_plain_tuples():
    import dataclasses

    from parslvine.resources import TaskSettings
    from parslvine.staging import StagingPlan

    s = settings_from_spec({"cores": 2, "memory": 1000, "disk": 500, "gpus": 1, "running_time_min": 10, "priority": 3,
                            "category": "x"}, "serverless", print)
    wire = s.to_wire()
    assert wire == dataclasses.astuple(s) and len(wire) == len(dataclasses.fields(TaskSettings))  # every field, in order
    assert TaskSettings.from_wire(pickle.loads(pickle.dumps(wire))) == s
    plan = StagingPlan(inputs=[("a", "a")], outputs=[("o", "o")], names={"a": "a", "o": "o"})
    assert StagingPlan.from_wire(pickle.loads(pickle.dumps(plan.to_wire()))) == plan
    assert StagingPlan().to_wire() is None and StagingPlan.from_wire(None) == StagingPlan()
    assert len(dataclasses.fields(StagingPlan)) == 3  # to_wire sends these three


def test_staging_plan_follows_parsls_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("x")
    absolute = File(str(tmp_path / "abs.txt"))
    plan = plan_staging((File("in.txt"), 3), {"inputs": [File("data/a.csv"), absolute], "outputs": [File("out/r.txt")],
                                              "stdout": "o.log", "stderr": str(tmp_path / "e.log"), "extra": File("../up.txt")},
                        shared_fs=False)
    assert ("in.txt", "in.txt") in plan.inputs and ("data/a.csv", "data/a.csv") in plan.inputs
    assert all(local != absolute.filepath for local, _ in plan.inputs)  # absolute paths stay where they are
    up = dict(plan.inputs)["../up.txt"]
    assert not up.startswith("..") and up.endswith("up.txt")  # a path out of the sandbox gets a name inside it
    assert plan.outputs == [("out/r.txt", "out/r.txt"), ("o.log", "o.log")]
    shared = plan_staging((File("in.txt"),), {"stdout": "o.log"}, shared_fs=True)
    assert shared.inputs == [] and shared.outputs == []
    assert shared.names == {"in.txt": str(tmp_path / "in.txt"), "o.log": str(tmp_path / "o.log")}


def test_runner_remaps_files_and_streams():
    f, g = File("a/in.txt"), File("/abs/x")
    kwargs = {"inputs": [f], "stdout": ("o.log", "w"), "other": g}
    remap_files([], kwargs, {"a/in.txt": "sandbox/in.txt", "o.log": ".parslvine-files/0/o.log"})
    assert f.filepath == "sandbox/in.txt" and g.filepath == "/abs/x"
    assert kwargs["stdout"] == (".parslvine-files/0/o.log", "w")


def _boom(x):
    raise KeyError(f"no {x}")


def test_runner_returns_values_and_wrapped_exceptions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, placeholders = decode_reply(run_parsl_call(serialize(divmod), serialize({"args": (7, 2), "kwargs": {}}), {}, []))
    assert decode_data(result) == (3, 1) and placeholders == []
    result, placeholders = decode_reply(run_parsl_call(serialize(_boom), serialize({"args": ("key",), "kwargs": {}}), {},
                                                       ["never/written.txt"]))
    wrapper = decode_data(result)
    assert isinstance(wrapper, RemoteExceptionWrapper) and isinstance(wrapper.get_exception(), KeyError)
    assert placeholders == ["never/written.txt"] and os.path.exists("never/written.txt")
    # A function that cannot even be deserialized is the call's exception, not a crash.
    result, _ = decode_reply(run_parsl_call(b"garbage", serialize({"args": (), "kwargs": {}}), {}, []))
    assert isinstance(decode_data(result), RemoteExceptionWrapper)


class Local:
    """A class of a module the workers can import: plain pickle carries it by reference."""

    def __init__(self, v):
        self.v = v


def _square(x):
    return x * x


def test_functions_travel_by_cloudpickle_unless_parsl_has_a_code_serializer_of_its_own():
    from parsl.serialize import facade
    from parsl.serialize.concretes import DillCallableSerializer

    from parslvine.runner import CODE_TAG, PICKLE_TAG, decode_code, encode_code, needs_parsl_serialize

    data = encode_code(_square)
    assert data.startswith(CODE_TAG) and decode_code(data)(4) == 16
    assert encode_code(_square) is data  # pickled once per function
    closure = (lambda k: lambda x: x + k)(3)
    assert decode_code(encode_code(closure))(1) == 4  # not importable: by value
    assert decode_code(serialize(_square))(3) == 9  # what parsl.serialize made decodes too
    assert not needs_parsl_serialize(data, PICKLE_TAG + b"x") and needs_parsl_serialize(data, serialize([1]))

    class Other(DillCallableSerializer):
        identifier = b"C9"

    facade.register_method_for_code(Other())
    try:  # a code serializer of the user's: Parsl's own way, so it is used
        assert needs_parsl_serialize(encode_code(_square))
    finally:
        del facade.methods_for_code[b"C9"]
    assert encode_code(_square).startswith(CODE_TAG)


def test_fast_data_encoding_falls_back_to_parsls_serializer():
    from parslvine.runner import PICKLE_TAG

    fast = encode_data({"args": (1, Local(2)), "kwargs": {}})
    assert fast.startswith(PICKLE_TAG) and decode_data(fast)["args"][1].v == 2
    slow = encode_data(lambda x: x)  # plain pickle cannot: dill (Parsl's serializer) does
    assert not slow.startswith(PICKLE_TAG) and decode_data(slow)(5) == 5
    main_ref = type("M", (), {"__module__": "__main__"})
    assert not encode_data(main_ref).startswith(PICKLE_TAG)  # __main__ travels by value, as Parsl sends it
    assert decode_data(serialize([1, 2])) == [1, 2]  # anything parsl.serialize made decodes too


def test_function_call_plain_arguments_skip_the_reference_walk_only_when_nothing_can_be_a_reference():
    import pickle

    import cloudpickle

    from core.api.python_task import plain_values as _plain
    from core.wire.remote import unpack_arguments

    call = (b"\x00fn", b"args", {"in.txt": "in.txt"}, ["out/x"], 3, 2.5, None, True)
    assert _plain(call) and _plain({"k": call})
    # What the fast path writes is read back by the library exactly as the walked, cloudpickled form.
    fast = pickle.dumps((list(call), {}, []), protocol=pickle.HIGHEST_PROTOCOL)
    assert unpack_arguments(cloudpickle.loads(fast)) == (call, {})

    class Name(str):
        pass

    class WithReference:
        def _vine_reference(self):  # pragma: no cover - only its presence matters here
            raise AssertionError

    assert not _plain((Name("x"),))  # a subclass may pickle its own way
    assert not _plain(([WithReference()],))
    assert not _plain({1: {2: {3: {4: "deep"}}}})  # deep nesting: the walk decides
    assert not _plain(list(range(65)))


def test_frame_reader_hands_out_every_whole_frame_of_one_read_and_waits_for_split_ones():
    import socket
    import threading

    from parslvine.manager_process import FrameReader, frame

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reads = []

    class CountingSocket:
        def recv(self, n):
            data = theirs.recv(n)
            reads.append(len(data))
            return data

    try:
        frames = FrameReader(CountingSocket())
        ours.sendall(frame([1]) + frame([("done", 2, True, b"x" * 100, None)]) + frame([]))
        assert frames.next() == [1] and frames.next() == [("done", 2, True, b"x" * 100, None)] and frames.next() == []
        assert len(reads) == 1  # three frames, one recv
        big = frame([b"y" * 3_000_000])  # more than one read and than the socket's buffer: sent in pieces
        sender = threading.Thread(target=lambda: [ours.sendall(big[i:i + 100_000]) for i in range(0, len(big), 100_000)])
        sender.start()
        assert frames.next() == [b"y" * 3_000_000]
        sender.join(30)
        ours.sendall(frame([3])[:5])  # a partial frame, then the sender goes away
        ours.close()
        assert frames.next() is None
    finally:
        ours.close()
        theirs.close()


def test_reply_without_placeholders_is_the_tag_and_the_result():
    assert encode_reply(b"\x80\x05K\x07.", []) == b"parslvine-reply\n\x80\x05K\x07."
    assert decode_reply(encode_reply(b"value", [])) == (b"value", [])
    assert decode_reply(encode_reply(b"value", ["out/a.txt"])) == (b"value", ["out/a.txt"])
    # An older runner's reply (the pair, always pickled) still reads.
    assert decode_reply(pickle.dumps((b"parslvine-reply\n", []))) == (b"parslvine-reply\n", [])
