"""The manager: the ``Manager`` facade in the user's program and its I/O thread.

``from core.manager import Manager, Factory`` works as TaskVine's ``ndcctools.taskvine.manager`` does.

- ``facade``: ``Manager``, the user's handle; it turns calls into scheduler events.
- ``links``: the I/O thread's side of each connection (workers, status clients).
- ``logs``, ``metrics``: the four TaskVine logs, the Prometheus exporter.
- ``categories``, ``worker_controls``, ``functional``, ``tasks_cache``, ``output_targets``,
  ``exit_guard``: category settings, draining and slow workers, ``map``/``pair``/``tree_reduce``,
  the persistent result cache, writing outputs back to user paths, closing at exit.
"""

from __future__ import annotations

from ..deploy.factory import Factory
from .facade import Manager

__all__ = ["Factory", "Manager"]
