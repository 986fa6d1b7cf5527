"""``hookstream``: the operator's command line.

    hookstream stack up|down|status     the local Kafka + PostgreSQL (deploy/local/stack)
    hookstream topics                   create the documented topics
    hookstream send                     post the providers' sample deliveries, signed
    hookstream dlq list|show|redrive    inspect and re-submit dead letters
    hookstream replay --from 2h         re-run raw deliveries (hookstream-normalizer replay)
    hookstream backfill PROVIDER ID...  fetch calls from a provider's API onto the raw topic
    hookstream summary                  what is on each topic and in the warehouse
    hookstream load                     drive the pipeline with realistic generated traffic
    hookstream bench                    every benchmark beside its bare baseline
    hookstream faults [SCENARIO ...]    inject faults under load; one table of exact accounting
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from aiokafka import TopicPartition

from .core import dlq, logs, topics
from .core.config import ConfigError, KafkaSettings, LogSettings, help_epilog, load
from .core.headers import H_ATTEMPT, H_NOT_BEFORE
from .core.kafka import end_offsets, make_consumer, make_producer, scan
from .core.record import H_REQUEST_ID, H_SOURCE, RawDelivery
from .core.samples import Sample, fresh_copy, samples
from .core.sources import Source, load_sources
from .core.times import parse_time
from .providers import PROVIDERS
from .sinks.crm.settings import CRMSettings
from .sinks.runner import sink_topics

REPO = Path(__file__).resolve().parents[1]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack"
DEFAULT_SOURCES = os.environ.get("HOOKSTREAM_SOURCES_FILE", "deploy/local/sources.toml")


# ---------------------------------------------------------------- stack
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


# ---------------------------------------------------------------- send
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


# ---------------------------------------------------------------- dlq
# Dead letters hold what an outside sender wrote: before printing any of it, drop
# terminal escape sequences (ANSI CSI, OSC/DCS/APC strings, 7- and 8-bit forms)
# and every other control character, so a payload cannot drive the operator's
# terminal (retitle, clear, fake lines, reorder text). Printable Unicode stays.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI (ESC [ or 8-bit CSI) ... final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"  # strings to ST/BEL
    r"|\x1b[ -/]*[0-~]?",  # any other ESC sequence, or a lone ESC
    re.S,
)
# C0, DEL, C1, and the bidirectional and zero-width format controls.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_WHITESPACE = re.compile(r"[\t\n\r\x0b\x0c]")


def printable(text: str, *, keep_lines: bool = False) -> str:
    """``text`` without terminal escapes or control characters.

    Tabs and line breaks become spaces (a value stays on its line); with
    ``keep_lines`` they are kept, for text that is printed through ``repr``.
    """
    text = _ESCAPES.sub("", text)
    if not keep_lines:
        text = _WHITESPACE.sub(" ", text)
    return _CONTROLS.sub(lambda m: m.group() if keep_lines and m.group() in "\t\n\r" else "",
                         text)


def _dlq_matches(record: Any, args: argparse.Namespace) -> bool:
    if args.reason and dlq.header(record.headers, dlq.H_REASON) != args.reason:
        return False
    if args.stage and dlq.header(record.headers, dlq.H_STAGE) != args.stage:
        return False
    return not (args.source and dlq.header(record.headers, H_SOURCE) != args.source)


def _dlq_topic(kafka: KafkaSettings, args: argparse.Namespace) -> str:
    """The normalizer's dead-letter topic, or with ``--sink NAME`` that sink's."""
    sink = getattr(args, "sink", None)
    return sink_topics(kafka, sink)[1] if sink else kafka.dlq_topic


def _redrive_target(kafka: KafkaSettings, args: argparse.Namespace) -> str:
    """Where dead letters go back to: the raw topic, or the sink's retry topic."""
    sink = getattr(args, "sink", None)
    return sink_topics(kafka, sink)[0] if sink else kafka.raw_topic


async def _dlq_records(kafka: KafkaSettings, args: argparse.Namespace) -> list[Any]:
    found: list[Any] = []
    async for batch in scan(kafka, _dlq_topic(kafka, args), args.from_):
        found.extend(r for r in batch if _dlq_matches(r, args))
    return found


