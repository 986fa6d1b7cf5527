"""The ``hookstream`` argument tree: one module per command family registers its commands."""

from __future__ import annotations

import argparse
import sys

from ..core import logs
from ..core.config import ConfigError, KafkaSettings, LogSettings, help_epilog, load
from . import bench, crm, dlq, send, stack, summary, tools
from . import load as load_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookstream", description="Operate a hookstream pipeline.",
        epilog=help_epilog(KafkaSettings, LogSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    stack.register(sub)  # stack, topics
    send.register(sub)
    load_cmd.register(sub)
    tools.register_faults(sub)
    tools.register_replay(sub)
    tools.register_backfill(sub)
    bench.register(sub)
    summary.register(sub)
    crm.register(sub)
    dlq.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["replay"]:  # the normalizer's own command, options and --help
        return tools.normalizer_main(argv)
    args = build_parser().parse_args(argv)
    logs.configure("cli", load(LogSettings, json=False, level="WARNING"))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"hookstream: configuration error: {exc}", file=sys.stderr)
        return 2
