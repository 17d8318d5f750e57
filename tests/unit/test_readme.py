"""Every shell command in README.md is one a test or CI runs.

The README is a guide: a newcomer copies its commands. So each command it shows must be exercised:

- either it appears, with its essential arguments, in CI or the tests: ``.ci/run`` and ``.ci/**``,
  ``tests/**/*.sh``, or an invocation in ``tests/**/*.py`` (an argv list such as
  ``[sys.executable, "-m", "core.worker", "--ssl", ...]``, a worker started through the conftest's
  ``WorkerProcess``/``start_worker``, or a command line passed to ``subprocess``/``Task``);
- or this file runs it itself, because it is cheap and safe (``vine_status --help``, ``python -m
  core.worker --help``, a benchmark workload at a small size).

A command that is neither fails ``test_every_readme_command_is_exercised`` with its README line.

What counts as a command: every line of a fenced ``sh``/``console``/``bash`` block (comments, ``$``
prompts and line continuations handled; ``a && b``, ``a | b`` and ``a; b`` are separate commands),
lines of an untagged fenced block that start with a command (``vine_*``, ``python -m``, ``pip
install``, ``.venv/bin/...``), and inline code spans of those forms that carry at least one argument
(a bare ``vine_worker`` names the program; it is not a command).

What "its essential arguments" means (normalised):

- the program: ``vine_factory`` is ``python -m core.deploy.factory`` (pyproject's ``[project.scripts]``),
  ``python -m core.worker`` is ``core.worker.main``, ``.venv/bin/X`` is ``X``;
- every option, short or long (``-T`` is ``--batch-type``: the alias groups come from each of our
  programs' real ``--help``), and the value of the options that select what runs (``--batch-type``,
  ``--mode``, ``-k``); other values (``--cores 8``, ``--manager-name my-run``) are examples;
- positional words (``regular``, ``dask-sum``, ``localhost``) and paths that exist in the repository
  (``tests/daskvine``); not placeholders (``HOST``, ``PORT``, ``$USER``), numbers or example paths;
- environment assignments in front of the command (``VINE_TEST_NOTEBOOKS=1``);
- for ``pip install``: each extra of the project (``.[dask]``, ``'core-vine[metrics]'``), which must
  exist in pyproject and be installed by a CI ``pip install``, by name or because an extra CI installs
  requires every package it requires; and each other package by name.

A candidate in CI or the tests exercises a README command when it runs the same program with all of
its essential arguments (it may have more).
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its old name
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11) or tomli")

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
THIS_FILE = Path(__file__).resolve()

# Options whose value selects what runs, so a README command and its test must agree on it.
VALUE_MATTERS = {"--batch-type", "--mode", "-k"}
# Flags that change nothing a reader needs to see exercised.
NOISE_FLAGS = {"-q", "--quiet", "-qq"}
# Shell builtins: they set up the shell, they are not programs a test could run.
BUILTINS = {"cd", "export", "source", ".", "set", "unset", "trap", "exit"}
# How a line of a fenced block or an inline span starts when it is a command.
COMMAND_START = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:vine_\w+|python3?\s+-m\s|(?:\.\./)?\.venv[\w-]*/bin/|pip3?\s+install\s)")
SHELL_LANGS = {"sh", "bash", "console", "shell", "shell-session"}
# Test helpers that start a program (tests/conftest.py), with the program they start.
LAUNCHERS = {"WorkerProcess": "core.worker", "start_worker": "core.worker"}
# Calls whose first argument is a shell command line (Task runs it with sh -c).
SHELL_CALLS = {"run", "Popen", "check_output", "check_call", "call", "system", "getoutput", "Task"}


# ---------------------------------------------------------------------------------------------
# The project's programs


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@functools.cache
def scripts() -> dict[str, str]:
    """console-script name -> module, ours from pyproject, others (vine_parse ...) from what is installed."""
    from importlib.metadata import entry_points

    out = {ep.name: ep.value.split(":")[0] for ep in entry_points(group="console_scripts") if ep.name.startswith("vine_")}
    out.update({name: target.split(":")[0] for name, target in pyproject()["project"]["scripts"].items()})
    return out


def canonical_module(module: str) -> str:
    """``core.worker``, ``core.worker.main`` and ``core.worker.__main__`` are one program."""
    for suffix in (".__main__", ".main"):
        if module.endswith(suffix):
            return module[: -len(suffix)]
    return module


def ours(program: str) -> bool:
    return program.split(".")[0] in ("core", "daskvine", "parslvine")


def _requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~;\s]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


@functools.cache
def extra_requirements() -> dict[str, frozenset[str]]:
    """extra -> the package names it requires (pyproject's optional-dependencies)."""
    extras = pyproject()["project"]["optional-dependencies"]
    return {name: frozenset(_requirement_name(r) for r in reqs) for name, reqs in extras.items()}


# ---------------------------------------------------------------------------------------------
# Commands: parsing and normalising


@dataclass(frozen=True)
class Command:
    """One program run: where it was written, and what it runs."""

    where: str                       # "README.md:123" or "tests/x.py:45"
    program: str                     # canonical: a module ("core.deploy.factory"), "pip", a script path, a name
    args: tuple[str, ...]            # what follows the program, as the shell would split it
    env: tuple[str, ...] = ()        # NAME=VALUE assignments in front of it
    text: str = field(default="", compare=False)


def _is_env_assignment(word: str) -> bool:
    return re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word) is not None


