"""``vine_status``: what a manager (or every manager in the catalog) is doing right now.

``vine_status`` with no arguments prints one row per catalog entry; ``vine_status HOST PORT`` asks
that manager over the ordinary protocol (a ``status`` hello, one ``status`` request, one
``status_reply``), so it authenticates like a worker (``-P FILE``) and sees the same data as
``Manager.status``. ``-W`` lists the connected workers, ``-T`` the tasks, ``-l`` prints raw JSON.

:func:`query_status` is the one place that speaks this request; ``vine_factory`` uses it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..deploy.catalog import entries
from ..wire.status_client import query_status, read_password


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


CATALOG_HEADER = ["PROJECT", "HOST", "PORT", "WAITING", "RUNNING", "COMPLETE", "WORKERS"]


def catalog_rows(catalog: str | None = None, project: str | None = None) -> list[list[Any]]:
    import re

    rx = re.compile(project) if project else None
    rows = []
    for e in entries(catalog):
        if rx is not None and not rx.fullmatch(str(e.get("project", ""))):
            continue
        rows.append([e.get("project"), e.get("host"), e.get("port"), e.get("tasks_waiting", 0), e.get("tasks_running", 0),
                     e.get("tasks_done", e.get("tasks_complete", 0)), e.get("workers", 0)])
    return rows


def manager_rows(data: list[dict[str, Any]], host: str) -> list[list[Any]]:
    return [[d.get("project") or "-", host, d.get("port"), d.get("tasks_waiting", 0), d.get("tasks_running", 0),
             d.get("tasks_done", 0), d.get("workers", 0)] for d in data]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vine_status", description="Show the status of a manager, or of every manager in the catalog.")
    p.add_argument("target", nargs="*", help="HOST PORT or HOST:PORT (none: list the catalog)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-W", "--workers", action="store_true", help="list the manager's workers")
    group.add_argument("-T", "--tasks", action="store_true", help="list the manager's tasks")
    group.add_argument("-Q", "--managers", action="store_true", help="one row per manager (the default)")
    p.add_argument("-M", "--project-name", help="only catalog entries whose project fully matches this regex")
    p.add_argument("-l", "--verbose", action="store_true", help="print the raw JSON")
    p.add_argument("-C", "--catalog", help="catalog directory or HOST:PORT of a vine_catalog_server (default $VINE_CATALOG)")
    p.add_argument("-P", "--password", help="file holding the manager's password")
    p.add_argument("--ssl", action="store_true", help="the manager uses TLS")
    p.add_argument("-t", "--timeout", type=float, default=300, help="give up after this many seconds")
    return p


def _target(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, int] | None:
    t = args.target
    try:
        if len(t) == 0:
            return None
        if len(t) == 1 and ":" in t[0]:
            host, _, port = t[0].rpartition(":")
            return host, int(port)
        if len(t) == 2:
            return t[0], int(t[1])
    except ValueError:
        pass
    parser.error("give HOST PORT or HOST:PORT, or nothing to list the catalog")
    return None  # unreachable: error() exits


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    target = _target(args, parser)
    out = sys.stdout
    if target is None:
        if args.workers or args.tasks:
            parser.error("-W and -T need HOST PORT")
        if args.verbose:
            print(json.dumps(entries(args.catalog), indent=2), file=out)
        else:
            print(format_table(CATALOG_HEADER, catalog_rows(args.catalog, args.project_name)), file=out)
        return 0
    host, port = target
    what = "workers" if args.workers else "tasks" if args.tasks else "manager"
    try:
        data = query_status(host, port, what, read_password(args.password), args.ssl, args.timeout)
    except Exception as exc:  # noqa: BLE001 - refused, timed out, bad password: reported the same way
        print(f"vine_status: cannot get {what} status from {host}:{port}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.verbose:
        print(json.dumps(data, indent=2), file=out)
    elif what == "manager":
        print(format_table(CATALOG_HEADER, manager_rows(data, host)), file=out)
    elif what == "workers":
        rows = [[w.get("id"), w.get("hostname"), w.get("addrport"), w.get("total_cores"), w.get("total_memory"),
                 w.get("total_disk"), w.get("total_gpus"), w.get("tasks_running")] for w in data]
        print(format_table(["WORKER", "HOST", "ADDRESS", "CORES", "MEMORY", "DISK", "GPUS", "RUNNING"], rows), file=out)
    else:
        rows = [[t.get("task_id"), t.get("state"), t.get("worker") or "-", t.get("command")] for t in data]
        print(format_table(["ID", "STATE", "WORKER", "COMMAND"], rows), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
