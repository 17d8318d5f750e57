"""``vine_worker``: runs tasks in sandboxes, caches files, serves peers, hosts Python and libraries.

``python -m core.worker`` is the worker's command line (``core.worker.main``). Importing this
package loads nothing else, so a worker process does not pay for the manager's modules.

- ``main``: the worker's connection to its manager, task launching and reaping, the event loop.
- ``cache``, ``sandbox``, ``transfers``: the file cache and its integrity checks; task sandboxes;
  fetching inputs and serving them to peers.
- ``python``, ``forkserver``: Python tasks on a per-worker fork server, library instances.
- ``monitor``, ``reaper``: measuring task process trees and the watchdog; the guardian that kills a
  dead worker's tasks.
"""
