"""Commands that hand over to another tool: ``faults`` (hookstream.devtools.faults), ``replay``
(hookstream-normalizer replay) and ``backfill`` (each provider's spec hook)."""

from __future__ import annotations

import argparse

from ..providers import PROVIDERS
from .common import DEFAULT_SOURCES
from .dlq import printable


def normalizer_main(argv: list[str]) -> int:
    from ..normalizer.main import main as run

    return run(argv)


def register_faults(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``faults``."""
    faults = sub.add_parser("faults", help="inject faults under load, account for every "
                            "delivery, print one table (hookstream.devtools.faults)")
    from ..devtools.faults import cmd_faults, configure_parser

    configure_parser(faults)
    faults.set_defaults(func=cmd_faults)


def register_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay`` (its options and help are the normalizer's)."""
    replay = sub.add_parser("replay", help="re-run raw deliveries of a time range "
                            "(hookstream-normalizer replay)", add_help=False)
    replay.add_argument("rest", nargs=argparse.REMAINDER)
    replay.set_defaults(func=lambda a: normalizer_main(["replay", *a.rest]))


def register_backfill(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backfill`` with a command per provider that has an API for it."""
    backfill_parser = sub.add_parser(
        "backfill", help="fetch calls from a provider's API and put them on the raw topic",
        description="Recover calls whose webhooks never arrived: fetch each from the "
        "provider's API and put it on the raw topic as a delivery of the source, with "
        "header hs-origin: api-backfill. The normalizer's dedupe drops a call already "
        "delivered, so running it again (or over calls that did arrive) is safe. "
        "docs/runbook.md has a backfill section per provider that has such an API.")
    backfill_sub = backfill_parser.add_subparsers(dest="provider", required=True)
    for spec in PROVIDERS.values():  # each provider with an API for it adds its command
        if spec.add_backfill_command is not None:
            spec.add_backfill_command(backfill_sub, DEFAULT_SOURCES, printable)
