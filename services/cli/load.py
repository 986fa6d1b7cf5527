"""``hookstream load``: drive the pipeline with realistic generated traffic."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time

import httpx

from ..core.config import KafkaSettings, load
from ..core.sources import Source, load_sources
from ..devtools.samples import Sample
from .common import DEFAULT_SOURCES
from .send import pick_sources, signed_request


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
    recordings: float
    transcripts: float

    @classmethod
    def read(cls, args: argparse.Namespace) -> PipelineCounts:
        transcripts = _scrape(args.transcripts_metrics)
        return cls(
            alerts=_total(_scrape(args.alerts_metrics), "hookstream_alerts_sent_total",
                          destination="alertmanager", outcome="sent"),
            crm=_total(_scrape(args.crm_metrics), "hookstream_sink_events_total", sink="crm",
                       outcome="written"),
            recordings=_total(_scrape(args.recordings_metrics), "hookstream_recordings_total",
                              outcome="stored"),
            transcripts=_total(transcripts, "hookstream_transcripts_total", outcome="stored")
            + _total(transcripts, "hookstream_transcripts_total",
                     outcome="stored_without_turns"),
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
    from ..core.config import PostgresSettings
    from ..devtools.loadgen import Accounting, LoadStats, run_load
    from ..devtools.samples import media_urls

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
                               progress=line, sign=sign, on_accepted=accounting.expect,
                               media=media_urls(args.media_url) if args.media_url else None)
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
        ("recordings stored (all traffic in the window)", now.recordings),
        ("transcripts stored (all traffic in the window)", now.transcripts),
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``load``."""
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
    load_parser.add_argument(
        "--media-url", default="",
        help="point the recording and transcript URLs the deliveries link at a media "
             "stand-in there (python -m tests.fakes.media; the demo runs one) instead of "
             "the providers' hosts on the internet (default: keep them)")
    for name, port in (("ingest", 8079), ("alerts", 8093), ("crm", 8094),
                       ("recordings", 8095), ("transcripts", 8096)):
        load_parser.add_argument(f"--{name}-metrics",
                                 default=f"http://127.0.0.1:{port}/metrics",
                                 help=f"{name} metrics endpoint")
    load_parser.set_defaults(func=cmd_load)