def command_from_words(words: list[str], where: str, text: str = "") -> Command | None:
    """The program a shell word list runs, with its arguments; None for a builtin or nothing."""
    env = []
    while words and _is_env_assignment(words[0]):
        env.append(words.pop(0))
    if not words or words[0] in BUILTINS:
        return None
    head, rest = words[0], words[1:]
    base = head.rsplit("/", 1)[-1] if "/bin/" in head or head.startswith(("/", ".venv")) else head
    if re.fullmatch(r"python3?(\.\d+)?", base) or base == "<python>":
        if rest[:1] == ["-m"] and len(rest) >= 2:
            module = canonical_module(rest[1])
            program = "pip" if module == "pip" else module
            return Command(where, program, tuple(rest[2:]), tuple(env), text)
        if rest and not rest[0].startswith("-"):
            return Command(where, rest[0].removeprefix("./"), tuple(rest[1:]), tuple(env), text)
        return Command(where, "python", tuple(rest), tuple(env), text)
    if base in ("bash", "sh") and rest and not rest[0].startswith("-"):
        return Command(where, rest[0].removeprefix("./"), tuple(rest[1:]), tuple(env), text)
    if base in ("pip", "pip3"):
        return Command(where, "pip", tuple(rest), tuple(env), text)
    if base in scripts():
        return Command(where, canonical_module(scripts()[base]), tuple(rest), tuple(env), text)
    return Command(where, head.removeprefix("./"), tuple(rest), tuple(env), text)


def shell_commands(line: str, where: str) -> list[Command]:
    """The commands of one logical shell line: ``a && b | c; d &`` is four."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:  # unbalanced quotes: say where, do not guess
        raise AssertionError(f"{where}: cannot split {line!r} as a shell line: {exc}") from exc
    out: list[Command] = []
    words: list[str] = []
    redirect = False
    for tok in tokens + [";"]:
        if tok in (";", "&", "&&", "|", "||", ";;"):
            cmd = command_from_words(words, where, line.strip())
            if cmd is not None:
                out.append(cmd)
            words, redirect = [], False
        elif set(tok) <= set("<>&") or re.fullmatch(r"\d?[<>]+&?\d*", tok):
            redirect = True             # the next word is a redirection target, not an argument
        elif redirect:
            redirect = False
        else:
            words.append(tok)
    return out


def _logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; yield (first line number, joined text)."""
    start, buf = None, ""
    for n, line in lines:
        if start is None:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield start, buf + line
        start, buf = None, ""
    if start is not None:
        yield start, buf


def readme_commands(text: str, name: str = "README.md") -> list[Command]:
    """Every shell command the README shows, with its line number."""
    out: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w-]*)", lines[i])
        if fence:
            marker, lang = fence.group(1), fence.group(2).lower()
            body: list[tuple[int, str]] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append((i + 1, lines[i]))
                i += 1
            i += 1
            if lang in SHELL_LANGS:
                for n, line in _logical_lines(body):
                    stripped = line.strip()
                    if lang in ("console", "shell-session"):
                        if not stripped.startswith("$ "):
                            continue            # output, not a command
                        stripped = stripped[2:]
                    out += shell_commands(stripped, f"{name}:{n}")
            elif lang == "":
                for n, line in _logical_lines(body):
                    if COMMAND_START.match(line.strip()):
                        out += shell_commands(line.strip(), f"{name}:{n}")
            continue
        if re.match(r"^( {4}|\t)\S", lines[i]) and (i == 0 or not lines[i - 1].strip()):
            # an indented code block: the same rule as an untagged fence
            while i < len(lines) and (re.match(r"^( {4}|\t)", lines[i]) or not lines[i].strip()):
                if COMMAND_START.match(lines[i].strip()):
                    out += shell_commands(lines[i].strip(), f"{name}:{i + 1}")
                i += 1
            continue
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", lines[i]):
            span = span.strip()
            if COMMAND_START.match(span) and len(span.split()) > 1:
                out += shell_commands(span, f"{name}:{i + 1}")
        i += 1
    return out


