"""Fuzzing the sinks (issue 11, part 2): the warehouse row builder and call fold, the CRM
mapping and the alert rendering, with arbitrary canonical events.

Two kinds of input:

* events valid per ``schemas/canonical/v1/event.schema.json`` whose free parts are
  arbitrary: ``data`` contents, every nullable string (``\\u0000``, lone surrogates,
  any Unicode), numbers (ints beyond 64 bits, extreme floats), nesting as deep as the
  normalizer lets through (64) and deeper, many keys, date-times at the edges of
  RFC 3339 (years 0001 and 9999, offsets up to ±23:59, nine fraction digits);
* JSON objects that only roughly look like canonical events: keys missing, values of
  the wrong type, objects and lists where strings belong.

A sink only ever sees what ``orjson.loads`` made of a record (ints up to 2**64 - 1,
finite floats, no lone surrogates, nesting up to 1024); the Python-only values (lone
surrogates, ints past 64 bits) are generated too, and must be refused as cleanly.

The property of every stage: the event is accepted (a row, an alert, a CRM document is
built, and it is storable / serialisable) or refused as a permanent failure with a
reason (``WriteOutcome.failed``, or the documented exception the sink turns into one),
and never any other exception. What the warehouse would write must be storable in
PostgreSQL: no NUL in text or jsonb (SQLSTATE 22P05 / 22021), timestamps that can be
converted to UTC (asyncpg does, and refuses what overflows), no null in a NOT NULL
column. What alerts and the CRM send must encode as JSON (orjson, and httpx's
``json=``: ``json.dumps(ensure_ascii=False)`` then UTF-8).

The failures hypothesis found are kept below as ``@example`` regressions and as plainly
named unit tests. Examples per property: the ``default`` / ``long`` profiles of
tests/conftest.py (``HYPOTHESIS_PROFILE=long``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from hookstream.core.config import PostgresSettings
from hookstream.sinks.alerts.render import build_alert, slack_body
from hookstream.sinks.alerts.rules import FIELDS, Rules, load_rules, loads_rules, render
from hookstream.sinks.alerts.settings import AlertsSettings
from hookstream.sinks.alerts.sink import AlertsSink, Hit
from hookstream.sinks.base import SinkEvent, WriteOutcome
from hookstream.sinks.crm.adapters import (
    HubSpotAdapter,
    WebhookAdapter,
    call_properties,
    webhook_document,
)
from hookstream.sinks.crm.mapping import (
    FINISHED_TYPES,
    Unmappable,
    activity,
    merge,
    normalize_phone,
)
from hookstream.sinks.crm.settings import CRMSettings
from hookstream.sinks.crm.sink import CRM_ERROR, CRMSink
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink
from hookstream.sinks.warehouse.store import (
    _CALL_COLUMNS,
    EVENT_COLUMNS,
    STATE_RANK,
    Unstorable,
    call_key,
    event_row,
    fold_call,
)
from tests.support import format_checker

REPO = Path(__file__).resolve().parents[3]
SCHEMA = orjson.loads((REPO / "schemas" / "canonical" / "v1" / "event.schema.json")
                      .read_bytes())
PROPS = SCHEMA["properties"]
TYPES: list[str] = PROPS["type"]["enum"]
PROVIDERS: list[str] = PROPS["provider"]["enum"]
NULLABLE_TEXT = [name for name, p in PROPS.items()
                 if p.get("type") == ["string", "null"] and "format" not in p]
NULLABLE_TIMES = [name for name, p in PROPS.items()
                  if p.get("type") == ["string", "null"] and p.get("format") == "date-time"]
MAX_DEPTH = 64  # the normalizer's cap (HOOKSTREAM_NORMALIZER_MAX_DEPTH)


VALIDATOR = Draft202012Validator(SCHEMA, format_checker=format_checker())

# ------------------------------------------------------------------ strategies

# Text as it comes off the topic (any Unicode scalar, NUL often), and "wild" text that
# only Python can hold (lone surrogates).
_CHARS = st.characters(codec="utf-8")
_NASTY = st.sampled_from(["\x00", "\x00\x00", "\u2028", "\ufeff", "\\u0000", "{", "}",
                          "{0}", "%s", "<script>", "&amp;", "\n", "\r\n", "\t", " ",
                          "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
                          "\uff19\uff16\uff16", "+", "00", "é", "💥"])
_SURROGATE = st.characters(categories=["Cs"])


@functools.cache
def texts(wild: bool = False, min_size: int = 0, max_size: int = 16) -> st.SearchStrategy[str]:
    alphabet = st.one_of(_CHARS, st.sampled_from("\x00\u2028\ufeff{}%<&\\\n\u0660\uff19é💥"),
                         *([_SURROGATE] if wild else []))
    plain = st.text(alphabet, min_size=min_size, max_size=max_size)
    return st.one_of(plain, st.builds(lambda a, nasty, b: a + nasty + b,
                                      plain, _NASTY, st.text(alphabet, max_size=4)))


def ints(wild: bool = False) -> st.SearchStrategy[int]:
    tame = st.one_of(st.integers(-(2**63), 2**64 - 1),
                     st.sampled_from([0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]))
    if not wild:
        return tame
    return st.one_of(tame, st.integers(2**64, 10**400), st.integers(-(10**400), -(2**63) - 1))


FLOATS = st.floats(allow_nan=False, allow_infinity=False)


@functools.cache
def scalars(wild: bool = False) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), ints(wild), FLOATS, texts(wild))


@functools.cache
def json_values(wild: bool = False, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(wild),
        lambda children: st.one_of(st.lists(children, max_size=4),
                                   st.dictionaries(texts(wild, max_size=8), children,
                                                   max_size=4)),
        max_leaves=max_leaves)


@st.composite
def deep(draw: st.DrawFn, max_depth: int = MAX_DEPTH, wild: bool = False) -> Any:
    """A chain of ``depth`` nested objects and lists around one scalar."""
    depth = draw(st.integers(1, max_depth))
    value = draw(scalars(wild))
    kinds = draw(st.lists(st.booleans(), min_size=depth, max_size=depth))
    for as_list in kinds:
        value = [value] if as_list else {"a": value}
    return value


def many_keys(wild: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(_CHARS, max_size=6), st.one_of(st.none(), ints(wild), texts(
        wild, max_size=4)), min_size=20, max_size=64)


@functools.cache
def payloads(wild: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """``data``: the provider's body, anything an object can hold. Its nesting stays
    within the normalizer's cap (the envelope adds one level)."""
    return st.one_of(
        st.dictionaries(texts(wild, max_size=8), json_values(wild), max_size=6),
        many_keys(wild),
        st.builds(lambda inner, key: {key: inner}, deep(MAX_DEPTH - 2, wild),
                  texts(wild, max_size=4)),
        st.builds(lambda inner, extra: {"data": inner, **extra},
                  st.dictionaries(st.sampled_from(["channel", "rowId", "versionId", "x"]),
                                  json_values(wild), max_size=3),
                  st.dictionaries(texts(wild, max_size=4), scalars(wild), max_size=3)))


