"""``hookstream-normalizer``: run the normalizer, or replay a time range of raw deliveries."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..core import logs
from ..core.config import (
    ConfigError,
    KafkaSettings,
    LogSettings,
    PostgresSettings,
    help_epilog,
    load,
)
from ..core.consumer import stop_on_signals
from ..core.sources import load_test_calls
from ..core.times import parse_time
from ..providers import settings_of
from .service import replay, run
from .settings import NormalizerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookstream-normalizer",
        description="Validate, deduplicate and map raw deliveries onto the canonical event "
        "stream; dead-letter what cannot be. Without a command: run the consumer.",
        epilog=help_epilog(NormalizerSettings, *settings_of("hookstream-normalizer"),
                           KafkaSettings, PostgresSettings, LogSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="consume the raw topic (the default)")
    rp = sub.add_parser("replay", help="re-run raw deliveries of a time range",
                        description="Re-run raw deliveries received in a time range through "
                        "the normalizer (e.g. after a schema fix). Idempotent: events already "
                        "published are skipped as duplicates.")
    rp.add_argument("--from", dest="from_", required=True, type=parse_time,
                    help="start: ISO 8601, epoch ms, or 2h / 30m / 7d (ago)")
    rp.add_argument("--to", type=parse_time, help="end (default: now)")
    rp.add_argument("--source", help="only deliveries of this source")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load(NormalizerSettings)
        kafka, pg = load(KafkaSettings), load(PostgresSettings)
        logs.configure("normalizer", load(LogSettings))
        if settings.sources_file:  # refused here, cleanly, rather than in the service
            load_test_calls(settings.sources_file)
    except ConfigError as exc:
        print(f"hookstream-normalizer: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "replay":
        def progress(totals: dict[str, int]) -> None:
            print("\r" + "  ".join(f"{k}={v}" for k, v in totals.items()), end="",
                  file=sys.stderr, flush=True)

        totals = asyncio.run(replay(settings, kafka, pg, args.from_, args.to, args.source,
                                    progress))
        print(file=sys.stderr)
        print("replayed: " + "  ".join(f"{k}={v}" for k, v in totals.items()))
        return 0

    async def serve() -> None:
        await run(settings, kafka, pg, stop_on_signals())

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
