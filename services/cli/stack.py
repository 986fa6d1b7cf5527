"""``hookstream stack`` (the local Kafka + PostgreSQL) and ``hookstream topics``."""

from __future__ import annotations

import argparse
import asyncio
import subprocess

from ..core import topics
from ..core.config import KafkaSettings, load
from .common import STACK_SCRIPT


def cmd_stack(args: argparse.Namespace) -> int:
    return subprocess.call([str(STACK_SCRIPT), args.action, *args.components])


# ---------------------------------------------------------------- topics
def cmd_topics(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    specs = topics.plan(kafka, partitions=args.partitions)
    created = asyncio.run(topics.ensure(kafka, specs))
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        print(f"{spec.name:<28} partitions={spec.partitions:<3} "
              f"retention={spec.retention_ms // topics.DAY_MS}d  {state}  ({spec.doc})")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``stack`` and ``topics``."""
    stack = sub.add_parser("stack", help="start/stop the local Kafka + PostgreSQL",
                           description="Wraps deploy/local/stack; see `deploy/local/stack help`.")
    stack.add_argument("action", choices=["up", "down", "status", "env"])
    stack.add_argument("components", nargs="*", help="kafka and/or postgres (default both)")
    stack.set_defaults(func=cmd_stack)

    topic = sub.add_parser("topics", help="create the documented topics (idempotent)",
                           description="Create hookstream's topics with their documented "
                           "partitions and retention; existing topics are left alone.")
    topic.add_argument("--partitions", type=int, default=6,
                       help="partitions of the raw and events topics (default 6)")
    topic.set_defaults(func=cmd_topics)