# ---------------------------------------------------------------------------------------------
# Where CI and the tests run commands


def _sh_files() -> list[Path]:
    files = [p for p in (ROOT / ".ci").rglob("*") if p.is_file()]
    files += sorted((ROOT / "tests").rglob("*.sh"))
    return files


def sh_invocations(path: Path) -> list[Command]:
    rel = path.relative_to(ROOT)
    numbered = list(enumerate(path.read_text(errors="replace").splitlines(), 1))
    out: list[Command] = []
    for n, line in _logical_lines(numbered):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out += shell_commands(line, f"{rel}:{n}")
        except AssertionError:
            continue                    # a heredoc or a quoted multi-line string: not a command line
    return out


def _strings(node: ast.AST) -> list[str]:
    """The argv words an expression contributes: its string constants, ``sys.executable`` as python."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Attribute) and node.attr == "executable":
        return ["<python>"]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "{x}" for v in node.values)]
    if isinstance(node, ast.BinOp):        # "-p debug " + name, BIN / "vine_status"
        parts = _strings(node.left) + _strings(node.right)
        return ["".join(parts)] if isinstance(node.op, ast.Add) else parts[-1:]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
        return _strings(node.args[0])
    if isinstance(node, ast.Starred):
        if isinstance(node.value, (ast.List, ast.Tuple)):
            return [w for e in node.value.elts for w in _strings(e)]
        if isinstance(node.value, ast.Call):  # *tool("vine_parse"): the program it names
            return [w for a in node.value.args for w in _strings(a)]
        if isinstance(node.value, ast.BoolOp):  # *(extra or [])
            return [w for v in node.value.values for w in _strings(ast.Starred(value=v))]
    return ["{x}"]


def _argv_command(words: list[str], where: str) -> Command | None:
    """An argv list is an invocation when one of its words names a program we know."""
    for k, w in enumerate(words):
        base = w.rsplit("/", 1)[-1]
        if w == "-m" and k + 1 < len(words):
            return command_from_words(["<python>", *words[k:]], where)
        if base in scripts() or base in ("pip", "pip3") or base.endswith(".sh"):
            return command_from_words([base if base in scripts() else w, *words[k + 1:]], where)
    return None


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def python_invocations(source: str, rel: str) -> list[Command]:
    """The commands a test file runs: argv lists, launcher calls, shell lines given to subprocess/Task."""
    tree = ast.parse(source)
    skip = _docstring_nodes(tree)
    # environment a file sets for what it runs: "NAME": "value" in a dict, setenv("NAME", "value")
    env = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Constant):
                    env.append(f"{k.value}={v.value}")
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setenv" and len(node.args) == 2
              and all(isinstance(a, ast.Constant) for a in node.args)):
            env.append(f"{node.args[0].value}={node.args[1].value}")
    # names bound to modules: `from core.tools import status` makes `status.main([...])` a run of it
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            modules.update({a.asname: a.name for a in node.names if a.asname})
    out: list[Command] = []
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        cmd = None
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [w for e in node.elts for w in _strings(e)]
            cmd = _argv_command(words, where)
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            owner = node.func.value.id if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) else ""
            if name == "main" and owner in modules and node.args and isinstance(node.args[0], (ast.List, ast.Tuple)):
                # module.main([...]) runs the program in-process, exactly as its console script does
                words = [w for e in node.args[0].elts for w in _strings(e)]
                cmd = Command(where, canonical_module(modules[owner]), tuple(words))
            elif name in LAUNCHERS:
                words = [w for kw in node.keywords if kw.arg == "extra" for w in _strings(ast.Starred(value=kw.value))]
                cmd = Command(where, LAUNCHERS[name], tuple(words))
            elif name in SHELL_CALLS and node.args and id(node.args[0]) not in skip:
                first = node.args[0]
                if isinstance(first, (ast.Constant, ast.JoinedStr)) and isinstance(getattr(first, "value", ""), str):
                    line = _strings(first)[0]
                    try:
                        out += [c for c in shell_commands(line, where)]
                    except AssertionError:
                        pass
        if cmd is not None:
            out.append(cmd)
    return [Command(c.where, c.program, c.args, tuple(c.env) + tuple(env), c.text) for c in out]


@functools.cache
def ci_and_test_invocations() -> tuple[Command, ...]:
    out: list[Command] = []
    for path in _sh_files():
        out += sh_invocations(path)
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.resolve() == THIS_FILE:
            continue    # what this file runs is listed in RUN_HERE, and run below
        out += python_invocations(path.read_text(), str(path.relative_to(ROOT)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Essential arguments


def parse_help_aliases(help_text: str) -> dict[str, str]:
    """argparse help -> {every option string: its canonical (longest) spelling}."""
    aliases: dict[str, str] = {}
    for line in help_text.splitlines():
        m = re.match(r"^ {1,4}(-[^\s,].*?)(?:\s{2,}|$)", line)
        if not m:
            continue
        names = [part.strip().split()[0] for part in m.group(1).split(", ") if part.strip().startswith("-")]
        if names:
            canon = max(names, key=len)
            aliases.update({n: canon for n in names})
    return aliases


@functools.cache
def tracked_paths() -> frozenset[str]:
    """Files and directories git tracks: what a command can name as a path of the repository."""
    out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True, timeout=60).stdout
    paths = set()
    for f in out.splitlines():
        parts = f.split("/")
        paths |= {"/".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return frozenset(paths)


def _placeholder(word: str) -> bool:
    return bool(re.search(r"[A-Z]{2,}|\$|\.\.\.|^\[|^<|^[A-Z]$", word))


def _number(word: str) -> bool:
    return re.fullmatch(r"[\d.:,]+[kKMG]?", word) is not None


def _is_flag(word: str) -> bool:
    """``--cores``, ``-T``; not ``-`` (stdin), ``-1`` (a number) or ``"-p debug -t 1:00"`` (a value with spaces)."""
    return word.startswith("-") and word != "-" and not _number(word.lstrip("-")) and " " not in word


def _pip_items(args: Iterable[str], ci: bool) -> set[str]:
    items: set[str] = set()
    extras: set[str] = set()
    it = iter(args)
    for a in it:
        if a in ("install", "-e", "--editable", "-U", "--upgrade") or a in NOISE_FLAGS:
            continue
        if a.startswith("-"):
            items.add(a)
            continue
        m = re.fullmatch(r"(\.|core-vine)(?:\[([\w,-]*)\])?", a)
        if m:
            items.add("project")
            extras |= {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
        else:
            items.add("package:" + _requirement_name(a))
    if ci and extras:
        # an extra whose packages all come with an extra CI installs is installed too
        have = set().union(*(extra_requirements().get(e, frozenset()) for e in extras))
        extras |= {e for e, reqs in extra_requirements().items() if reqs and reqs <= have}
    return items | {"extra:" + e for e in extras}


def items_of(cmd: Command, aliases: dict[str, str], essential: bool) -> set[str]:
    """The normalised arguments of a command; with essential=True only those a test must repeat."""
    if cmd.program == "pip":
        return _pip_items(cmd.args, ci=not essential)
    items = {"env:" + e for e in cmd.env}
    args = list(cmd.args)
    k = 0
    while k < len(args):
        a = args[k]
        if _is_flag(a):
            flag, _, inline = a.partition("=")
            if not flag.startswith("--") and flag not in aliases and flag[:2] in aliases:
                flag, inline = flag[:2], flag[2:]      # -Tpng is -T png
            flag = aliases.get(flag, flag)
            if flag in NOISE_FLAGS:
                k += 1
                continue
            items.add(flag)
            value = inline or (args[k + 1] if k + 1 < len(args) and not _is_flag(args[k + 1]) else None)
            if value is not None:
                if not essential or flag in VALUE_MATTERS:
                    items.add(f"{flag}={value}")
                if not inline:
                    k += 1
        elif not essential:
            items.add(a)
        elif not (_placeholder(a) or _number(a)):
            if "/" in a or a.endswith((".log", ".png", ".txt", ".out", ".json")):
                if a.rstrip("/") in tracked_paths():
                    items.add(a.rstrip("/"))        # a path into the repository is essential; an example path is not
            else:
                items.add(a)
        k += 1
    if not essential:
        items |= {a.rstrip("/") for a in cmd.args}
    return items


def covers(candidate: Command, cmd: Command, aliases: dict[str, str]) -> bool:
    if candidate.program != cmd.program:
        return False
    if {"--help", "-h"} & set(candidate.args) and not {"--help", "-h"} & set(cmd.args):
        return False        # a --help run shows that a program starts, not that it does its work
    need = items_of(cmd, aliases, essential=True)
    have = items_of(candidate, aliases, essential=False)
    if cmd.program == "pytest":
        # a pytest run over all of tests/ (no path given) covers a run of any part of it
        paths = {i for i in need if i.startswith("tests")}
        if not any(i.startswith("tests") for i in have):
            need -= paths
        else:
            need -= {p for p in paths if any(p == h or p.startswith(h + "/") for h in have)}
    return need <= have


# ---------------------------------------------------------------------------------------------
# What this file runs itself


@dataclass(frozen=True)
class RunHere:
    """A README command run by this file: its words, a budget, and what its output must show."""

    words: tuple[str, ...]
    timeout: float
    expect: str                      # a regex the output (stdout + stderr) must match
    json_rows: bool = True           # benchmarks print their measurements as JSON lines


RUN_HERE: tuple[RunHere, ...] = (
    # The README's main job, exactly as its first command runs it; then the benchmark commands the
    # README shows, at small sizes where they have one. Their figures are not checked (noise on a
    # shared machine), their rows are. The longest go first: they run three at a time.
    # parsl-perf's rounds fill 5 s per peer, and htex always runs (every ratio is to it): htex alone
    # checks the harness; parsl-cpu below runs a parslvine peer through the same configs
    RunHere(("vine_benchmark", "parsl-quick", "--vs", "htex"), 240, r'"workload": "parsl-quick"'),
    RunHere(("vine_benchmark", "parsl-cpu", "-n", "60", "--vs", "parslvine-serverless"), 240, r'"workload": "parsl-cpu"'),
    RunHere(("vine_benchmark", "python-cpu"), 120, r'"workload": "python-cpu"'),
    RunHere(("vine_benchmark", "dask-sum", "dask-chain", "dask-array", "--vs", "threaded", "--repeat", "1"), 180, r"dask-array"),
    RunHere(("python", "-m", "core.tools.bench_sandbox", "--tasks", "20"), 180, r'"op": "tasks"'),
    RunHere(("python", "-m", "core.tools.quickstart"), 180, r"done in [\d.]+s with \d+ workers, 0 failures", json_rows=False),
    # the six core rows and their goal table (bench_table.py), small where a row has a size
    RunHere(("vine_benchmark", "std", "python", "funcall", "funcall-fork", "chain", "queue-mem", "--repeat", "2", "--table", "-n", "60",
             "--chain-length", "20", "--queue-tasks", "2000"), 300, r"\| funcall-fork: `FunctionCall`, fork mode \|.*\(median of 2: .*\| (yes|no) \|"),
)


def run_words(words: tuple[str, ...], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command as the README writes it, in this venv: ``vine_x`` is this venv's script."""
    words = list(words)
    bindir = Path(sys.executable).parent
    if words[0] in scripts():
        script = bindir / words[0]
        if script.exists():
            words[0] = str(script)
        else:                                   # not installed as a script (a plain checkout): its entry point
            module = scripts()[words[0]]
            words = [sys.executable, "-c", f"import sys; from {module} import main; sys.argv[0] = {words[0]!r}; sys.exit(main())",
                     *words[1:]]
    elif words[0] in ("python", "python3"):
        words[0] = sys.executable
    full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run(words, check=False, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def _help_command(program: str) -> tuple[str, ...]:
    names = [n for n, module in scripts().items() if canonical_module(module) == program]
    return (names[0], "--help") if names else ("python", "-m", program, "--help")


@functools.cache
def help_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """program -> its ``--help`` output, for every program of ours the README runs (run here, in parallel)."""
    programs = sorted({c.program for c in readme_commands(README.read_text()) if ours(c.program)})
    programs += [canonical_module(m) for m in pyproject()["project"]["scripts"].values() if canonical_module(m) not in programs]

    def one(program: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return program, run_words(_help_command(program), 60)

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, programs))


