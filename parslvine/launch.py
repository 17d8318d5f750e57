"""How the executor's workers start: a :class:`core.Factory`, or a command for a Parsl provider.

``worker_launch_method="factory"`` runs a ``core.Factory`` configured from
:class:`~parslvine.configs.TaskVineFactoryConfig` (``batch_type="local"`` starts workers on this
machine; ``slurm``, ``condor`` and ``sge`` submit them as jobs). ``"provider"`` hands Parsl the
command of :func:`worker_command` for each block (``LocalProvider`` runs it here,
``SlurmProvider`` in a job). ``"manual"`` starts nothing: run ``vine_worker HOST PORT`` yourself.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from typing import Any

import core as vine

from .configs import TaskVineFactoryConfig, TaskVineManagerConfig
from .errors import ParslVineConfigError

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_program(executable: str) -> list[str]:
    """The worker's argv prefix: ``vine_worker`` (the default) is core's worker in this very Python."""
    if executable == "vine_worker":
        return [sys.executable, "-m", "core.worker"]
    return shlex.split(executable)


def manager_address(manager_config: TaskVineManagerConfig, local: bool) -> str:
    """Where workers reach the manager: the configured address, else localhost for workers on this
    machine, else this host's fully qualified name."""
    if manager_config.address:
        return manager_config.address
    return "localhost" if local else socket.getfqdn()


def worker_command(port: int, manager_config: TaskVineManagerConfig, factory_config: TaskVineFactoryConfig, local: bool) -> str:
    """The shell command a provider block runs: ``vine_worker [--password F] [options] (-M NAME | HOST PORT)``.

    ``PYTHONPATH`` is extended so the worker (and the apps it runs) can import ``parslvine``.
    """
    argv = worker_program(factory_config.worker_executable)
    argv += ["--timeout", str(factory_config.worker_timeout)]
    if manager_config.project_password_file:
        argv += ["--password", os.path.abspath(manager_config.project_password_file)]
    options = shlex.split(factory_config.worker_options) if factory_config.worker_options else []
    target = ["-M", manager_config.project_name] if manager_config.project_name else [manager_address(manager_config, local), str(port)]
    command = shlex.join(argv + options + target)
    return f"PYTHONPATH={shlex.quote(PACKAGE_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}} {command}"


def start_factory(manager: Any, manager_config: TaskVineManagerConfig, factory_config: TaskVineFactoryConfig) -> vine.Factory:
    """Start a ``core.Factory`` keeping ``min_workers``..``max_workers`` workers for ``manager``."""
    fc = factory_config
    binary = None if fc.worker_executable == "vine_worker" else fc.worker_executable
    if manager_config.project_name:
        factory = vine.Factory(fc.batch_type, manager_name=manager_config.project_name, worker_binary=binary)
    elif manager_config.address and fc.batch_type != "local":
        factory = vine.Factory(fc.batch_type, manager_host_port=f"{manager_config.address}:{manager.port}", worker_binary=binary)
    else:
        factory = vine.Factory(fc.batch_type, manager=manager, worker_binary=binary)
    if manager_config.project_password_file and factory.password is None:
        factory.password = os.path.abspath(manager_config.project_password_file)
    if fc.scratch_dir:
        factory.scratch_dir = fc.scratch_dir
    factory.factory_timeout = fc.factory_timeout
    factory.min_workers = fc.min_workers
    factory.max_workers = fc.max_workers
    factory.workers_per_cycle = fc.workers_per_cycle
    factory.timeout = fc.worker_timeout
    if fc.python_env:
        raise ParslVineConfigError("factory_config.python_env is not supported by core's vine_factory; install the "
                                   "project into an environment the workers' nodes share and leave python_env unset")
    for name in ("cores", "gpus", "memory", "disk", "condor_requirements", "batch_options"):
        value = getattr(fc, name)
        if value is not None:
            setattr(factory, name, value)
    if fc.worker_options:
        factory.extra_options = fc.worker_options
    factory.start()
    return factory