@st.composite
def date_times(draw: st.DrawFn) -> str:
    """RFC 3339 date-times the schema accepts, edges included."""
    year = draw(st.one_of(st.integers(1, 9999), st.sampled_from([1, 1970, 2038, 9999])))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28) | st.just(28))
    if day == 28 and draw(st.booleans()):  # the last day of the month
        day = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day \
            if year < 9999 or month < 12 else 31
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), \
        draw(st.integers(0, 59))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9)
                              .map(lambda f: "." + f)))
    offset = draw(st.one_of(
        st.just("Z"),
        st.builds(lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
                  st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)),
        st.sampled_from(["+23:59", "-23:59", "+00:00", "-00:00"])))
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}" \
        f"{fraction}{offset}"


def uris(wild: bool = False) -> st.SearchStrategy[str]:
    return st.builds(lambda scheme, rest: f"{scheme}:{rest}",
                     st.sampled_from(["https", "http", "javascript", "data", "file", "s3",
                                      "HTTPS", "ftp"]),
                     texts(wild, max_size=20).map(lambda s: "".join(
                         c for c in s if not c.isspace()) or "x"))


def transcripts(wild: bool = False) -> st.SearchStrategy[list[dict[str, Any]] | None]:
    turn = st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["agent", "customer", "system"]), texts(wild)),
         "text": texts(wild, max_size=40)},
        optional={"extra": json_values(wild, 3)})
    return st.one_of(st.none(), st.lists(turn, max_size=4))


def numbers(wild: bool, low: float | None = None, high: float | None = None
            ) -> st.SearchStrategy[int | float | None]:
    whole = st.integers(
        int(low) if low is not None else None,
        int(high) if high is not None else None) if low is not None or high is not None \
        else ints(wild)
    if low == 0 and high is None:
        whole = st.one_of(st.integers(0, 2**64 - 1),
                          *([st.integers(2**64, 10**400)] if wild else []))
    return st.one_of(st.none(), whole,
                     st.floats(low, high, allow_nan=False, allow_infinity=False))