def help_texts() -> dict[str, str]:
    """program -> its ``--help`` text, for the programs whose ``--help`` worked."""
    return {p: out.stdout for p, out in help_runs().items() if out.returncode == 0}


def aliases_for(program: str) -> dict[str, str]:
    return parse_help_aliases(help_texts().get(program, ""))


def run_here_commands() -> list[Command]:
    """RUN_HERE and every ``--help`` this file runs, as commands."""
    out = [command_from_words(list(r.words), f"{Path(__file__).name}:RUN_HERE") for r in RUN_HERE]
    out += [command_from_words(list(_help_command(p)), f"{Path(__file__).name}:help") for p in help_texts()]
    return [c for c in out if c is not None]


def unexercised(commands: Iterable[Command], candidates: Iterable[Command],
                aliases: Callable[[str], dict[str, str]] = aliases_for) -> list[Command]:
    """The commands no candidate covers."""
    candidates = list(candidates)
    return [c for c in commands if not any(covers(k, c, aliases(c.program)) for k in candidates)]


def unexercised_report(missing: list[Command]) -> str:
    return "README commands that neither CI, a test nor tests/unit/test_readme.py runs:\n" + "\n".join(
        f"  {c.where}: {c.text or ' '.join((c.program, *c.args))}" for c in missing)


