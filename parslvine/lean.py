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

import importlib
import importlib.util
import logging
import os
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


class _WholeParslFirst:
    """Runs the real ``parsl/__init__`` before any parsl module outside LEAN_MODULES is imported.

    (A meta path finder needs only ``find_spec``: not importlib.abc's base class, whose import
    brings importlib.resources, tempfile, random and shutil into every fork server.)
    """

    def invalidate_caches(self) -> None:
        """Nothing cached here."""

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
    """Import ``typeguard`` (which Parsl's ``File`` needs) without what it imports only for features a
    call never uses here: ``unittest.mock`` and, when no typeguard plugin is installed,
    ``importlib.metadata`` and ``importlib.abc``.

    - typeguard imports ``Mock`` and ``patch`` from ``unittest.mock`` at import, which loads asyncio:
      ~10 MB of the lean server's ~30, which every fork maps and every child's exit unmaps. It only
      ever asks ``isinstance(value, Mock)`` (true only for instances of the real class, which exist
      only once the real module is imported: :class:`_MockCheck` checks exactly that) and calls
      ``patch`` in its import hook (:func:`_patch` imports the real module then).
    - At import it also asks ``importlib.metadata`` for its plugins (entry point group
      ``typeguard.checker_lookup``) and its own version (a cache tag of its import hook), and
      subclasses ``importlib.abc.MetaPathFinder`` for that hook. Those two modules bring email,
      zipfile, csv, importlib.resources, tempfile, random (whose reseed runs in every child) and
      shutil with bz2 and lzma: 2.7 MB and 52 mappings more per fork server, ~0.2 ms more per
      fork and exit measured here. :func:`_typeguard_without_plugins` finds the answers in the
      installed packages' ``*.dist-info`` directories instead (no plugin, and the version), and
      stand-ins give them during the import: :func:`_metadata_stand_in` (which hands any other
      question, and every question after the import, to the real module) and
      :func:`_abc_stand_in`. Where that scan cannot be sure (a plugin, an egg or a zip on sys.path),
      typeguard imports as it always does.

    The stand-ins are in ``sys.modules`` only during typeguard's import, so any later import of
    these modules is the real one.
    """
    if "typeguard" in sys.modules or "unittest.mock" in sys.modules:
        return
    stand_ins: dict[str, types.ModuleType] = {"unittest.mock": _mock_stand_in()}
    version = _typeguard_without_plugins() if "importlib.metadata" not in sys.modules else None
    if version is not None:
        stand_ins["importlib.metadata"] = _metadata_stand_in(version)
        if "importlib.abc" not in sys.modules:
            stand_ins["importlib.abc"] = _abc_stand_in()
    try:
        _import_with(stand_ins)
    except Exception:  # noqa: BLE001 - no typeguard, or a stand-in short of what this typeguard asks
        for name in [m for m in sys.modules if m == "typeguard" or m.startswith("typeguard.")]:
            del sys.modules[name]
        if len(stand_ins) > 1:  # the usual import (but for unittest.mock), which says what is wrong if anything is
            try:
                _import_with({"unittest.mock": _mock_stand_in()})
            except ImportError:
                pass  # no typeguard here: Parsl's own import reports it


def _import_with(stand_ins: dict[str, types.ModuleType]) -> None:
    """Import typeguard with ``stand_ins`` in ``sys.modules`` (and as their packages' attributes)."""
    for name, module in stand_ins.items():
        sys.modules[name] = module
        package, _, attr = name.rpartition(".")
        if package in sys.modules:  # (``from importlib import abc`` reads the attribute)
            setattr(sys.modules[package], attr, module)
    try:
        importlib.import_module("typeguard")
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
            package, _, attr = name.rpartition(".")
            if getattr(sys.modules.get(package), attr, None) is module:
                delattr(sys.modules[package], attr)


def _mock_stand_in() -> types.ModuleType:
    stand_in = _MockFreeModule("unittest.mock")
    stand_in.Mock = _MockCheck("Mock", (), {})  # type: ignore[attr-defined]
    stand_in.patch = _patch  # type: ignore[attr-defined]
    return stand_in


PLUGIN_GROUP = "[typeguard.checker_lookup]"  # typeguard's entry point group, as a section of entry_points.txt


def _typeguard_without_plugins() -> str | None:
    """typeguard's installed version, if no installed package declares a typeguard plugin; else None.

    Reads what ``importlib.metadata`` would: the ``*.dist-info`` and ``*.egg-info`` directories
    (a source tree's editable install) of the sys.path directories, ``entry_points.txt`` of each
    and ``METADATA`` of typeguard's. None wherever the answer could differ: a sys.path entry that
    is not a plain directory (a zip, an egg), another finder that lists distributions, or
    typeguard's own metadata missing.
    """
    from importlib.machinery import PathFinder

    if any(hasattr(finder, "find_distributions") and finder is not PathFinder for finder in sys.meta_path):
        return None  # a finder of its own kind may know distributions no directory shows
    version = None
    for entry in sys.path:
        where = entry or "."
        if not os.path.isdir(where):
            if os.path.exists(where):
                return None  # a zip or an egg: importlib.metadata reads those too
            continue
        try:
            names = os.listdir(where)
        except OSError:
            return None
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(where, name, "entry_points.txt"), encoding="utf-8") as fh:
                    if PLUGIN_GROUP in fh.read():
                        return None
            except (FileNotFoundError, NotADirectoryError):
                pass  # no entry points (or a one-file .egg-info, which has none)
            except OSError:
                return None
            if version is None and name.lower().startswith("typeguard-"):
                version = _metadata_version(os.path.join(where, name, "METADATA"))
    return version


def _metadata_version(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
                if not line.strip():
                    break  # the headers end at the first empty line
    except OSError:
        pass
    return None


def _metadata_stand_in(typeguard_version: str) -> types.ModuleType:
    """``importlib.metadata`` for typeguard's import: its plugins (none) and its version; anything
    else, and every call once the import is over, goes to the real module."""
    stand_in = types.ModuleType("importlib.metadata")

    def real() -> Any:
        if sys.modules.get("importlib.metadata") is stand_in:
            raise AttributeError("importlib.metadata asked during typeguard's import for more than its stand-in knows")
        return importlib.import_module("importlib.metadata")

    def entry_points(**params: Any) -> Any:
        if sys.modules.get("importlib.metadata") is stand_in and params == {"group": "typeguard.checker_lookup"}:
            return ()  # _typeguard_without_plugins found none
        return real().entry_points(**params)

    def version(name: str) -> str:
        if sys.modules.get("importlib.metadata") is stand_in and name == "typeguard":
            return typeguard_version
        return real().version(name)

    class PackageNotFoundError(ModuleNotFoundError):
        """Never raised by the stand-in (it answers only what it knows)."""

    def __getattr__(name: str) -> Any:
        return getattr(real(), name)

    stand_in.entry_points = entry_points  # type: ignore[attr-defined]
    stand_in.version = version  # type: ignore[attr-defined]
    stand_in.PackageNotFoundError = PackageNotFoundError  # type: ignore[attr-defined]
    stand_in.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return stand_in


class _MetaPathFinder:
    """``importlib.abc.MetaPathFinder`` as typeguard's import hook subclasses it (nothing abstract in it)."""

    def invalidate_caches(self) -> None:
        """Nothing cached (as the real base class)."""


def _abc_stand_in() -> types.ModuleType:
    stand_in = types.ModuleType("importlib.abc")
    stand_in.MetaPathFinder = _MetaPathFinder  # type: ignore[attr-defined]
    return stand_in


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
