"""Regular mode's task function, BoundParslCall: the app is deserialized when the function is unpickled.

The worker's fork server unpickles a PythonTask's function once per worker and keeps it, so this
is what makes the app's deserialization (and the import of its module) happen once per worker.
"""

from __future__ import annotations

import cloudpickle
from parsl.app.errors import RemoteExceptionWrapper
from parsl.serialize import serialize

from parslvine import tasks
from parslvine.runner import BoundParslCall, decode_data, decode_reply, encode_data


def double(x):
    return 2 * x


def test_unpickling_deserializes_the_app_once_and_calls_use_it():
    bound = BoundParslCall(serialize(double))
    assert bound.app is None
    loaded = cloudpickle.loads(cloudpickle.dumps(bound))
    assert loaded.app is not None and loaded.app(5) == 10
    for x in (1, 21):
        result, placeholders = decode_reply(loaded(encode_data({"args": [x], "kwargs": {}}), {}, []))
        assert decode_data(result) == 2 * x and placeholders == []
    # Identical apps pickle to identical bytes: the worker's cache key (content-named buffer).
    assert cloudpickle.dumps(BoundParslCall(serialize(double))) == cloudpickle.dumps(bound)


def test_an_app_that_cannot_be_deserialized_fails_in_the_call_with_its_own_error():
    loaded = cloudpickle.loads(cloudpickle.dumps(BoundParslCall(b"not a parsl serialization")))
    assert loaded.app is None
    result, _ = decode_reply(loaded(encode_data({"args": [], "kwargs": {}}), {}, []))
    wrapped = decode_data(result)
    assert isinstance(wrapped, RemoteExceptionWrapper)


def test_calls_of_one_app_share_one_bound_call_so_it_is_pickled_once(monkeypatch):
    monkeypatch.setattr(tasks, "_bound_calls", {})
    first = tasks.bound_call(serialize(double))
    again = tasks.bound_call(bytes(bytearray(serialize(double))))  # equal bytes, another object
    assert again is first and first.vine_pickle_once is True
    other = tasks.bound_call(serialize(len))
    assert other is not first and other.function == serialize(len)


def test_the_bound_calls_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(tasks, "_bound_calls", {})
    monkeypatch.setattr(tasks, "MAX_BOUND_CALLS", 3)
    made = [tasks.bound_call(b"app-%d" % i) for i in range(7)]
    assert len(tasks._bound_calls) <= 3
    assert tasks.bound_call(b"app-6") is made[6]  # the newest is still known
    assert all(b.function == b"app-%d" % i for i, b in enumerate(made))
