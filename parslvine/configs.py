"""The two configuration dataclasses of :class:`parslvine.TaskVineExecutor`.

They have the fields and defaults of Parsl's own ``TaskVineManagerConfig`` and
``TaskVineFactoryConfig``, so a Parsl program changes only its import line. Where a field means
something different here, its comment says so; a field we cannot honour raises a clear error when
the executor starts instead of being ignored (see :func:`check_manager_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.constants import VINE_DEFAULT_PORT

from .errors import ParslVineConfigError

AUTOLABEL_ALGORITHMS = ("max-xput", "bucketing", "max")
# What each autolabel algorithm is in core's category modes (Manager.set_category_mode). Core has no
# bucketing modes, so "bucketing" is refused at start, with the two that work named.
AUTOLABEL_MODES = {"max-xput": "max throughput", "max": "max"}
LIBRARY_CONFIG_KEYS = ("num_slots", "cores", "memory", "disk")


@dataclass
class TaskVineManagerConfig:
    """How the executor's manager listens, and what it applies to every task.

    ``port=0`` binds any free local port with no catalog and no network: workers the executor
    starts are given the real port. ``project_name`` registers the manager in the project's own
    catalog (``~/.vine-catalog`` or ``$VINE_CATALOG_DIR``), where ``vine_worker -M NAME`` finds it.
    """

    # Connection and communication settings
    port: int = VINE_DEFAULT_PORT
    address: str | None = None  # what workers started elsewhere (provider/factory) connect to
    project_name: str | None = None
    project_password_file: str | None = None

    # Global task settings
    env_vars: dict | None = None
    init_command: str = ""  # regular mode: the task runs as a shell command after it; serverless: before the library
    env_pack: str | None = None  # a poncho tarball (*.tar.gz) or a directory with bin/run_in_env
    app_pack: bool = False  # needs poncho_package_create, not available here: True raises at start
    extra_pkgs: list | None = None  # only with app_pack
    max_retries: int = 1
    library_config: dict | None = None  # serverless: num_slots, cores, memory, disk of each library instance

    # Performance-specific settings
    shared_fs: bool = False
    autolabel: bool = False  # every category sized from measured peaks (set_category_mode); monitoring on
    autolabel_algorithm: str = "max-xput"  # "max-xput" or "max"; "bucketing" raises (core has no bucketing)
    autolabel_window: int | None = None  # tasks measured before sizing (tune category-steady-n-tasks; default 25)
    autocategory: bool = True
    enable_peer_transfers: bool = True
    wait_for_workers: int | None = None
    tune_parameters: dict | None = None

    # Logging settings
    vine_log_dir: str | None = None  # default: <dirname(parsl run_dir)>/<label>


@dataclass
class TaskVineFactoryConfig:
    """Workers started by a :class:`core.Factory` (``worker_launch_method="factory"``).

    Port, address, name and password come from the manager config. ``scratch_dir`` is set to the
    manager's log directory when the executor starts, as Parsl does.
    """

    factory_timeout: int = 300
    scratch_dir: str | None = None
    min_workers: int = 1
    max_workers: int = 1
    workers_per_cycle: int = 1
    worker_options: str | None = None  # extra vine_worker options, e.g. "--feature big"
    worker_executable: str = "vine_worker"  # "vine_worker" means core's worker in this Python
    worker_timeout: int = 300
    cores: int | None = None
    gpus: int | None = None
    memory: int | None = None
    disk: int | None = None
    python_env: str | None = None
    batch_type: str = "local"
    condor_requirements: str | None = None
    batch_options: str | None = None

    # Filled in by the executor from the manager config (Parsl's private fields, same names).
    _project_port: int = 0
    _project_address: str | None = None
    _project_name: str | None = None
    _project_password_file: str | None = None


def check_manager_config(config: Any) -> None:
    """Reject settings the executor cannot honour, with the reason, before anything starts."""
    if not isinstance(config, TaskVineManagerConfig):
        raise ParslVineConfigError(f"manager_config must be a parslvine.TaskVineManagerConfig, not {type(config).__name__}")
    if config.app_pack:
        raise ParslVineConfigError("manager_config.app_pack=True needs poncho_package_create to pack each app's "
                                   "environment, which parslvine does not provide; build one environment tarball "
                                   "and give it as env_pack instead")
    if config.extra_pkgs and not config.app_pack:
        raise ParslVineConfigError("manager_config.extra_pkgs only applies with app_pack=True")
    if config.autolabel_algorithm not in AUTOLABEL_ALGORITHMS:
        raise ParslVineConfigError(f"manager_config.autolabel_algorithm must be one of {AUTOLABEL_ALGORITHMS}, "
                                   f"not {config.autolabel_algorithm!r}")
    if config.autolabel and config.autolabel_algorithm not in AUTOLABEL_MODES:
        raise ParslVineConfigError(f"manager_config.autolabel_algorithm={config.autolabel_algorithm!r} needs a bucketing "
                                   f"category mode, which core does not provide; use one of {tuple(AUTOLABEL_MODES)}")
    if config.autolabel_window is not None and (isinstance(config.autolabel_window, bool)
                                                 or not isinstance(config.autolabel_window, int) or config.autolabel_window < 1):
        raise ParslVineConfigError(f"manager_config.autolabel_window must be a number of tasks >= 1 or None, "
                                   f"not {config.autolabel_window!r}")
    if config.library_config is not None:
        if not isinstance(config.library_config, dict):
            raise ParslVineConfigError(f"manager_config.library_config must be a dict, not {config.library_config!r}")
        unknown = sorted(set(config.library_config) - set(LIBRARY_CONFIG_KEYS))
        if unknown:
            raise ParslVineConfigError(f"manager_config.library_config has unknown keys {unknown}; "
                                       f"use {', '.join(LIBRARY_CONFIG_KEYS)}")
    if config.max_retries is not None and int(config.max_retries) < 0:
        raise ParslVineConfigError(f"manager_config.max_retries must be >= 0 or None, not {config.max_retries}")