# ---------------------------------------------------------------------------------------------
# The tests


def test_every_readme_command_is_exercised():
    commands = readme_commands(README.read_text())
    assert len(commands) > 20, "the extractor found almost no commands in README.md: is it still a guide?"
    missing = unexercised(commands, [*ci_and_test_invocations(), *run_here_commands()])
    assert not missing, unexercised_report(missing)


def test_readme_pip_extras_exist():
    """An extra the README installs must be one pyproject defines (pip only warns about an unknown one)."""
    wrong = []
    for c in readme_commands(README.read_text()):
        if c.program == "pip":
            for item in _pip_items(c.args, ci=False):
                if item.startswith("extra:") and item[6:] not in extra_requirements():
                    wrong.append(f"{c.where}: {item[6:]}")
    assert not wrong, f"README installs extras pyproject does not define: {wrong}"


@pytest.mark.parametrize("program", sorted({c.program for c in readme_commands(README.read_text()) if ours(c.program)}))
def test_help_of_every_program_the_readme_runs(program):
    """``vine_factory --help`` and the like: each of our programs the README shows starts and explains itself."""
    out = help_runs()[program]
    assert out.returncode == 0, f"{' '.join(_help_command(program))} exited {out.returncode}: {out.stderr[-2000:]}"
    text = out.stdout
    assert text.startswith("usage:"), text[:200]
    assert parse_help_aliases(text), f"no options found in the help of {program}"


