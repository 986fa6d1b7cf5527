"""All benchmarks, each beside its bare baseline in the same run: ``python -m bench``
(or ``hookstream bench``). Needs the stack up (``deploy/local/stack up``) and wrk + hey
(``apt-get install wrk hey``) for the ingest table.

    python -m bench [--quick]
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


def machine() -> str:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cpu or platform.processor()}, {cores} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs (a smoke test of the suite, not figures to quote)")
    args = parser.parse_args(argv)
    logs.configure("bench", load(LogSettings, level="WARNING", json=False))
    quick = args.quick
    print(f"hookstream benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
          f"machine: {machine()}\n", flush=True)
    seconds = "3" if quick else "10"
    code = ingest.main(["--seconds", seconds])
    print(flush=True)
    print(asyncio.run(normalizer.bench(3000 if quick else 20000)), "\n", flush=True)
    print(asyncio.run(warehouse.bench(3000 if quick else 20000, 500)), "\n", flush=True)
    print(asyncio.run(e2e.bench(300 if quick else 1000, 5 if quick else 30)), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