def cmd_dlq_list(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    records = asyncio.run(_dlq_records(kafka, args))
    counts: Counter[tuple[str, str, str]] = Counter()
    for r in records:
        counts[(dlq.header(r.headers, dlq.H_STAGE) or "?",
                dlq.header(r.headers, dlq.H_REASON) or "?",
                dlq.header(r.headers, H_SOURCE) or "?")] += 1
    print(f"{'stage':<14}{'reason':<22}{'source':<16}{'count':>7}")
    for (stage, reason, source), n in sorted(counts.items()):
        print(f"{printable(stage):<14}{printable(reason):<22}{printable(source):<16}{n:>7}")
    print(f"{len(records)} dead letter(s) on {_dlq_topic(kafka, args)}")
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    records = asyncio.run(_dlq_records(kafka, args))[-args.limit:]
    for r in records:
        # Everything printed below passes through printable(): a sender wrote it.
        headers = {printable(k): printable(v.decode("utf-8", "replace")) for k, v in r.headers}
        print(f"--- {_dlq_topic(kafka, args)}/{r.partition}/{r.offset}  "
              f"reason={headers.get(dlq.H_REASON)} stage={headers.get(dlq.H_STAGE)} "
              f"origin={headers.get(dlq.H_ORIGIN)}")
        print(f"detail: {headers.get(dlq.H_DETAIL)}")
        print("headers: " + ", ".join(f"{k}={v}" for k, v in headers.items()
                                      if not k.startswith(dlq.PREFIX)))
        body = printable((r.value or b"")[:args.bytes].decode("utf-8", "replace"),
                         keep_lines=True)
        print(f"body ({len(r.value or b'')} bytes): {body!r}")
    return 0


async def _redrive(kafka: KafkaSettings, args: argparse.Namespace) -> tuple[int, int]:
    records = await _dlq_records(kafka, args)
    target = _redrive_target(kafka, args)
    expected_stage = f"sink:{args.sink}" if getattr(args, "sink", None) else "normalizer"
    redriven = skipped = 0
    producer = make_producer(kafka, "dlq-redrive")
    await producer.start()
    try:
        futures = []
        for r in records:
            if dlq.header(r.headers, dlq.H_STAGE) != expected_stage:
                skipped += 1
                continue
            headers = [(k, v) for k, v in dlq.original_headers(r.headers)
                       if k not in (H_ATTEMPT, H_NOT_BEFORE)]
            if target != kafka.raw_topic:  # a sink's retry topic: offer it again now
                headers += [(H_ATTEMPT, b"0"), (H_NOT_BEFORE, b"0")]
            if not args.dry_run:
                futures.append(await producer.send(target, value=r.value, key=r.key,
                                                   headers=headers))
            redriven += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return redriven, skipped


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    redriven, skipped = asyncio.run(_redrive(kafka, args))
    verb = "would re-submit" if args.dry_run else "re-submitted"
    print(f"{verb} {redriven} dead letter(s) to {_redrive_target(kafka, args)} with their "
          "original headers"
          + (f"; {skipped} from other stages left alone" if skipped else ""))
    return 0


# ---------------------------------------------------------------- summary
async def _summary(kafka: KafkaSettings, since_ms: int | None, schema: str) -> dict[str, int]:
    import asyncpg

    from .core.config import PostgresSettings
    from .sinks.warehouse import schema as warehouse

    counts: dict[str, int] = {}
    for label, topic in (("raw", kafka.raw_topic), ("events", kafka.events_topic),
                         ("dead letters", kafka.dlq_topic)):
        counts[label] = sum([len(b) async for b in scan(kafka, topic, since_ms)])
    conn = await asyncpg.connect(load(PostgresSettings).dsn)
    try:
        since = since_ms / 1000 if since_ms is not None else 0.0
        counts["warehouse rows"] = await warehouse.count_events_since(conn, schema, since)
        counts["warehouse calls"] = await warehouse.count_calls_since(conn, schema, since)
    except asyncpg.UndefinedTableError:
        counts["warehouse rows"] = counts["warehouse calls"] = 0
    finally:
        await conn.close()
    return counts


def cmd_summary(args: argparse.Namespace) -> int:
    counts = asyncio.run(_summary(load(KafkaSettings), args.from_, args.schema))
    for label, value in counts.items():
        print(f"{label:<18}{value:>8}")
    return 0


# ---------------------------------------------------------------- load
def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One Prometheus endpoint's samples; empty if it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _total(samples_: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return sum(v for (n, ls), v in samples_.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


@dataclasses.dataclass
class PipelineCounts:
    """Counters scraped from the services' /metrics (informational, all traffic)."""

    alerts: float
    crm: float

    @classmethod
    def read(cls, args: argparse.Namespace) -> PipelineCounts:
        return cls(
            alerts=_total(_scrape(args.alerts_metrics), "hookstream_alerts_sent_total",
                          destination="alertmanager", outcome="sent"),
            crm=_total(_scrape(args.crm_metrics), "hookstream_sink_events_total", sink="crm",
                       outcome="written"),
        )

    def minus(self, other: PipelineCounts) -> PipelineCounts:
        return PipelineCounts(*(a - b for a, b in zip(
            dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))


ACK_BUCKETS = "hookstream_ingest_ack_latency_seconds_bucket"


def ack_buckets(url: str) -> dict[float, float]:
    """Ingest's ack-latency histogram (all sources): upper bound -> cumulative count."""
    buckets: dict[float, float] = {}
    for (name, labels), value in _scrape(url).items():
        if name == ACK_BUCKETS:
            bound = float(dict(labels)["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float],
                    q: float) -> float | None:
    """The ``q`` quantile of what the histogram counted between two scrapes, as the
    upper bound of the bucket it falls in (seconds); None when nothing was counted."""
    counted = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    if not counted or counted[-1][1] <= 0:
        return None
    rank = q * counted[-1][1]
    return next(bound for bound, cumulative in counted if cumulative >= rank)


def cmd_load(args: argparse.Namespace) -> int:
    return asyncio.run(_load(args))


async def _load(args: argparse.Namespace) -> int:
    from .core.config import PostgresSettings
    from .loadgen import Accounting, LoadStats, run_load

    sources = pick_sources(load_sources(args.sources), None)
    kafka = load(KafkaSettings)
    before = await asyncio.to_thread(PipelineCounts.read, args)
    acks_before = await asyncio.to_thread(ack_buckets, args.ingest_metrics)
    accounting = Accounting(kafka, load(PostgresSettings).dsn, args.schema)
    await accounting.start()

    async def line(stats: LoadStats) -> None:
        await accounting.refresh()
        stored, dead, pending = accounting.counts()
        print(f"\r  sent {stats.sent:>7}  acknowledged {stats.accepted:>7}  "
              f"in warehouse {stored:>7}  dead-lettered {dead:>5}  pending {pending:>6}",
              end="", file=sys.stderr, flush=True)

    def sign(source: Source, sample: Sample) -> tuple[str, dict[str, str]]:
        return signed_request(source, sample, time.time(), f"msg_{os.urandom(8).hex()}")

    print(f"load: {args.rate:g} deliveries/s for {args.seconds:g} s to {args.url} "
          f"({args.redeliver:.1%} redelivered, {args.malformed:.1%} malformed)",
          file=sys.stderr)
    try:
        stats = await run_load(args.url, sources, args.rate, args.seconds,
                               redeliver=args.redeliver, malformed=args.malformed,
                               progress=line, sign=sign, on_accepted=accounting.expect)
        # Drain: wait until every acknowledged delivery is accounted for.
        deadline = time.monotonic() + args.drain_timeout_s
        while accounting.counts()[2] and time.monotonic() < deadline:
            await line(stats)
            await asyncio.sleep(0.5)
        await line(stats)
    finally:
        await accounting.stop()
    print(file=sys.stderr)
    stored, dead, missing = accounting.counts()
    now = (await asyncio.to_thread(PipelineCounts.read, args)).minus(before)
    lat = sorted(stats.latencies_ms) or [0.0]
    events = len({e for e in accounting.receipt_event.values() if e is not None})
    rows = [
        ("deliveries sent", stats.sent),
        ("acknowledged by ingest (202)", stats.accepted),
        ("  redeliveries among them (same event, one row)", stats.by_kind["redelivery"]),
        ("  malformed among them (for the dead-letter topic)", stats.by_kind["malformed"]),
        ("answered otherwise", stats.sent - stats.accepted),
        ("distinct events expected", events),
        ("deliveries whose event is in the warehouse", stored),
        ("deliveries on the dead-letter topic", dead),
        ("missing (acknowledged, in neither)", missing),
        ("alerts sent to Alertmanager (all traffic in the window)", now.alerts),
        ("calls logged in the CRM (all traffic in the window)", now.crm),
    ]
    print("\nsummary")
    for label, value in rows:
        print(f"  {label:<58}{value:>9.0f}")
    print(f"  {'ingest latency p50 / p99 (ms, client side)':<58}"
          f"{lat[len(lat) // 2]:>5.1f} / {lat[int(len(lat) * 0.99)]:.1f}")
    # The client's view includes this process's own scheduling: on busy cores its p99
    # read seconds while ingest acknowledged in milliseconds. Ingest's histogram says
    # what the server did (all traffic in the window; bucket upper bounds).
    acks_after = await asyncio.to_thread(ack_buckets, args.ingest_metrics)
    p50, p99 = (bucket_quantile(acks_before, acks_after, q) for q in (0.5, 0.99))
    server = ("n/a (ingest's metrics not read)" if p50 is None or p99 is None else
              f"<= {p50 * 1000:g} / <= {p99 * 1000:g}")
    print(f"  {'ingest ack latency p50 / p99 (ms, server side)':<58}{server:>9}")
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(stats.by_status.items()))
    print(f"  HTTP statuses: {statuses}")
    ok = missing == 0 and stats.accepted > 0
    print("\nevery acknowledged delivery is in the warehouse or on the dead-letter topic, "
          "none missing" if ok else f"\nMISSING: {missing} acknowledged deliveries")
    return 0 if ok else 1


def _normalizer_main(argv: list[str]) -> int:
    from .normalizer.main import main as normalizer_main

    return normalizer_main(argv)


# ---------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmarks live in the repository's bench/ (not the installed package)."""
    if not (REPO / "bench" / "__main__.py").exists():
        print("hookstream bench: run it from a clone of the repository", file=sys.stderr)
        return 2
    extra = ([args.stage] if args.stage else []) + (["--quick"] if args.quick else []) + (
        ["--rounds", str(args.rounds)] if args.rounds else [])
    return subprocess.call([sys.executable, "-m", "bench", *extra], cwd=REPO)


def cmd_crm_setup(args: argparse.Namespace) -> int:
    """Create the CRM sink's custom properties in HubSpot (idempotent)."""
    from .sinks.crm.http import CRMError
    from .sinks.crm.setup import setup

    settings = load(CRMSettings)
    settings.validate()
    try:
        lines = asyncio.run(setup(settings))
    except CRMError as exc:
        print(f"hookstream crm setup: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 1 if any("WITHOUT" in line for line in lines) else 0


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookstream", description="Operate a hookstream pipeline.",
        epilog=help_epilog(KafkaSettings, LogSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    send.set_defaults(func=cmd_send)

    load_parser = sub.add_parser(
        "load", help="drive the pipeline with realistic generated traffic",
        description="Post a realistic mix of all three providers' deliveries (call "
        "lifecycles, sessions, agents, campaigns, knowledge bases; some redelivered, a few "
        "malformed) at a steady rate, show progress from the services' metrics, then wait "
        "until every acknowledged delivery is an event, a duplicate or a dead letter.")
    load_parser.add_argument("--url", default="http://127.0.0.1:8080", help="ingest base URL")
    load_parser.add_argument("--sources", default=DEFAULT_SOURCES, help="sources file")
    load_parser.add_argument("--rate", type=float, default=100, help="deliveries per second")
    load_parser.add_argument("--seconds", type=float, default=60, help="how long")
    load_parser.add_argument("--redeliver", type=float, default=0.02,
                             help="share of deliveries sent twice (default 0.02)")
    load_parser.add_argument("--malformed", type=float, default=0.005,
                             help="share of deliveries cut short (default 0.005)")
    load_parser.add_argument("--drain-timeout-s", type=float, default=60)
    load_parser.add_argument("--schema", default=os.environ.get(
        "HOOKSTREAM_WAREHOUSE_SCHEMA", "warehouse"), help="the warehouse's schema")
    for name, port in (("ingest", 8079), ("alerts", 8093), ("crm", 8094)):
        load_parser.add_argument(f"--{name}-metrics",
                                 default=f"http://127.0.0.1:{port}/metrics",
                                 help=f"{name} metrics endpoint")
    load_parser.set_defaults(func=cmd_load)

    faults = sub.add_parser("faults", help="inject faults under load, account for every "
                            "delivery, print one table (hookstream.faults)")
    from .faults import cmd_faults, configure_parser

    configure_parser(faults)
    faults.set_defaults(func=cmd_faults)

    replay = sub.add_parser("replay", help="re-run raw deliveries of a time range "
                            "(hookstream-normalizer replay)", add_help=False)
    replay.add_argument("rest", nargs=argparse.REMAINDER)
    replay.set_defaults(func=lambda a: _normalizer_main(["replay", *a.rest]))

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

    summary = sub.add_parser("summary", help="count what is on each topic and in the warehouse",
                             description="Records on the raw, canonical and dead-letter "
                             "topics and rows in the warehouse, optionally since a time.")
    summary.add_argument("--from", dest="from_", type=parse_time,
                         help="only since: ISO 8601, epoch ms, or 10m (ago)")
    summary.add_argument("--schema", default=os.environ.get("HOOKSTREAM_WAREHOUSE_SCHEMA",
                                                            "warehouse"))
    summary.set_defaults(func=cmd_summary)

    crm = sub.add_parser("crm", help="HubSpot set-up for the CRM sink")
    crm_sub = crm.add_subparsers(dest="crm_command", required=True)
    crm_setup = crm_sub.add_parser(
        "setup", help="create the custom properties the CRM sink writes by (idempotent)",
        description="Create hookstream_call_key (calls, unique), hookstream_details (calls) "
        "and hookstream_phone_e164 (contacts, unique) in the HubSpot account of "
        "HOOKSTREAM_CRM_TOKEN (scope crm.schemas.calls.write and crm.schemas.contacts.write)."
        " Existing ones are left alone (HubSpot answers 409). See docs/sinks-crm.md.",
        epilog=help_epilog(CRMSettings), formatter_class=argparse.RawDescriptionHelpFormatter)
    crm_setup.set_defaults(func=cmd_crm_setup)

    dlq_parser = sub.add_parser("dlq", help="inspect and redrive dead letters",
                                description="Dead letters keep the raw bytes, the original "
                                "headers, the reason and the stage (docs/canonical.md).")
    dlq_sub = dlq_parser.add_subparsers(dest="dlq_command", required=True)
    for name, func, text in (
        ("list", cmd_dlq_list, "count dead letters by stage, reason and source"),
        ("show", cmd_dlq_show, "print dead letters: origin, reason, detail, headers, body"),
        ("redrive", cmd_dlq_redrive, "re-submit dead letters to the raw topic (idempotent: "
         "the normalizer's dedupe drops what already became an event)"),
    ):
        p = dlq_sub.add_parser(name, help=text, description=text)
        p.add_argument("--sink", help="a sink's dead letters (hookstream.sink.NAME.dlq.v1; "
                       "redrive re-offers them through its retry topic) instead of the "
                       "normalizer's")
        p.add_argument("--reason", help="only this reason (e.g. schema_violation)")
        p.add_argument("--stage", help="only this stage (e.g. normalizer)")
        p.add_argument("--source", help="only this source")
        p.add_argument("--from", dest="from_", type=parse_time,
                       help="only dead letters written since: ISO 8601, epoch ms, 2h (ago)")
        if name == "show":
            p.add_argument("--limit", type=int, default=20, help="the last N (default 20)")
            p.add_argument("--bytes", type=int, default=400, help="body bytes to print")
        if name == "redrive":
            p.add_argument("--dry-run", action="store_true", help="count, do not re-submit")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["replay"]:  # the normalizer's own command, options and --help
        return _normalizer_main(argv)
    args = build_parser().parse_args(argv)
    logs.configure("cli", load(LogSettings, json=False, level="WARNING"))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"hookstream: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
