"""``hookstream backfill sarj``: fetch calls from Sarj.ai's call API and put each on the
raw topic as the webhook delivery Sarj.ai would have made.

The recovery path for deliveries Sarj.ai marked failed (its document: after 3 failed
tries "the data is durable" behind ``GET /calls/{call_id}``) and for calls an operator
knows were placed. Each record is what ingest writes for a delivery of the source
(``RawDelivery``: the same headers, the provider's natural key, so the same partition),
plus ``hs-origin: api-backfill``. The normalizer's dedupe key for Sarj.ai is
``<call_id>:<payload type>``, which holds nothing of the delivery (no receive time, no
request id), so a backfilled call that was already delivered, by webhook or by an
earlier backfill, is a duplicate and changes nothing: the command is idempotent.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from ...core.config import ConfigError, KafkaSettings, help_epilog, load
from ...core.kafka import make_producer
from ...core.record import ORIGIN_API_BACKFILL, RawDelivery, new_request_id, now_ms
from .adapter import PROVIDER
from .api import ApiFailed, ApiUnavailable, SarjApi
from .auth import natural_key
from .calls import NotACallDetail, webhook_body
from .settings import SarjApiSettings

Report = Callable[[str, str, str], None]  # (call id, "published" | "failed", detail)


@dataclasses.dataclass
class Outcome:
    published: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stopped: str | None = None  # why the run stopped early (Kafka did not store a record)


def read_call_ids(given: Iterable[str], from_file: str | None) -> list[str]:
    """The call ids of the arguments, then of the file (one per line; blank lines and
    ``#`` comments skipped), each once, in order."""
    ids = list(given)
    if from_file is not None:
        try:
            text = Path(from_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--from-file {from_file}: {exc.strerror or exc}") from None
        ids += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return list(dict.fromkeys(i for i in ids if i))


def delivery(source: str, body: bytes) -> RawDelivery:
    """The raw record of a backfilled call: a Sarj.ai delivery of ``source``, as ingest
    builds one, marked as fetched from the API."""
    return RawDelivery(source=source, provider=PROVIDER, received_at_ms=now_ms(),
                       request_id=new_request_id(), body=body,
                       content_type="application/json", origin=ORIGIN_API_BACKFILL)


async def backfill(api: SarjApi, kafka: KafkaSettings, source: str, call_ids: list[str],
                   report: Report, *, ack_timeout_s: float = 30.0) -> Outcome:
    """Fetch each call and publish it (acks=all, one at a time: a line of progress is a
    stored record). A call the API cannot give is reported and skipped; a record Kafka
    does not store stops the run (running it again is safe)."""
    outcome = Outcome()
    producer = make_producer(kafka, "backfill")
    async with asyncio.timeout(ack_timeout_s):
        await producer.start()
    try:
        for call_id in call_ids:
            try:
                body = webhook_body(call_id, await api.call(source, call_id))
            except (ApiFailed, ApiUnavailable, NotACallDetail) as exc:
                outcome.failed.append((call_id, str(exc)))
                report(call_id, "failed", str(exc))
                continue
            record = delivery(source, body)
            try:
                async with asyncio.timeout(ack_timeout_s):
                    await producer.send_and_wait(kafka.raw_topic, body,
                                                 key=natural_key(body),
                                                 headers=record.headers())
            except (KafkaError, TimeoutError) as exc:
                outcome.stopped = f"{call_id}: not stored on {kafka.raw_topic}: {exc!r}"
                report(call_id, "failed", outcome.stopped)
                break
            outcome.published.append(call_id)
            report(call_id, "published", f"request {record.request_id}")
    finally:
        async with asyncio.timeout(ack_timeout_s):
            await producer.stop()
    return outcome


# ------------------------------------------------------------ the command
def _backfill_source(keys: dict[str, str], wanted: str | None, path: str) -> str:
    """The source to backfill as: the one named, else the only Sarj.ai source with a key."""
    if wanted is not None:
        if wanted not in keys:
            raise ConfigError(f"source {wanted!r} is not a Sarj.ai source with api_key_env "
                              f"in {path}")
        return wanted
    if len(keys) != 1:
        raise ConfigError(f"{path} has {len(keys)} Sarj.ai sources with api_key_env "
                          f"({', '.join(sorted(keys)) or 'none'}): name one with --source")
    return next(iter(keys))


def command(args: argparse.Namespace, printable: Callable[[str], str]) -> int:
    """``hookstream backfill sarj``: one line per call, a summary on stderr."""
    from ...core.sources import load_api_keys

    settings = load(SarjApiSettings)
    settings.validate()
    if not settings.url:
        raise ConfigError("HOOKSTREAM_SARJ_API_URL is empty: set the call API's base URL")
    keys = load_api_keys(args.sources)
    source = _backfill_source(keys, args.source, args.sources)
    call_ids = read_call_ids(args.call_ids, args.from_file)
    if not call_ids:
        raise ConfigError("no call id given (arguments or --from-file)")
    kafka = load(KafkaSettings)
    width = max(len(printable(c)) for c in call_ids)

    def report(call_id: str, outcome: str, detail: str) -> None:
        print(f"{printable(call_id):<{width}}  {outcome:<9}  {printable(detail)}", flush=True)

    async def run() -> Any:
        api = SarjApi(settings, keys)
        try:
            return await backfill(api, kafka, source, call_ids, report)
        finally:
            await api.aclose()

    print(f"backfill: {len(call_ids)} call(s) from {settings.url} as source {source!r} "
          f"to {kafka.raw_topic} (hs-origin: api-backfill)", file=sys.stderr)
    outcome = asyncio.run(run())
    print(f"backfill: {len(outcome.published)} published, {len(outcome.failed)} failed, "
          f"{len(call_ids) - len(outcome.published) - len(outcome.failed)} not tried; "
          "calls already delivered are dropped as duplicates by the normalizer",
          file=sys.stderr)
    return 0 if len(outcome.published) == len(call_ids) else 1


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                default_sources: str, printable: Callable[[str], str]) -> None:
    """``hookstream backfill sarj`` (the provider's hook: ``ProviderSpec.add_backfill_command``)."""
    parser = sub.add_parser(
        PROVIDER, help="Sarj.ai: GET /calls/{call_id} for each call",
        description="Fetch each call from Sarj.ai's call API (HOOKSTREAM_SARJ_API_URL, the "
        "source's api_key_env key) and put it on the raw topic as the webhook Sarj.ai "
        "would have sent. One line per call (published or failed, with why). Exit status: "
        "0 every call published; 1 some call not (not found, API failing, Kafka not "
        "storing; run again for those); 2 a configuration or usage error.",
        epilog=help_epilog(SarjApiSettings, KafkaSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("call_ids", nargs="*", metavar="CALL_ID", help="Sarj.ai call ids")
    parser.add_argument("--from-file", metavar="F",
                        help="also the call ids in F, one per line (# comments, blank lines)")
    parser.add_argument("--source", help="the Sarj.ai source the calls belong to (default: "
                        "the only one with api_key_env)")
    parser.add_argument("--sources", default=default_sources, help="sources file (TOML)")
    parser.set_defaults(func=lambda args: command(args, printable))
