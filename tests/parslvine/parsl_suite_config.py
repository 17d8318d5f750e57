"""Parsl's own test suite against parslvine: ``pytest <parsl>/tests --config THIS_FILE``.

The mode comes from ``$PARSLVINE_MODE`` (``regular``, the default, or ``serverless``); see
``run_parsl_suite.sh``, which is how CI runs it. One local factory worker with 2 cores, as on the
2-core CI machine; ``port=0`` so runs never collide on a port and need no network or catalog.
"""

from __future__ import annotations

import os

from parsl.config import Config

from parslvine import TaskVineExecutor, TaskVineFactoryConfig, TaskVineManagerConfig

MODE = os.environ.get("PARSLVINE_MODE", "regular")


def fresh_config() -> Config:
    if MODE not in ("regular", "serverless"):
        raise ValueError(f"PARSLVINE_MODE must be 'regular' or 'serverless', not {MODE!r}")
    return Config(
        executors=[
            TaskVineExecutor(
                label=f"parslvine_{MODE}",
                function_exec_mode=MODE,  # type: ignore[arg-type]
                manager_config=TaskVineManagerConfig(port=0),
                factory_config=TaskVineFactoryConfig(min_workers=1, max_workers=1, cores=2, memory=4000, disk=8000),
            )
        ],
    )
