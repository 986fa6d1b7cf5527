"""All benchmarks, each beside its bare baseline in the same run: ``python -m bench``
(or ``hookstream bench``). Needs the stack up (``deploy/local/stack up``) and wrk
(``apt-get install wrk``) for the ingest table.

    python -m bench [stage] [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import time

from hookstream.core import logs
from hookstream.core.config import LogSettings, load

from . import e2e, ingest, normalizer, warehouse

# Each stage and the goal its table is judged against (docs/perf/RESULTS.md).
STAGES = {
    "ingest": "req/s >= 0.7 of (a) and well above (b); p99 < 25 ms at 1,000 req/s on one core",
    "normalizer": "events/s >= 0.6 of the bare loop",
    "warehouse": "rows/s >= 0.7 of the bare copy_records_to_table",
    "e2e": "p99 receive -> warehouse row < 1 s at 1,000 events/s; memory flat under load",
}


def machine() -> str:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cpu or platform.processor()}, {cores} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", nargs="?", choices=list(STAGES),
                        help="one stage only (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="short runs, one round (a smoke test of the suite, not figures "
                             "to quote)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per stage; figures are medians over them "
                             "(default 3, or 1 with --quick)")
    args = parser.parse_args(argv)
    logs.configure("bench", load(LogSettings, level="WARNING", json=False))
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    print(f"hookstream benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
          f"machine: {machine()}\n", flush=True)
    code = 0
    for name in [args.stage] if args.stage else STAGES:
        if name == "ingest":
            code |= ingest.main(["--seconds", "3" if quick else "10",
                                 "--rounds", str(rounds)])
        elif name == "normalizer":
            print(asyncio.run(normalizer.bench(3000 if quick else 20000, rounds)))
        elif name == "warehouse":
            print(asyncio.run(warehouse.bench(3000 if quick else 20000, 500, rounds)))
        else:
            print(asyncio.run(e2e.bench(300 if quick else 1000, 5 if quick else 30, rounds)))
        print(f"goal: {STAGES[name]}\n", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
