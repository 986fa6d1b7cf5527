"""``hookstream bench``: every benchmark beside its bare baseline (bench/)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from .common import REPO


def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmarks live in the repository's bench/ (not the installed package)."""
    if not (REPO / "bench" / "__main__.py").exists():
        print("hookstream bench: run it from a clone of the repository", file=sys.stderr)
        return 2
    extra = ([args.stage] if args.stage else []) + (["--quick"] if args.quick else []) + (
        ["--rounds", str(args.rounds)] if args.rounds else [])
    return subprocess.call([sys.executable, "-m", "bench", *extra], cwd=REPO)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench``."""
    bench = sub.add_parser("bench", help="run every benchmark beside its bare baseline",
                           description="Ingest, normalizer, warehouse, end to end and memory, "
                           "each printed as a table with ratios against a bare baseline "
                           "measured in the same run, medians over rounds "
                           "(bench/; docs/perf/RESULTS.md).")
    bench.add_argument("stage", nargs="?", choices=["ingest", "normalizer", "warehouse", "e2e"],
                       help="one stage only (default: all five tables)")
    bench.add_argument("--quick", action="store_true", help="short runs, one round (smoke test)")
    bench.add_argument("--rounds", type=int, help="rounds per stage; figures are their medians "
                       "(default 3, or 1 with --quick)")
    bench.set_defaults(func=cmd_bench)
