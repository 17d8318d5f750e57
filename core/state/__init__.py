"""The pure scheduler state: events in, instructions out, no sockets, threads, clocks or files.

Modules here import only the floor (``core.errors``, ``core.constants``) and each other, never the
manager, the worker, the wire or the user-facing objects (``tests/unit/test_layout.py`` holds that
rule), so every scheduling decision can be driven and checked in a unit test without a process.

- ``scheduler``: ``SchedulerState``, the state machine the manager's I/O thread drives.
- ``events``: the events it takes and the instructions it returns.
- ``records``: what it knows of each task, worker and file.
- ``resources``, ``categories``: allocation rules, category modes and sizing.
- ``transfers``, ``recovery``, ``pipelining``, ``libraries``: where inputs come from, lineage recovery
  of lost temps, calls sent ahead, serverless library instances and their slots.
"""