def test_readme_options_exist():
    """Every option a README command gives one of our programs is one that program's --help lists."""
    wrong = []
    for c in readme_commands(README.read_text()):
        if not ours(c.program) or c.program not in help_texts():
            continue
        known = aliases_for(c.program)
        for a in c.args:
            flag = a.partition("=")[0]
            if _is_flag(a) and flag not in known and (flag.startswith("--") or flag[:2] not in known):
                wrong.append(f"{c.where}: {flag} ({c.text})")
    assert not wrong, "README options the programs do not have:\n" + "\n".join(wrong)


@functools.cache
def run_here_results(tmp: str) -> dict[RunHere, subprocess.CompletedProcess[str] | BaseException]:
    """Every RUN_HERE command's outcome. They run three at a time: most of their time is waiting
    (workers starting, parsl-perf's fixed-length rounds), and nothing here times them."""

    def one(run: RunHere) -> subprocess.CompletedProcess[str] | BaseException:
        try:
            return run_words(run.words, run.timeout, env={"TMPDIR": tmp})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return exc

    with ThreadPoolExecutor(3) as pool:
        return dict(zip(RUN_HERE, pool.map(one, RUN_HERE)))


@pytest.mark.timeout(480)
@pytest.mark.parametrize("run", RUN_HERE, ids=lambda r: " ".join(r.words))
def test_run_here(run, tmp_path_factory):
    out = run_here_results(str(tmp_path_factory.getbasetemp()))[run]
    name = " ".join(run.words)
    assert not isinstance(out, BaseException), f"{name} did not finish: {out!r}"
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"{name} exited {out.returncode}:\n{text[-3000:]}"
    assert re.search(run.expect, text), f"{name} printed no {run.expect!r}:\n{text[-3000:]}"
    if run.json_rows:
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert rows, f"{name} printed no JSON rows:\n{text[-3000:]}"


# ---------------------------------------------------------------------------------------------
# The table of contents and the links inside the README

CONTENTS_START, CONTENTS_END = "<!-- contents -->", "<!-- /contents -->"


def headings(text: str) -> list[tuple[int, str, str]]:
    """(level, title, GitHub's anchor) of every ## and ### heading outside code blocks."""
    out, seen, fenced = [], {}, False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#{1,6}) (.*)$", line)
        if m:
            title = m.group(2).strip()
            slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.append((len(m.group(1)), title, slug if n == 0 else f"{slug}-{n}"))
    return out


def contents(text: str) -> str:
    """The contents block: each ## section, with its ### subsections on the same line."""
    lines = [CONTENTS_START, "**Contents**", ""]
    for level, title, slug in headings(text):
        if level == 2:
            lines.append(f"- [{title}](#{slug})")
        elif level == 3 and len(lines) > 3:
            lines[-1] += ("; " if " — " in lines[-1] else " — ") + f"[{title}](#{slug})"
    return "\n".join(lines + ["", CONTENTS_END])


def with_contents(text: str) -> str:
    """The README with its contents block rebuilt (between the markers, or at a bare start marker)."""
    if CONTENTS_END in text:
        start, end = text.index(CONTENTS_START), text.index(CONTENTS_END) + len(CONTENTS_END)
        text = text[:start] + CONTENTS_START + text[end:]
    return text.replace(CONTENTS_START, contents(text.replace(CONTENTS_START, "")), 1)


