"""The README's main job: a real workflow on worker processes this program starts itself.

Runs TaskVine's quickstart (grep a book for three words) against a generated text, then a small
pipeline whose intermediate files never leave the workers (temp files), and prints what happened.
Run it with ``python -m core.tools.quickstart [--workers N]``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import core as vine

WORDS = "the house water needle prince war peace snow river horse letter battle".split()


def make_book(path: str, lines: int = 20000) -> None:
    rng = random.Random(2600)
    with open(path, "w") as fh:
        for _ in range(lines):
            fh.write(" ".join(rng.choice(WORDS) for _ in range(12)) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="vine-quickstart-")
    book = os.path.join(work, "warandpeace.txt")
    make_book(book)

    m = vine.Manager(port=0, run_info_path=os.path.join(work, "vine-run-info"))
    print(f"manager listening on port {m.port}; logs in {m.logging_directory}")
    # On a laptop a local Factory starts worker processes; on a cluster use Factory("slurm", ...) or vine_worker.
    factory = vine.Factory("local", manager=m)
    factory.min_workers = args.workers
    factory.max_workers = args.workers
    factory.cores, factory.memory, factory.disk = 1, 500, 1000
    factory.start()
    start = time.time()
    try:
        f = m.declare_url(f"file://{book}", cache="workflow")
        for kw in ["needle", "house", "water"]:
            t = vine.Task(f"grep {kw} warandpeace.txt | wc")
            t.add_input(f, "warandpeace.txt")
            t.set_cores(1)
            m.submit(t)

        # A pipeline whose middle step lives only in the cluster: sort -> count unique -> top 3.
        sorted_words = m.declare_temp()
        t = vine.Task("tr ' ' '\\n' < book | sort > sorted")
        t.add_input(f, "book")
        t.add_output(sorted_words, "sorted")
        m.submit(t)
        top = m.declare_buffer(None)
        t = vine.Task("uniq -c sorted | sort -rn | head -3 > top")
        t.add_input(sorted_words, "sorted")
        t.add_output(top, "top")
        t.set_tag("top-words")
        m.submit(t)

        failures = 0
        while not m.empty():
            t = m.wait(5)
            if t:
                print(f"task {t.id:2d} {t.result:8s} exit {t.exit_code} on {t.hostname}: {t.output.strip() or t.command}")
                failures += not t.successful()
        print("most common words:\n" + top.contents().decode())
        print(f"done in {time.time() - start:.2f}s with {m.stats.workers_connected} workers, {failures} failures")
        return 1 if failures else 0
    finally:
        factory.stop()
        m.close()


if __name__ == "__main__":
    sys.exit(main())
