"""``hookstream dlq list|show|redrive``: inspect and re-submit dead letters."""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter
from typing import Any

from ..core import dlq
from ..core.config import KafkaSettings, load
from ..core.headers import H_ATTEMPT, H_NOT_BEFORE
from ..core.kafka import make_producer, scan
from ..core.record import H_SOURCE
from ..core.times import parse_time
from ..sinks.runner import sink_topics

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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dlq`` and its ``list``, ``show`` and ``redrive``."""
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