def test_contents_lists_every_section():
    text = README.read_text()
    assert CONTENTS_END in text, "README.md has no contents block"
    assert with_contents(text) == text, (
        "README.md's contents block is out of date: run `.venv/bin/python tests/unit/test_readme.py --contents`")


def test_every_link_inside_the_readme_has_its_heading():
    text = README.read_text()
    anchors = {slug for _, _, slug in headings(text)}
    broken = [f"README.md:{n}: #{a}" for n, line in enumerate(text.splitlines(), 1)
              for a in re.findall(r"\]\(#([^)\s]+)\)", line) if a not in anchors]
    assert not broken, "links to headings README.md does not have:\n" + "\n".join(broken)


def code_map_modules(text: str) -> list[tuple[str, str]]:
    """(package directory, module) for each module the code map names: the code spans of the third
    column that are not inside parentheses (those describe a module: ``main`` (``Worker``: ...))."""
    section = text[text.index("### Code map"):]
    section = section[: section.index("\n#", 1)]
    out = []
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[\w/]+/`", cells[0]):
            continue
        package = cells[0].strip("`").rstrip("/")
        held = cells[2]
        while re.search(r"\([^()]*\)", held):
            held = re.sub(r"\([^()]*\)", "", held)
        held = held.split(":", 1)[1] if re.match(r"^[^`]*`[^`]+`\s*:", held) else held  # "`vine_worker`: ..." names the program
        out += [(package, name) for name in re.findall(r"`([a-z_][a-z0-9_]*)`", held)]
    return out


def test_code_map_names_modules_that_exist():
    """The code map follows the package tree: a module it names that is not there is a map gone stale."""
    mods = code_map_modules(README.read_text())
    assert len(mods) > 40, f"found only {len(mods)} modules in the code map: did its table change shape?"
    missing = [f"{pkg}/{name}.py" for pkg, name in mods if not (ROOT / pkg / f"{name}.py").exists() and not (ROOT / pkg / name).is_dir()]
    assert not missing, f"the README's code map names modules that do not exist: {missing}"
    listed = {(pkg, name) for pkg, name in mods}
    unlisted = sorted(f"{p.parent.relative_to(ROOT)}/{p.name}" for p in (ROOT / "core").glob("*/*.py")
                      if p.stem not in ("__init__", "__main__") and (str(p.parent.relative_to(ROOT)), p.stem) not in listed)
    assert not unlisted, f"modules the README's code map does not name: {unlisted}"


# ---------------------------------------------------------------------------------------------
# The extractor itself: it finds commands, and a command nobody runs fails


FAKE_README = """\
# Guide

Run `vine_worker --cores 2 localhost PORT` by hand, or `vine_frobnicate --zap 3`; `vine_status` names it.

```sh
# a comment
vine_factory -T slurm --manager-name my-run \\
    -B "-p debug" -S /scratch/$USER/f && echo done
.venv/bin/python -m pytest -q tests/daskvine
```

```python
import core   # not a shell block
vine_worker = 1
```

```
vine_status HOST PORT -T
just output
```

    vine_benchmark dask-chain --vs daskvine
"""


def test_extractor_finds_commands_with_their_lines():
    cmds = readme_commands(FAKE_README, "FAKE")
    got = [(c.where, c.program, c.args) for c in cmds]
    assert got == [
        ("FAKE:3", "core.worker", ("--cores", "2", "localhost", "PORT")),
        ("FAKE:3", "vine_frobnicate", ("--zap", "3")),
        ("FAKE:7", "core.deploy.factory", ("-T", "slurm", "--manager-name", "my-run", "-B", "-p debug", "-S", "/scratch/$USER/f")),
        ("FAKE:7", "echo", ("done",)),
        ("FAKE:9", "pytest", ("-q", "tests/daskvine")),
        ("FAKE:18", "core.tools.status", ("HOST", "PORT", "-T")),
        ("FAKE:22", "core.tools.benchmark", ("dask-chain", "--vs", "daskvine")),
    ], got


