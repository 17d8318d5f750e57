"""DaskVine's own progress bar (rich), shown while ``get`` runs.

``progress_disable=None`` (the default) shows it only when stdout is a terminal or a Jupyter
notebook, so logs and pipes never receive bar frames; ``progress_disable=False`` asks for it
anyway (rich then prints the final state as plain text); ``True`` turns it off. The label uses
rich markup, as in TaskVine (``progress_label="[green]tasks"``).
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _interactive(console: Any) -> bool:
    if getattr(console, "is_jupyter", False):
        return True
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):
        return False


class GraphProgress:
    """A rich bar over one graph's tasks; a no-op object when progress is off."""

    def __init__(self, total: int, label: str, disable: bool | None) -> None:
        self._progress: Any = None
        self._task: Any = None
        if disable is True or total <= 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=sys.stdout)
        if disable is None and not _interactive(console):
            return
        # In Jupyter the bar is an ipywidgets Output that rich redraws; redrawn from rich's own refresh
        # thread, the frames do not reach the widget (the kernel routes a background thread's output
        # by its own parent message), so there ``get``'s thread redraws it, at most 5 times a second.
        self._jupyter = bool(getattr(console, "is_jupyter", False))
        self._last_draw = 0.0
        self._progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=console, transient=False, refresh_per_second=5, auto_refresh=not self._jupyter)
        self._task = self._progress.add_task(label, total=total)
        self._progress.start()

    @property
    def shown(self) -> bool:
        return self._progress is not None

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)
            if self._jupyter and time.monotonic() - self._last_draw > 0.2:
                self._last_draw = time.monotonic()
                self._progress.refresh()

    def close(self) -> None:
        if self._progress is not None:
            if self._jupyter:
                self._progress.refresh()  # rich draws no final frame in Jupyter when it stops
            self._progress.stop()
            self._progress = None