EXAMPLES = [orjson.loads(p.read_bytes()) for p in
            sorted((REPO / "schemas" / "canonical" / "v1" / "examples").glob("*.json"))]


@functools.cache
def field_values(name: str, wild: bool) -> st.SearchStrategy[Any]:
    """Values the schema allows for one field, the free parts arbitrary."""
    if name in ("source", "provider_type"):
        return texts(wild, min_size=1)
    if name == "provider":
        return st.sampled_from(PROVIDERS)
    if name in ("received_at", *NULLABLE_TIMES):
        times = date_times()
        return times if name == "received_at" else st.one_of(st.none(), times)
    if name in ("duration_s", "cost"):
        return numbers(wild, 0)
    if name == "sentiment":
        return numbers(wild, -1, 1)
    if name == "transcript":
        return transcripts(wild)
    if name in ("transcript_url", "recording_url"):
        return st.one_of(st.none(), uris(wild))
    if name in ("type_inferred", "test"):
        return st.booleans()
    return st.one_of(st.none(), texts(wild))  # every other nullable string


ANY_TYPE = st.sampled_from(TYPES)
FREE_FIELDS = sorted(n for n in PROPS if n not in ("envelope", "event_id", "type", "data"))


@st.composite
def canonical_events(draw: st.DrawFn, wild: bool = False,
                     types: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """An event valid per the canonical v1 schema, free parts arbitrary: one of the
    canonical examples with a fresh id and type, up to 10 fields replaced by arbitrary
    values of their schema type, its ``data`` often replaced, unknown fields added."""
    event = dict(draw(st.sampled_from(EXAMPLES)))
    event["event_id"] = draw(st.builds(lambda u, up: str(u).upper() if up else str(u),
                                       st.uuids(), st.booleans()))
    event["type"] = draw(ANY_TYPE if types is None else types)
    for name in draw(st.lists(st.sampled_from(FREE_FIELDS), max_size=10, unique=True)):
        event[name] = draw(field_values(name, wild))
    if draw(st.booleans()):
        event["data"] = draw(payloads(wild))
    if draw(st.integers(0, 3)) == 0:  # consumers must accept unknown fields
        event.update(draw(st.dictionaries(texts(wild, max_size=6).filter(
            lambda k: k not in PROPS), json_values(wild, 4), max_size=2)))
    return event


@st.composite
def rough_events(draw: st.DrawFn, wild: bool = True,
                 types: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """A JSON object that only roughly looks like a canonical event: a valid one with
    keys dropped and values of the wrong type, or canonical keys over arbitrary values."""
    if draw(st.booleans()):
        event = draw(canonical_events(wild, types))
        names = sorted(event)
        for name in draw(st.lists(st.sampled_from(names), max_size=6, unique=True)):
            if draw(st.booleans()):
                del event[name]
            else:
                event[name] = draw(st.one_of(json_values(wild, 6), deep(300, wild)))
        return event
    keys = st.one_of(st.sampled_from(sorted(PROPS)), texts(wild, max_size=6))
    event = draw(st.dictionaries(keys, json_values(wild, 6), max_size=12))
    if draw(st.booleans()):
        event["type"] = draw(ANY_TYPE if types is None else types)
    if draw(st.booleans()):
        event["event_id"] = str(draw(st.uuids()))
    return event


def topic_faithful(event: dict[str, Any]) -> bool:
    """Could the sink have read this event off the topic (orjson.dumps then loads)?"""
    try:
        return bool(orjson.loads(orjson.dumps(event)) == event)
    except (orjson.JSONEncodeError, orjson.JSONDecodeError):
        return False


def walk_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*walk_strings(k), *walk_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in walk_strings(v)]
    return []


def http_json(body: Any) -> bytes:
    """What httpx sends for ``json=body`` (and raises on what it cannot send)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def item(event: dict[str, Any], offset: int = 0) -> SinkEvent:
    record = SimpleNamespace(topic="t", partition=0, offset=offset, headers=[], key=None,
                             value=b"")
    return SinkEvent(event, record)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# ------------------------------------------------------------------ regressions
# What hypothesis found, kept as named examples (on the properties below) and as plain
# unit tests. Each is one of the canonical examples with the offending field.

def _example(name: str, **changes: Any) -> dict[str, Any]:
    event = orjson.loads((REPO / "schemas" / "canonical" / "v1" / "examples"
                          / f"{name}.json").read_bytes())
    event.update(changes)
    return event


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# Warehouse: orjson.dumps raised TypeError out of event_row (and out of the sink's write)
# on a lone surrogate, nesting past 255 (orjson.loads reads up to 1024, so a record off
# the topic can carry it) and an int past 64 bits.
WH_LONE_SURROGATE = _example("agent.created", provider_type="\ud800")
WH_TOO_DEEP = _example("call.ended.sawt", data={"x": _nested(300)})
WH_INT_PAST_64_BITS = _example("session.ended", cost=2**64)
# Warehouse: a valid date-time whose UTC instant is outside Python's range; asyncpg
# refused to encode it (DataError), so the whole event was dead-lettered.
WH_OFFSET_PAST_9999 = _example("call.ended.sawt", occurred_at="9999-12-31T23:59:59-23:59",
                               started_at="0001-01-01T00:00:00+01:00",
                               ended_at="9999-12-31T23:30:00-01:00")
# Warehouse: NUL in a call id was stripped from the row but not from the call key the
# calls are recomputed by: text[] argument with NUL, 22021, the event dead-lettered.
WH_NUL_IN_CALL_ID = _example("call.ended.sawt", call_id="call\x00nul")
# ... and a call id of only NUL: the write path keyed it "saaya:", the stored event none
# (found by the long profile).
WH_ONLY_NUL_CALL_ID = _example("call.analyzed", provider="saaya", call_id="\x00",
                               session_id=None)
# Warehouse: a lifecycle event without source/provider folded into a calls row with
# NULL in NOT NULL columns: NotNullViolation, retried forever (not a DataError).
WH_NO_SOURCE = {"event_id": "8f0a1d7e-4c3b-5a29-9e1f-0b2c3d4e5f60", "type": "call.ended",
                "call_id": "c1"}
# CRM: a finite but huge duration (1.8e305 s): round(inf) in call_properties.
CRM_HUGE_DURATION = _example("call.ended.sawt", duration_s=1.797693134862316e305)
# CRM: an int past float's range: float() raised OverflowError in activity().
CRM_INT_DURATION = _example("call.ended.sawt", duration_s=10**400)
# CRM and alerts: a type that is a list: "unhashable type" from `in frozenset`.
CRM_LIST_TYPE = {"event_id": "8f0a1d7e-4c3b-5a29-9e1f-0b2c3d4e5f60", "type": [],
                 "provider": "sawt", "call_id": "c1"}
# CRM: a lone surrogate reached orjson.dumps in call_properties / httpx's json=.
CRM_LONE_SURROGATE = _example("call.analyzed", summary="\udc80")
def arabic_indic(text: str) -> str:
    """``text`` with its ASCII digits as Arabic-Indic digits (U+0660..U+0669)."""
    return text.translate({48 + d: 0x660 + d for d in range(10)})


# CRM: Arabic-Indic digits made a non-ASCII "+\u0669..." phone; "00000" made "+000".
# Alerts: {sentiment:.2f} (and {duration_s:...f}) on an int past float's range.
AL_HUGE_INT = _example("session.ended", sentiment=-(10**400), duration_s=10**400)
# Alerts: a lone surrogate in a label / annotation / generatorURL field.
AL_LONE_SURROGATE = _example("tool.failed", agent_id="agt\ud83d", tool_name="\udfff")


def test_the_strategy_makes_schema_valid_events() -> None:
    @given(canonical_events())
    def check(event: dict[str, Any]) -> None:
        errors = [e.message for e in VALIDATOR.iter_errors(event)]
        assert not errors, errors
    check()


def test_what_orjson_reads_off_the_topic() -> None:
    """The inputs a sink can really get: no lone surrogates, no ints past 64 bits, NUL yes,
    nesting up to 1024 (deeper than orjson.dumps writes: 255)."""
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b'"\\ud800"')
    assert isinstance(orjson.loads(b"18446744073709551616"), float)
    assert orjson.loads(b'"a\\u0000b"') == "a\x00b"
    deep_body = b'{"a":' * 300 + b"1" + b"}" * 300
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(orjson.loads(deep_body))


# ------------------------------------------------------------------ the warehouse

_TEXT_NOT_NULL = ("provider", "source", "type", "provider_type")
_CALL_NOT_NULL = ("call_key", "provider", "source", "state_rank", "state_at",
                  "state_event_id", "first_event_at", "last_event_at")


def _storable_time(value: Any, column: str) -> None:
    assert isinstance(value, dt.datetime) and value.tzinfo is not None, (column, value)
    value.astimezone(dt.UTC)  # asyncpg's timestamptz encoder does this (OverflowError)


def assert_storable_event_row(row: tuple[Any, ...]) -> None:
    """What PostgreSQL accepts in ``events`` (a failure here is a batch the database
    would refuse with 22P05/22021, a date out of range, or a NOT NULL violation)."""
    values = dict(zip(EVENT_COLUMNS, row, strict=True))
    uuid.UUID(values["event_id"])
    _storable_time(values["received_at"], "received_at")
    if values["occurred_at"] is not None:
        _storable_time(values["occurred_at"], "occurred_at")
    for column in _TEXT_NOT_NULL:
        assert isinstance(values[column], str), column
    for column in (*_TEXT_NOT_NULL, "call_id", "session_id", "agent_id", "campaign_id"):
        text = values[column]
        assert text is None or (isinstance(text, str) and "\x00" not in text), column
    stored = values["event"]
    assert isinstance(stored, str) and "\x00" not in stored
    assert all("\x00" not in s for s in walk_strings(orjson.loads(stored)))


def assert_storable_call_row(row: tuple[Any, ...]) -> None:
    values = dict(zip(_CALL_COLUMNS, row, strict=True))
    for column in _CALL_NOT_NULL:
        assert values[column] is not None, f"{column} is NOT NULL in calls"
    for column in ("state_at", "first_event_at", "last_event_at"):
        _storable_time(values[column], column)
    for column in ("started_at", "ended_at"):
        if values[column] is not None:
            _storable_time(values[column], column)
    uuid.UUID(values["state_event_id"])
    for column, value in values.items():
        if isinstance(value, str):
            assert "\x00" not in value, column
            if column == "transcript":
                assert all("\x00" not in t for t in walk_strings(orjson.loads(value)))
        else:
            assert value is None or isinstance(value, int | float | dt.datetime), column


def warehouse_accepts_or_refuses(event: dict[str, Any]) -> dict[str, Any] | None:
    """The warehouse's pure half for one event: the ``events`` row, and the ``calls`` row
    it would recompute from what it reads back. None: refused (as the sink would)."""
    try:
        row = event_row(event)
    except Unstorable:
        assert not topic_faithful(event) or not _serialisable(event), \
            "refused an event orjson can write"
        return None
    assert_storable_event_row(row)
    stored = orjson.loads(row[-1])  # what the jsonb gives back
    key = call_key(event)
    assert key == call_key(stored), "the write path and the read-back disagree on the call"
    if key is not None:
        assert "\x00" not in key
        assert_storable_call_row(fold_call([stored]))
    return stored


def _serialisable(event: dict[str, Any]) -> bool:
    try:
        orjson.dumps(event)
    except orjson.JSONEncodeError:
        return False
    return True


@given(canonical_events(wild=True))
@example(WH_LONE_SURROGATE)
@example(WH_TOO_DEEP)
@example(WH_INT_PAST_64_BITS)
@example(WH_OFFSET_PAST_9999)
@example(WH_NUL_IN_CALL_ID)
@example(WH_ONLY_NUL_CALL_ID)
def test_warehouse_valid_event_is_stored_or_refused(event: dict[str, Any]) -> None:
    stored = warehouse_accepts_or_refuses(event)
    if _serialisable(event):
        assert stored is not None, "a valid event orjson can write was refused"


@given(rough_events())
@example(WH_NO_SOURCE)
@example({**WH_NO_SOURCE, "provider": None, "source": None})
def test_warehouse_rough_event_is_stored_or_refused(event: dict[str, Any]) -> None:
    if not isinstance(event.get("event_id"), str):
        return  # the sink refuses it before building a row (_MissingId)
    try:
        uuid.UUID(event["event_id"])
    except ValueError:
        return  # asyncpg refuses the uuid: DataError, dead-lettered rejected_by_database
    warehouse_accepts_or_refuses(event)


@given(st.lists(canonical_events(wild=False, types=st.sampled_from(sorted(STATE_RANK))),
                min_size=1, max_size=5),
       st.one_of(st.none(), texts(max_size=8)))
def test_warehouse_fold_of_one_calls_events_is_storable(
        events: list[dict[str, Any]], subject: str | None) -> None:
    """Events of one call, in any shape, fold into a storable row."""
    stored = []
    for event in events:
        if subject:
            event["call_id"] = subject
        result = warehouse_accepts_or_refuses(event)
        if result is not None:
            stored.append(result)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for event in stored:
        if (key := call_key(event)) is not None:
            by_key.setdefault(key, []).append(event)
    for group in by_key.values():
        assert_storable_call_row(fold_call(group))
        assert fold_call(group) == fold_call(group[::-1])


class FakeStore:
    """The warehouse store's write without a database: the pure half, then what
    PostgreSQL would refuse (asyncpg raises DataError for a bad uuid)."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    async def write(self, events: list[dict[str, Any]]) -> int:
        rows = [event_row(e) for e in events]
        for row in rows:
            try:
                uuid.UUID(row[0])
            except ValueError:
                raise asyncpg.DataError(f"invalid input for query argument $1: {row[0]!r}"
                                        ) from None
            assert_storable_event_row(row)
        self.rows += rows
        return len(rows)


@given(st.lists(st.one_of(canonical_events(wild=True), rough_events()), max_size=6))
@example([WH_TOO_DEEP, WH_NO_SOURCE, WH_LONE_SURROGATE, _example("call.started")])
def test_warehouse_sink_writes_or_dead_letters_every_event(
        events: list[dict[str, Any]]) -> None:
    sink = WarehouseSink(PostgresSettings(), WarehouseSettings())
    store = FakeStore()
    sink._store = store  # type: ignore[assignment]
    items = [item(e, n) for n, e in enumerate(events)]
    outcome: WriteOutcome = run(sink.write(items))
    failed = {id(i) for i, reason, detail in outcome.failed if reason and detail}
    assert len(failed) == len(outcome.failed)
    assert len(store.rows) + len(failed) == len(items)


# ------------------------------------------------------------------ the CRM

E164 = re.compile(r"^\+?[0-9]{5,}$", re.ASCII)
CRM_SETTINGS = CRMSettings(url="http://crm.test", token="t" * 20, max_retries=0,
                           rate_limit_per_10s=1e9, search_rate_per_s=1e9,
                           webhook_url="http://hook.test/crm", timeout_s=1)
finished = st.sampled_from(sorted(FINISHED_TYPES))


def crm_accepts_or_refuses(event: dict[str, Any]) -> None:
    try:
        act = activity(event, transcript_max_chars=200, default_country_code="966")
    except Unmappable as exc:
        assert str(exc)
        return
    if act.phone is not None:
        assert E164.match(act.phone), act.phone
    record = merge(merge(None, act), act)
    props = call_properties(record)
    assert all(isinstance(v, str) for v in props.values())
    document = webhook_document(act)
    for body in ({"properties": props}, document):
        orjson.dumps(body)
        http_json(body)


@given(canonical_events(wild=True, types=finished))
@example(CRM_HUGE_DURATION)
@example(CRM_INT_DURATION)
@example(CRM_LONE_SURROGATE)
def test_crm_valid_event_maps_or_is_refused(event: dict[str, Any]) -> None:
    crm_accepts_or_refuses(event)
    if topic_faithful(event) and (event.get("call_id") or event.get("session_id")):
        activity(event)  # a valid event off the topic, with a subject, always maps


@given(rough_events(types=finished))
@example(CRM_LIST_TYPE)
def test_crm_rough_event_maps_or_is_refused(event: dict[str, Any]) -> None:
    crm_accepts_or_refuses(event)


@given(st.one_of(st.none(), texts(wild=True, max_size=30)))
@example("00000")
@example(arabic_indic("0551234567"))
@example(arabic_indic("+966 50 123 4567"))
def test_crm_phone_is_ascii_e164_or_none(raw: str | None) -> None:
    for country in ("", "966"):
        phone = normalize_phone(raw, country)
        assert phone is None or E164.match(phone), phone


def _crm_server(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content or b"null")  # what arrives is JSON
    path = request.url.path
    if path.endswith(("/search", "/batch/read", "/batch/associate/default")):
        return httpx.Response(200, json={"status": "COMPLETE", "results": []})
    if path.endswith("/batch/upsert"):  # HubSpot's answer: each input's object
        return httpx.Response(200, json={"status": "COMPLETE", "results": [
            {"id": str(n + 1), "new": True,
             "properties": {**i["properties"], i["idProperty"]: i["id"]}}
            for n, i in enumerate(body["inputs"])]})
    if request.method == "POST" and path.startswith("/crm"):
        return httpx.Response(201, json={"id": "1"})
    return httpx.Response(200, json={})


@given(st.lists(st.one_of(canonical_events(wild=True, types=finished),
                          rough_events(types=finished)), max_size=4))
@example([CRM_HUGE_DURATION, CRM_INT_DURATION, CRM_LIST_TYPE, CRM_LONE_SURROGATE])
def test_crm_sink_writes_or_dead_letters_every_event(events: list[dict[str, Any]]) -> None:
    async def write() -> None:
        transport = httpx.MockTransport(_crm_server)
        for adapter in (HubSpotAdapter(CRM_SETTINGS, transport=transport),
                        WebhookAdapter(CRM_SETTINGS, transport=transport)):
            sink = CRMSink(CRM_SETTINGS, adapter=adapter)
            outcome = await sink.write([item(e, n) for n, e in enumerate(events)])
            assert outcome.deferred == []
            assert [d for _, reason, d in outcome.failed if reason == CRM_ERROR] == []
            await adapter.aclose()
    run(write())


# ------------------------------------------------------------------ alerts

LOCAL_RULES = load_rules(REPO / "deploy" / "local" / "alerts.toml")
_EVERY_FIELD = " ".join(f"{{{f}}}" for f in FIELDS)
FUZZ_RULES = loads_rules(f'''
[[rule]]
name = "everything"
types = {json.dumps(TYPES)}
severity = "info"
group_by = ["agent_id", "call_id", "session_id", "tool_name", "error_code", "sentiment",
            "duration_s", "type_inferred"]
summary = "{_EVERY_FIELD} {{sentiment:.2f}} {{duration_s:>12,.1f}} {{cost:e}} {{source!r}}"
description = "{{error_message:^30}} {{agent_id:x}} {{type_inferred:d}}"

[[rule]]
name = "limits"
types = {json.dumps(TYPES)}
severity = "warning"
where = {{ sentiment_label = ["negative", "neutral"], type_inferred = false }}
summary = "{{summary}}"
[rule.below]
sentiment = 0.5
[rule.above]
duration_s = -1
''')
GENERATOR = "https://console.test/{provider}/{call_id}?s={session_id}&a={agent_id}"


def alerts_render(event: dict[str, Any], rules: Rules) -> None:
    settings = AlertsSettings(alertmanager_url="http://am.test", generator_url=GENERATOR)
    for rule in rules.matching(event):
        hit = Hit(rule, item(event), rule.group_key(event))
        alert = build_alert(hit, settings, {"env": "test"}, 1_780_000_000.0)
        for body in (alert, slack_body(alert), [alert]):
            orjson.dumps(body)
            http_json(body)
        assert all(isinstance(v, str) for v in alert["labels"].values())
        assert all(isinstance(v, str) for v in alert["annotations"].values())


@given(canonical_events(wild=True))
@example(AL_HUGE_INT)
@example(AL_LONE_SURROGATE)
def test_alert_rendering_of_a_valid_event(event: dict[str, Any]) -> None:
    for rules in (LOCAL_RULES, FUZZ_RULES):
        alerts_render(event, rules)


@given(rough_events(types=st.sampled_from(TYPES)))
@example(CRM_LIST_TYPE)
def test_alert_rendering_of_a_rough_event(event: dict[str, Any]) -> None:
    for rules in (LOCAL_RULES, FUZZ_RULES):
        alerts_render(event, rules)


@given(st.text(max_size=40), canonical_events())
def test_render_never_raises(template: str, event: dict[str, Any]) -> None:
    try:
        rules = loads_rules(f"[[rule]]\nname='t'\ntypes=['call.ended']\nseverity='info'\n"
                            f"summary={json.dumps(template)}\n")
    except Exception:  # a template the rules file refuses never reaches render
        return
    assert isinstance(render(rules.rules[0].summary, event), str)


@given(st.lists(st.one_of(canonical_events(wild=True), rough_events()), max_size=5))
@example([AL_HUGE_INT, AL_LONE_SURROGATE, _example("tool.failed")])
def test_alerts_sink_sends_or_dead_letters_every_hit(events: list[dict[str, Any]]) -> None:
    bodies: list[Any] = []

    def server(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200)

    async def write() -> None:
        for slack in (False, True):
            client = httpx.AsyncClient(transport=httpx.MockTransport(server))
            settings = AlertsSettings(alertmanager_url="http://am.test",
                                      webhook_url="http://hook.test", webhook_slack=slack,
                                      generator_url=GENERATOR, repeat_window_s=0)
            sink = AlertsSink(settings, FUZZ_RULES, client=client)
            await sink.start()
            wanted = [item(e, n) for n, e in enumerate(events)
                      if sink.wants(str(e.get("type", "")))]
            outcome = await sink.write(wanted)
            assert outcome.failed == [] and outcome.deferred == []
            await client.aclose()
    run(write())


# ------------------------------------------------------------------ named regressions

@pytest.mark.parametrize("event", [WH_LONE_SURROGATE, WH_TOO_DEEP, WH_INT_PAST_64_BITS],
                         ids=["lone_surrogate", "nested_300_deep", "int_past_64_bits"])
def test_warehouse_unstorable_event_is_dead_lettered_not_raised(event: dict[str, Any]) -> None:
    from hookstream.sinks.warehouse.sink import UNSTORABLE

    with pytest.raises(Unstorable):
        event_row(event)
    sink = WarehouseSink(PostgresSettings(), WarehouseSettings())
    store = FakeStore()
    sink._store = store  # type: ignore[assignment]
    good = _example("call.started")
    batch = [item(good, 0), item(event, 1), item(_example("call.analyzed"), 2)]
    outcome = run(sink.write(batch))
    assert [(i.event, reason) for i, reason, _ in outcome.failed] == [(event, UNSTORABLE)]
    assert len(store.rows) == 2  # the others of the batch are written


def test_warehouse_times_outside_utc_range_are_null_not_a_rejected_event() -> None:
    row = dict(zip(EVENT_COLUMNS, event_row(WH_OFFSET_PAST_9999), strict=True))
    assert row["occurred_at"] is None  # 9999-12-31T23:59:59-23:59 is year 10000 in UTC
    call = dict(zip(_CALL_COLUMNS, fold_call([WH_OFFSET_PAST_9999]), strict=True))
    assert call["started_at"] is None and call["ended_at"] is None
    assert_storable_call_row(fold_call([WH_OFFSET_PAST_9999]))
    received = event_row(_example("call.ended.sawt", received_at="2026-01-31T23:30:00-05:00"))
    assert received[1] == dt.datetime(2026, 2, 1, 4, 30, tzinfo=dt.UTC)  # its UTC month


def test_warehouse_call_key_with_nul_in_call_id_matches_the_stored_event() -> None:
    row = event_row(WH_NUL_IN_CALL_ID)
    stored = orjson.loads(row[-1])
    assert call_key(WH_NUL_IN_CALL_ID) == call_key(stored) == "sawt:callnul"
    assert fold_call([stored])[0] == "sawt:callnul"
    assert call_key(WH_ONLY_NUL_CALL_ID) is None
    assert call_key(orjson.loads(event_row(WH_ONLY_NUL_CALL_ID)[-1])) is None


def test_warehouse_call_row_without_source_or_provider_is_not_null() -> None:
    for event in (WH_NO_SOURCE, {**WH_NO_SOURCE, "provider": None, "source": None}):
        values = dict(zip(_CALL_COLUMNS, fold_call([event]), strict=True))
        assert (values["provider"], values["source"]) == ("", "")
        assert_storable_call_row(fold_call([event]))


def test_crm_huge_duration_is_left_out_not_an_overflow() -> None:
    for event in (CRM_HUGE_DURATION, CRM_INT_DURATION):
        props = call_properties(merge(None, activity(event)))
        assert "hs_call_duration" not in props or props["hs_call_duration"].isdigit()
    assert "duration_s" not in activity(CRM_INT_DURATION).fields


def test_crm_type_that_is_not_a_string_is_unmappable() -> None:
    with pytest.raises(Unmappable):
        activity(CRM_LIST_TYPE)


def test_crm_lone_surrogate_is_unmappable_not_a_crm_error() -> None:
    with pytest.raises(Unmappable, match="JSON"):
        activity(CRM_LONE_SURROGATE)


def test_crm_phone_digits_are_ascii() -> None:
    assert normalize_phone(arabic_indic("0551234567"), "966") == "+966551234567"
    assert normalize_phone(arabic_indic("+966 50 123 4567")) == "+966501234567"
    fullwidth = "00966501234567".translate({48 + d: 0xFF10 + d for d in range(10)})
    assert normalize_phone(fullwidth) == "+966501234567"
    assert normalize_phone("00000") is None  # "00" then three digits is no number
    assert normalize_phone("00966501234567") == "+966501234567"


def test_alert_renders_huge_ints_and_lone_surrogates() -> None:
    alerts_render(AL_HUGE_INT, LOCAL_RULES)
    alerts_render(AL_HUGE_INT, FUZZ_RULES)
    alerts_render(AL_LONE_SURROGATE, LOCAL_RULES)
    rule = LOCAL_RULES.matching(AL_LONE_SURROGATE)[0]
    alert = build_alert(Hit(rule, item(AL_LONE_SURROGATE), rule.group_key(AL_LONE_SURROGATE)),
                        AlertsSettings(generator_url=GENERATOR), {}, 0.0)
    assert alert["labels"]["agent_id"] == "agt?"


def test_alert_rules_skip_a_type_that_is_not_a_string() -> None:
    assert LOCAL_RULES.matching(CRM_LIST_TYPE) == []
    assert not any(rule.matches(CRM_LIST_TYPE) for rule in LOCAL_RULES.rules)
