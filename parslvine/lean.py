"""A lean ``parsl`` for processes that only *run* app calls (the worker's fork server, the library).

Importing any ``parsl.*`` module first runs ``parsl/__init__.py``, which loads all of Parsl: the
DataFlowKernel, every executor, monitoring (SQLAlchemy), providers — about 60 MB and 1–2 s, none
of which a call needs. What a call needs is small: ``parsl.serialize`` (dill), ``parsl.app.errors``
(``RemoteExceptionWrapper``), ``parsl.data_provider.files`` (``File``) and, only for the std streams
of a bash app, ``parsl.utils`` (imported when used, see ``parslvine.runner.remap_files``).

Importing this module (it is the first of the regular mode's warm imports) puts a *lazy* ``parsl``
package in ``sys.modules`` when Parsl is not loaded yet: its submodules import as usual (each
only what it imports itself), and the first time anything reads a name of the package itself
(``parsl.python_app``, ``from parsl import File``, ``parsl.__version__``) the real
``parsl/__init__.py`` runs into it, so every such name means what it always means. A bash app's
function, for instance, lives in ``parsl.app.bash``, which loads the rest of Parsl when it is
deserialized: nothing breaks, that process just carries all of Parsl from then on.

Why it matters: the fork server forks once per regular call, and a fork plus its child's exit
costs in proportion to the memory mapped. Measured on the 2-core VM (300 forks of a warm
interpreter, each child unpickling a small tuple): all of Parsl loaded (61 MB) 4.0 ms in the
parent + 6.5 ms in the child; the lean set (29 MB) 1.3 + 3.0 ms.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import types
from typing import Any

# The modules a call needs, imported through the lazy package (``parslvine.runner`` imports them too).
CALL_MODULES = ("parsl.serialize", "parsl.app.errors", "parsl.data_provider.files")


# The parsl modules that load without the package's __init__ (measured: what CALL_MODULES and
# parsl.utils import).
# Importing any other parsl module first runs the real __init__, so Parsl's own import order (and
# its circular imports, which rely on that order) is what it always is.
LEAN_MODULES = frozenset({
    "parsl.app", "parsl.app.errors", "parsl.data_provider", "parsl.data_provider.files", "parsl.errors",
    "parsl.serialize", "parsl.serialize.base", "parsl.serialize.concretes", "parsl.serialize.errors",
    "parsl.serialize.facade", "parsl.utils", "parsl.version",
})


class LazyParslPackage(types.ModuleType):
    """The ``parsl`` package before its ``__init__`` has run; runs it on the first missing name."""

    def __getattr__(self, name: str) -> Any:
        # ``import parsl.x.y as z`` reads ``parsl.x`` before the import sets the attribute: a
        # submodule already in sys.modules is the answer, without loading the whole package.
        sub = sys.modules.get(f"{self.__name__}.{name}")
        if sub is not None:
            return sub
        if name.startswith("__") and name not in ("__version__", "__all__", "__author__"):
            raise AttributeError(name)  # dunder probes (copy, pickle, inspect) must not load Parsl
        self._parslvine_run_init()
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None

    def _parslvine_run_init(self) -> None:
        """Run the real ``parsl/__init__.py`` in this module (once; again after a failure).

        (A name no Parsl attribute can shadow: the package's own ``parsl.load`` lands in this dict.)
        """
        d = self.__dict__
        if d.get("_parslvine_loaded"):
            return  # loaded, or loading: the package's own imports read its names meanwhile
        d["_parslvine_loaded"] = True
        spec = d["__spec__"]
        try:
            exec(spec.loader.get_code(spec.name), d)  # noqa: S102 - the package's own __init__, as an import runs it
        except BaseException:
            d["_parslvine_loaded"] = False  # as after a failed import: the next use tries again (and raises again)
            raise


class _WholeParslFirst(importlib.abc.MetaPathFinder):
    """Runs the real ``parsl/__init__`` before any parsl module outside LEAN_MODULES is imported."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        """Never finds anything itself (None: the usual finders import the module)."""
        if fullname.startswith("parsl.") and fullname not in LEAN_MODULES:
            mod = sys.modules.get("parsl")
            if isinstance(mod, LazyParslPackage):
                mod._parslvine_run_init()


class _MockCheck(type):
    """``isinstance(x, Mock)`` for typeguard's ``Mock`` name: true only for the real one's instances."""

    def __instancecheck__(cls, value: Any) -> bool:
        real = sys.modules.get("unittest.mock")
        # A real Mock exists only once the real unittest.mock has been imported (in this process).
        return real is not None and not isinstance(real, _MockFreeModule) and isinstance(value, real.Mock)


class _MockFreeModule(types.ModuleType):
    """Stands in for ``unittest.mock`` while typeguard imports (see :func:`import_typeguard`)."""


def _patch(*args: Any, **kwargs: Any) -> Any:
    """``unittest.mock.patch``, imported when typeguard first uses it (its import hook)."""
    return importlib.import_module("unittest.mock").patch(*args, **kwargs)


def import_typeguard() -> None:
    """Import ``typeguard`` (which Parsl's ``File`` and app errors need) without ``unittest.mock``.

    typeguard imports ``Mock`` and ``patch`` from ``unittest.mock`` at import, which loads asyncio:
    ~10 MB of the lean server's ~30, which every fork maps and every child's exit unmaps. It only
    ever asks ``isinstance(value, Mock)`` (true only for instances of the real class, which exist
    only once the real module is imported: :class:`_MockCheck` checks exactly that) and calls
    ``patch`` in its import hook (:func:`_patch` imports the real module then). The stand-in is
    in ``sys.modules`` only during typeguard's import, so any later ``import unittest.mock`` is the
    real one.
    """
    if "typeguard" in sys.modules or "unittest.mock" in sys.modules:
        return
    stand_in = _MockFreeModule("unittest.mock")
    stand_in.Mock = _MockCheck("Mock", (), {})  # type: ignore[attr-defined]
    stand_in.patch = _patch  # type: ignore[attr-defined]
    sys.modules["unittest.mock"] = stand_in
    try:
        importlib.import_module("typeguard")
    except ImportError:
        pass  # no typeguard here: Parsl's own import reports it
    finally:
        if sys.modules.get("unittest.mock") is stand_in:
            del sys.modules["unittest.mock"]


def is_lazy() -> bool:
    """True when ``parsl`` in this process is the lazy package and its ``__init__`` has not run."""
    mod = sys.modules.get("parsl")
    return isinstance(mod, LazyParslPackage) and not mod.__dict__.get("_parslvine_loaded")


def install() -> bool:
    """Put the lazy ``parsl`` in ``sys.modules`` unless Parsl is already imported; True if installed."""
    if "parsl" in sys.modules:
        return False
    spec = importlib.util.find_spec("parsl")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False  # no Parsl here: the calls' own imports report it
    mod = LazyParslPackage("parsl")
    mod.__spec__ = spec
    mod.__loader__ = spec.loader
    mod.__file__ = spec.origin
    mod.__path__ = list(spec.submodule_search_locations)
    mod.__package__ = "parsl"
    sys.modules["parsl"] = mod
    sys.meta_path.insert(0, _WholeParslFirst())
    # What parsl/__init__ does for logging, so a call's Parsl modules log as they would.
    logging.getLogger("parsl").addHandler(logging.NullHandler())
    import_typeguard()
    return True


install()
