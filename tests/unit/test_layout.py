"""The architecture's import rules, read from the source (no imports executed).

``core/`` is layered (README, "Code map"): each package may import only the packages below it, and no
two modules may import each other in a cycle. Every import counts: at module level, inside a function,
and under ``TYPE_CHECKING`` (a type-only import is still a dependency a reader has to follow).
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORE = os.path.join(ROOT, "core")

FLOOR = {"core.errors", "core.constants"}

# package -> the packages its modules may import (besides their own package and the floor)
ALLOWED: dict[str, set[str]] = {
    "floor": set(),
    "state": set(),
    "wire": set(),
    "api": {"state", "wire"},
    "deploy": {"wire"},
    "worker": {"state", "wire", "deploy"},
    "manager": {"state", "wire", "api", "deploy"},
}
# packages whose modules may import anything in core: the public facade and the command-line tools
UNRESTRICTED = {"top", "tools"}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def _modules() -> dict[str, str]:
    found = {}
    for folder, _dirs, files in os.walk(CORE):
        if "__pycache__" in folder:
            continue
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _package(module: str) -> str:
    """The layer a module belongs to."""
    if module in FLOOR:
        return "floor"
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and f"{module}.__init__" not in MODULES and os.path.isdir(os.path.join(CORE, parts[1]))):
        return parts[1]
    if len(parts) == 2 and os.path.isdir(os.path.join(CORE, parts[1])):
        return parts[1]
    return "top"


def _imports(module: str) -> set[str]:
    """Every core module ``module`` imports, wherever the import statement is."""
    path = MODULES[module]
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    is_package = path.endswith("__init__.py")
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "core" and not target.startswith("core."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "core" or alias.name.startswith("core."):
                    found.add(alias.name)
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_package_imports_only_what_is_below_it():
    broken = []
    for module, targets in sorted(GRAPH.items()):
        layer = _package(module)
        if layer in UNRESTRICTED:
            continue
        for target in sorted(targets):
            other = _package(target)
            if other == layer or other == "floor" or other in ALLOWED[layer]:
                continue
            broken.append(f"{module} ({layer}) imports {target} ({other})")
    assert broken == [], "imports against the layering:\n" + "\n".join(broken)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules():
    cycles = _cycles()
    assert cycles == [], "modules that import each other (directly or around a loop):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_rules_see_the_tree():
    """The checker itself: it finds the packages and the imports it is meant to judge."""
    assert _package("core.state.scheduler") == "state" and _package("core.wire.protocol") == "wire"
    assert _package("core.errors") == "floor" and _package("core.futures") == "top"
    assert "core.state.records" in GRAPH["core.state.scheduler"]
    assert {"state", "wire", "api", "manager", "worker", "deploy", "tools"} <= {_package(m) for m in MODULES}


def test_every_module_says_what_it_owns():
    missing = []
    for module, path in sorted(MODULES.items()):
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        if not ast.get_docstring(tree):
            missing.append(module)
    assert missing == [], "modules without a docstring: " + ", ".join(missing)


def test_no_private_name_is_imported_from_another_module():
    """A leading underscore says "only this module uses it": another module importing it is a rule in two places."""
    found = []
    for module, path in sorted(MODULES.items()):
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("core")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(f"{module}:{node.lineno} imports {', '.join(private)}")
    assert found == [], "private names imported across modules:\n" + "\n".join(found)
