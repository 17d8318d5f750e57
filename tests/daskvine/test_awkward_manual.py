"""The TaskVine manual's DaskVine example, with ``import core as vine``, giving eager awkward's numbers.

As in the manual, ``Point`` is defined at module level (awkward's ``mixin_class`` registers a
``PointRecord`` in the defining module, which workers import to unpickle the behavior).
"""

from __future__ import annotations

import dask
import numpy as np
import pytest

ak = pytest.importorskip("awkward")
dak = pytest.importorskip("dask_awkward")

behavior: dict = {}


@ak.mixin_class(behavior)
class Point:
    def distance(self, other):
        return np.sqrt((self.x - other.x) ** 2 + (self.y - other.y) ** 2)


@pytest.mark.timeout(180)
def test_taskvine_manual_dask_awkward_example(tmp_path):
    import core as vine
    from daskvine import DaskVine

    points1 = ak.zip({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": [2.0, 3.0, 5.0, 7.0, 11.0, 13.0]},
                     with_name="Point", behavior=behavior)
    points2 = ak.zip({"x": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0], "y": [1.0, 1.0, 2.0, 3.0, 5.0, 8.0]},
                     with_name="Point", behavior=behavior)
    eager = points1.distance(points2)
    array1 = dak.from_awkward(points1, npartitions=3)
    array2 = dak.from_awkward(points2, npartitions=3)
    distance = array1.distance(array2)

    m = DaskVine(port=[9123, 9223], ssl=True, run_info_path=str(tmp_path / "vine-run-info"))
    try:
        f = vine.Factory(manager=m)
        f.cores = 4
        f.max_workers = 1
        f.min_workers = 1
        f.scratch_dir = str(tmp_path / "factory")
        with f, dask.config.set(scheduler=m.get):
            result = distance.compute(resources={"cores": 1}, resources_mode="max", lazy_transfers=True)
        assert result.tolist() == eager.tolist()
        assert m.using_ssl
    finally:
        m.close()
