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

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

from aiokafka.errors import KafkaError

from ..core.config import ConfigError, KafkaSettings
from ..core.kafka import make_producer
from ..core.providers.sarj import PROVIDER
from ..core.record import ORIGIN_API_BACKFILL, RawDelivery, new_request_id, now_ms
from .calls import NotACallDetail, webhook_body
from .client import ApiFailed, ApiUnavailable, SarjApi

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
    return RawDelivery(source=source, provider=PROVIDER.name, received_at_ms=now_ms(),
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
                                                 key=PROVIDER.natural_key(body),
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
