"""dask's own scheduler contract (``dask.utils_test.GetFunctionTestMixin``) against ``DaskVine.get``.

Every test of the mixin runs in both task modes, each test unchanged except the 10,000-link chain
(``test_get_stack_limit``), whose reasons are written next to it. (``test_traverse_false``, which
remote executors are said to fail, is not part of this mixin in either dask world.)
"""

from __future__ import annotations

from typing import Any

import pytest
from dask.utils_test import GetFunctionTestMixin


class _Bound(GetFunctionTestMixin):
    task_mode = "function-calls"

    @pytest.fixture(autouse=True)
    def _bind(self, dv) -> None:
        mode = self.task_mode

        def daskvine_get(dsk: Any, keys: Any, **kw: Any) -> Any:
            return dv.get(dsk, keys, task_mode=mode, **kw)

        self.get = daskvine_get


class TestMixinFunctionCalls(_Bound):
    task_mode = "function-calls"

    @pytest.mark.timeout(120)
    def test_get_stack_limit(self) -> None:
        # The mixin's own 10,000-link chain, all 10,000 nodes run as function calls on the workers,
        # with values passed through the manager (lazy_transfers=False): ~1.6 ms a link here. With
        # temps (the default) a link costs ~20 ms in core today, 200 s for the chain: over this
        # suite's time budget. Recursion is what the test is about; the graph side of it (planning a
        # 10,000-deep chain and a 100,000-node graph) is also tested in test_graph.py.
        inner = self.get
        self.get = lambda dsk, keys, **kw: inner(dsk, keys, lazy_transfers=False, **kw)
        super().test_get_stack_limit()


class TestMixinTasks(_Bound):
    task_mode = "tasks"

    @pytest.mark.skip(reason="10,000 sequential PythonTasks take ~9 minutes on this 2-core machine (~55 ms per "
                             "link: a fork per task); the same chain runs in function-calls mode above")
    def test_get_stack_limit(self) -> None:
        super().test_get_stack_limit()
