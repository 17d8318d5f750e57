"""``vine_submit_workers``: submit a fixed number of workers to a batch system, then exit.

    vine_submit_workers -T slurm login1.cluster.edu 9123 10 --cores 4 --memory 8000 -B "-p debug -t 01:00:00"
    vine_submit_workers -T condor -M myproject 20

TaskVine's tool of the same name, for when a factory that follows the workload is not wanted. It
prints one line per job (``submitted slurm job 1234``); the workers run until their idle
``--timeout``, or until removed with the batch system's own command (``scancel``, ``condor_rm``,
``qdel``). With ``-T local`` they are detached processes on this host that outlive this command.
The worker command line is the factory's, so the two agree on every option.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ..deploy.batch import SUPPORTED_TYPES, make_queue
from ..deploy.factory import FactoryRunner, read_password_file, settings_from_args
from ..deploy.factory import build_parser as factory_parser
from ..errors import FactoryError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vine_submit_workers",
                                description="Submit N workers for a manager (HOST PORT, or -M NAME) and exit.")
    p.add_argument("target", nargs="*", help="HOST PORT N, or N with -M NAME")
    p.add_argument("-T", "--batch-type", required=True, help=f"one of {', '.join(t for t in SUPPORTED_TYPES if t != 'dryrun')}")
    p.add_argument("-M", "--manager-name", help="project name (regex) the workers look up in the catalog")
    p.add_argument("--catalog", help="catalog directory or HOST:PORT (default $VINE_CATALOG)")
    p.add_argument("--cores", type=float)
    p.add_argument("--memory", type=float, help="MB")
    p.add_argument("--disk", type=float, help="MB")
    p.add_argument("--gpus", type=float)
    p.add_argument("-t", "--timeout", type=float, default=300, help="worker idle timeout in seconds (300)")
    p.add_argument("-B", "--batch-options", help="options for the batch system's submit command")
    p.add_argument("-E", "--extra-options", help="more vine_worker options")
    p.add_argument("-P", "--password", help="file holding the manager's password")
    p.add_argument("--ssl", action="store_true", help="the manager uses TLS")
    p.add_argument("-S", "--scratch-dir", help="where job scripts go (default /tmp/vine-submit-<uid>)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.batch_type not in SUPPORTED_TYPES or a.batch_type == "dryrun":
        parser.error(f"batch type {a.batch_type!r} is not supported; use one of {', '.join(t for t in SUPPORTED_TYPES if t != 'dryrun')}")
    if a.manager_name:
        if len(a.target) != 1:
            parser.error("with -M NAME give only the number of workers")
        where: list[str] = ["--manager-name", a.manager_name]
        count = a.target[0]
    else:
        if len(a.target) != 3:
            parser.error("give HOST PORT N (or -M NAME N)")
        where, count = a.target[:2], a.target[2]
    try:
        n = int(count)
    except ValueError:
        parser.error(f"the number of workers must be an integer, not {count!r}")
    if not 0 < n <= 10_000:
        parser.error(f"the number of workers must be between 1 and 10000, not {n}")
    # The factory's own parser and worker command line: one definition of what a worker is started with.
    fargv = ["-T", a.batch_type, "-t", repr(a.timeout), *where]
    for flag in ("cores", "memory", "disk", "gpus", "batch_options", "extra_options", "password", "catalog"):
        v = getattr(a, flag)
        if v is not None:
            fargv += [f"--{flag.replace('_', '-')}", str(v)]
    if a.ssl:
        fargv.append("--ssl")
    fargs = factory_parser().parse_args(fargv)
    fargs.host, fargs.port = (where[0], int(where[1])) if not a.manager_name else (None, None)
    try:
        settings = settings_from_args(fargs)
        if a.password:
            read_password_file(a.password)
        scratch = os.path.abspath(a.scratch_dir or os.path.join(tempfile.gettempdir(), f"vine-submit-{os.getuid()}"))
        os.makedirs(scratch, exist_ok=True)
        queue = make_queue(a.batch_type, scratch, fargs)
        spec = FactoryRunner(fargs, settings, queue).worker_spec()
        spec.argv = [x for x in spec.argv if x != "--parent-death"]  # these workers outlive this command
        for _ in range(n):
            jid = queue.submit(spec, settings)
            print(f"submitted {a.batch_type} job {jid}", flush=True)
    except (FactoryError, OSError, ValueError) as exc:
        print(f"vine_submit_workers: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