def test_a_command_nobody_runs_fails_with_its_line():
    cmds = readme_commands(FAKE_README, "FAKE")
    candidates = sh_invocations_from_text(
        "python3 -m core.worker --cores 1 --memory 10 localhost 9123\n"
        "PYTHONPATH=. .venv/bin/python -m core.deploy.factory --batch-type slurm -M x -B '-p q' -S /tmp/s\n"
        "echo done\n.venv-dask/bin/python -m pytest -q tests/daskvine\n"
        "vine_status localhost 9123 --tasks\n"
        "vine_benchmark dask-chain --vs threaded --repeat 1\n")
    aliases = {"core.deploy.factory": {"-T": "--batch-type", "--batch-type": "--batch-type", "-M": "--manager-name",
                                       "--manager-name": "--manager-name", "-B": "--batch-options", "--batch-options": "--batch-options",
                                       "-S": "--scratch-dir", "--scratch-dir": "--scratch-dir"},
               "core.tools.status": {"-T": "--tasks", "--tasks": "--tasks"}}
    missing = unexercised(cmds, candidates, lambda program: aliases.get(program, {}))
    assert [(c.where, c.program) for c in missing] == [("FAKE:3", "vine_frobnicate")]
    # the failure names the command as the README writes it, with its line
    assert "  FAKE:3: vine_frobnicate --zap 3" in unexercised_report(missing).splitlines()
    # the batch type is essential: a factory run on another batch system does not cover -T slurm
    other = sh_invocations_from_text("vine_factory -T condor -M x -B q -S /tmp/s\n")
    assert not covers(other[0], cmds[2], aliases["core.deploy.factory"])
    # a missing option is missing: --repeat is in the candidate, not in the README; the reverse fails
    readme_repeat = sh_invocations_from_text("vine_benchmark dask-chain --repeat 3 --trace\n")[0]
    assert not covers(candidates[-1], readme_repeat, {})


def test_python_invocations_are_found():
    source = '''
"""Docstring: vine_status --help is mentioned, not run."""
import subprocess, sys
from tests.conftest import WorkerProcess
ENV = {"PIP_NO_INDEX": "1"}
def tool(name):
    return [sys.executable, "-m", "x." + name]
def test_x(start_worker, m):
    subprocess.run([sys.executable, "-m", "core.deploy.factory", "-T", "slurm", "-B", "-p debug " + m.name])
    subprocess.run([*tool("vine_parse"), "--logs-dir", "d", "--templates", "t"])
    start_worker(m, extra=["--ssl", "--password", str(m)])
    subprocess.run(f"vine_status localhost {m.port}", shell=True)
'''
    got = {(c.program, c.args) for c in python_invocations(source, "t.py")}
    assert ("core.deploy.factory", ("-T", "slurm", "-B", "-p debug {x}")) in got
    assert (scripts().get("vine_parse", "vine_parse").removesuffix(".main"), ("--logs-dir", "d", "--templates", "t")) in {
        (canonical_module(p), a) for p, a in got}
    assert ("core.worker", ("--ssl", "--password", "{x}")) in got
    assert ("core.tools.status", ("localhost", "{x}")) in got
    assert all("--help" not in a for _, a in got), "a docstring was taken for a command"
    envs = {e for c in python_invocations(source, "t.py") for e in c.env}
    assert "PIP_NO_INDEX=1" in envs


def test_pip_extras_are_matched_by_what_ci_installs():
    readme = sh_invocations_from_text("pip install -e '.[metrics]'\npip install -e '.[bench]'\npip install jupyterlab\n")
    ci = sh_invocations_from_text(".venv/bin/pip install -q -e '.[test,awkward]'\n")
    # metrics' only package (prometheus_client) comes with the test extra; bench's (distributed) does not
    assert covers(ci[0], readme[0], {})
    assert not covers(ci[0], readme[1], {})
    assert not covers(ci[0], readme[2], {})


def test_help_aliases_are_parsed():
    text = """usage: x [-h] [-T BATCH_TYPE]

options:
  -h, --help            show this help message and exit
  -T BATCH_TYPE, --batch-type BATCH_TYPE
                        one of local, slurm
  --cores CORES
  -d DEBUG, --debug DEBUG
"""
    assert parse_help_aliases(text) == {"-h": "--help", "--help": "--help", "-T": "--batch-type", "--batch-type": "--batch-type",
                                        "--cores": "--cores", "-d": "--debug", "--debug": "--debug"}


def test_launchers_start_what_they_are_said_to_start():
    """LAUNCHERS names conftest helpers: each must really run its program, or the mapping lies."""
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    found = {c.program for c in python_invocations(conftest, "tests/conftest.py")}
    for name, program in LAUNCHERS.items():
        assert re.search(rf"\b(def|class) {name}\b", conftest), f"tests/conftest.py no longer defines {name}"
        assert program in found, f"tests/conftest.py no longer runs {program}"


def sh_invocations_from_text(text: str) -> list[Command]:
    return [c for n, line in enumerate(text.splitlines(), 1) for c in shell_commands(line, f"text:{n}")]


if __name__ == "__main__":
    # `.venv/bin/python tests/unit/test_readme.py --contents` rewrites README.md's contents block
    if sys.argv[1:] != ["--contents"]:
        raise SystemExit("usage: test_readme.py --contents")
    README.write_text(with_contents(README.read_text()))
