"""``core.file``: where TaskVine programs import ``File`` from (``ndcctools.taskvine.file``).

The class lives in :mod:`core.api.files`; this module only re-exports it under TaskVine's module name.
"""

from __future__ import annotations

from .api.files import File

__all__ = ["File"]
