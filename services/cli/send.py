"""``hookstream send``: post the providers' sample deliveries, signed; the signing
(``signed_request``) and source choice (``pick_sources``) other tools reuse."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter

import httpx
from aiokafka import TopicPartition

from ..core.config import ConfigError, KafkaSettings, load
from ..core.kafka import end_offsets, make_consumer
from ..core.record import H_REQUEST_ID, RawDelivery
from ..core.sources import Source, load_sources
from ..devtools.samples import Sample, fresh_copy, media_urls, samples, with_media
from .common import DEFAULT_SOURCES


def pick_sources(sources: dict[str, Source], only: str | None) -> dict[str, Source]:
    """One source per provider: the named one, else the first declared of each provider."""
    if only is not None:
        if only not in sources:
            raise ConfigError(f"no source named {only!r}")
        return {sources[only].provider.name: sources[only]}
    chosen: dict[str, Source] = {}
    for source in sources.values():
        chosen.setdefault(source.provider.name, source)
    return chosen


def signed_request(source: Source, sample: Sample, now: float, delivery_id: str
                   ) -> tuple[str, dict[str, str]]:
    """(path, headers) of ``sample`` as the provider would send it to ``source``: signed
    in the source's form, the event name as routing key where the provider sends one
    (``ProviderSpec.event_in_routing_key``) and the source takes it (header, query
    parameter or path segment; a fixed-key source needs none)."""
    headers = {"Content-Type": "application/json"}
    headers.update(source.verifier.sign(sample.body, now, delivery_id))
    routing_key = source.provider.routing_key(sample.event)
    headers.update(source.routing_key_headers(routing_key))
    return source.url_path(routing_key), headers


async def _find_on_raw_topic(kafka: KafkaSettings, start: dict[TopicPartition, int],
                             wanted: dict[str, bytes], timeout_s: float) -> dict[str, bool]:
    """Read the raw topic from ``start``; receipt -> body stored byte-for-byte."""
    consumer = make_consumer(kafka, None)
    await consumer.start()
    found: dict[str, bool] = {}
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while len(found) < len(wanted) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    raw = RawDelivery.from_kafka(record.headers, record.value)
                    if raw.request_id in wanted:
                        found[raw.request_id] = wanted[raw.request_id] == raw.body
    finally:
        await consumer.stop()
    return found


def cmd_send(args: argparse.Namespace) -> int:
    sources = pick_sources(load_sources(args.sources), args.source)
    kafka = load(KafkaSettings)
    start = asyncio.run(end_offsets(kafka, kafka.raw_topic)) if args.verify else {}
    receipts: dict[str, bytes] = {}
    receipt_provider: dict[str, str] = {}
    statuses: Counter[tuple[str, int]] = Counter()
    sent: Counter[str] = Counter()
    with httpx.Client(base_url=args.url, timeout=15) as client:
        for _ in range(args.repeat):
            tag = os.urandom(6).hex()  # one per round: a round's events share call ids
            for sample in samples(args.provider):
                source = sources.get(sample.provider)
                if source is None:
                    continue
                if args.unique:
                    sample = fresh_copy(sample, tag)
                if args.media_url:
                    sample = with_media(sample, media_urls(args.media_url))
                path, headers = signed_request(
                    source, sample, time.time(), f"msg_{os.urandom(8).hex()}")
                response = client.post(path, content=sample.body, headers=headers)
                sent[sample.provider] += 1
                statuses[(sample.provider, response.status_code)] += 1
                if response.status_code == 202:
                    receipt = response.json()["receipt"]
                    receipts[receipt] = sample.body
                    receipt_provider[receipt] = sample.provider
                elif not args.quiet:
                    print(f"  {sample.provider}/{sample.name}: {response.status_code} "
                          f"{response.text}", file=sys.stderr)
    found = (asyncio.run(_find_on_raw_topic(kafka, start, receipts, args.verify_timeout_s))
             if args.verify else {})
    print(f"{'provider':<10}{'sent':>6}{'202':>6}{'other':>7}"
          + (f"{'on raw topic (byte-identical)':>31}" if args.verify else ""))
    ok = True
    for provider in sorted(sent):
        accepted = statuses[(provider, 202)]
        other = sent[provider] - accepted
        line = f"{provider:<10}{sent[provider]:>6}{accepted:>6}{other:>7}"
        if args.verify:
            stored = sum(1 for r, same in found.items()
                         if same and receipt_provider[r] == provider)
            line += f"{stored:>31}"
            ok &= stored == accepted
        ok &= other == 0
        print(line)
    if args.verify:
        print(f"raw topic {kafka.raw_topic}: {sum(found.values())}/{len(receipts)} accepted "
              f"deliveries found byte-for-byte ({H_REQUEST_ID} = receipt)")
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``send``."""
    send = sub.add_parser("send", help="post the providers' sample deliveries, signed",
                          description="Post every sample delivery (schemas/providers/*/"
                          "examples) to an ingest URL, authenticated as the chosen source of "
                          "each provider would be; optionally check each accepted delivery "
                          "is on the raw topic byte-for-byte.")
    send.add_argument("--url", default="http://127.0.0.1:8080", help="ingest base URL")
    send.add_argument("--sources", default=DEFAULT_SOURCES, help="sources file (TOML)")
    send.add_argument("--source", help="send only as this source (default: first per provider)")
    send.add_argument("--provider", help="send only this provider's samples")
    send.add_argument("--repeat", type=int, default=1, help="send every sample N times")
    send.add_argument("--unique", action="store_true",
                      help="new ids for every round (new events and calls, not redeliveries)")
    send.add_argument("--verify", action="store_true",
                      help="read the raw topic back and match every receipt")
    send.add_argument("--verify-timeout-s", type=float, default=30.0)
    send.add_argument("--quiet", action="store_true", help="no line per failed delivery")
    send.add_argument("--media-url", default="",
                      help="point the recording and transcript URLs the samples link at a "
                           "media stand-in there (python -m tests.fakes.media) instead of the "
                           "providers' hosts on the internet (default: keep them)")
    send.set_defaults(func=cmd_send)
