"""The objects a user builds: tasks, files, Python tasks, libraries and function calls.

They import the floor, ``core.state`` (resources) and ``core.wire`` (serialization), never the
manager: a manager reaches them through the methods they expose (``submit_finalize``, ``spec``).
"""
