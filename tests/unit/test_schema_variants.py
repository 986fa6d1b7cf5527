"""Issue 13, item 1: explicit nulls (and unknown fields) must not dead-letter events.

The rule: a field the provider document does not mark as required and non-null
accepts null; a number accepts any JSON number; a value set the document does not
close is open. Strict stay the envelope and the subject ids (types, ids, timestamps
that parse).

* The schemas themselves are checked against that rule, so a field added later without
  null, as an ``integer`` or with an unstated range fails here.
* Every example of all 30 kinds is run, with each optional field (read from the schema,
  tests/schema_variants.py) set to null in turn, and with an unknown field added at the
  root and in every object the schema describes, through the normalizer's pure path
  (the real decoder: schema validation and mapping), then through every sink's write
  path (warehouse, CRM, alerts, recordings) with fakes in place of the network and the
  database. None may be dead-lettered, refused or raise. The warehouse part runs against
  the real PostgreSQL in tests/integration/test_schema_variants.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator

from hookstream.core.config import KafkaSettings, PostgresSettings, load
from hookstream.core.events import CanonicalEvent
from hookstream.core.record import LocalRecord
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.normalizer.pipeline import Decoder, Normalizer
from hookstream.sinks.alerts.rules import load_rules
from hookstream.sinks.alerts.settings import AlertsSettings
from hookstream.sinks.alerts.sink import AlertsSink
from hookstream.sinks.base import SinkEvent
from hookstream.sinks.crm.adapters import HubSpotAdapter, WebhookAdapter
from hookstream.sinks.crm.mapping import FINISHED_TYPES
from hookstream.sinks.crm.sink import CRMSink
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.sink import RecordingsSink
from hookstream.sinks.recordings.store import LocalDirStore
from hookstream.sinks.transcripts.settings import TranscriptsSettings
from hookstream.sinks.transcripts.sink import TranscriptsSink
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink
from hookstream.sinks.warehouse.store import call_key, fold_call
from tests.schema_variants import (
    ITEM,
    Variant,
    dotted,
    kinds,
    null_fields,
    object_paths,
    optional_fields,
    schema_fields,
    set_null,
    variants,
)
from tests.support import REPO, format_checker

from .core.test_canonical_schema import VALIDATOR as CANONICAL
from .normalizer.test_decoder import record
from .sinks.recordings.test_sink import MemoryIndex
from .sinks.test_fuzz_sinks import CRM_SETTINGS, FakeStore, _crm_server, assert_storable_call_row
from .sinks.transcripts.test_sink import MemoryIndex as TranscriptsIndex

KINDS = kinds()
VARIANTS = list(variants())
REGISTRY = SchemaRegistry()
DECODER = Decoder(REGISTRY)
FORMATS = format_checker()
LOCAL_RULES = load_rules(REPO / "deploy" / "local" / "alerts.toml")

# What stays non-null: the envelope, and the subject id(s) of the event.
ENVELOPE = {"saaya": {"id", "type", "version", "data", "createdAt"},
            "sawt": set(), "sarj": {"payload", "payload.type"}}


def subject_ids(provider: str, event: str) -> set[str]:
    if provider != "saaya":
        return {"call_id"}
    if event == "campaign.row.completed":
        return {"data.campaignId", "data.rowId"}
    family = event.split(".")[0]
    return {{"session": "data.sessionId", "tool": "data.sessionId", "agent": "data.agentId",
             "campaign": "data.campaignId", "kb": "data.uploadId"}[family]}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def rec(variant: Variant) -> LocalRecord:
    return record(variant.sample.provider, variant.sample.body, variant.routing_key)


def decoded(variant: Variant) -> CanonicalEvent:
    return DECODER.decode(rec(variant))


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """Every variant as the canonical topic carries it (the normalizer's JSON)."""
    return [orjson.loads(decoded(v).to_json()) for v in VARIANTS]


# ------------------------------------------------------------------ what is covered

def test_thirty_kinds_of_three_providers_every_one_with_examples_and_variants() -> None:
    assert len(KINDS) == 30
    assert Counter(k.provider for k in KINDS) == {"saaya": 17, "sawt": 7, "sarj": 6}
    examples = list(samples())
    assert len(examples) == 34
    assert {(k.provider, k.event) for k in KINDS} == {(s.provider, s.event) for s in examples}
    # Every example got its unknown-field variants, and a null variant per null field.
    for sample in examples:
        mine = [v for v in VARIANTS
                if (v.sample.provider, v.sample.name) == (sample.provider, sample.name)]
        kind = mine[0].kind
        assert len([v for v in mine if v.change == "null"]) == len(null_fields(kind.schema))
        assert any(v.change == "unknown" and v.path == () for v in mine)
    counts = Counter(v.change for v in VARIANTS)
    assert counts["null"] >= 200 and counts["unknown"] >= 70, counts


def test_optional_fields_come_from_the_schema() -> None:
    by_kind = {(k.provider, k.event): k for k in KINDS}
    names = {key: {dotted(p) for p in optional_fields(k.schema)} for key, k in by_kind.items()}
    # The fields issue 13 found dead-lettering when null are all among them.
    assert {"data.transcriptUrl", "data.agentId", "data.sentiment.avg"} <= names[
        ("saaya", "session.ended")]
    assert {"payload.call_data.recording_url", "payload.call_data.ended_at",
            "payload.call_started", "payload.call_data.total_duration"} <= names[
        ("sarj", "complete")]
    assert {"user_sentiment", "call_evaluation"} <= names[("sawt", "call.analyzed")]
    assert {"agent_version", "transcript_object", "transcript_object[].text"} <= names[
        ("sawt", "call.ended")]
    assert "error_type" in names[("sawt", "tool.knowledge_base.failed")]
    # Required fields are not optional; a field added to a schema is listed at once.
    assert "data.sessionId" not in names[("saaya", "session.ended")]
    schema = copy.deepcopy(by_kind[("saaya", "session.ended")].schema)
    schema["properties"]["data"]["properties"]["sentiment"]["properties"]["median"] = {
        "type": "number"}
    schema["properties"]["data"]["properties"]["turns"] = {
        "type": "array", "items": {"type": "object", "properties": {"speaker": {}}}}
    added = {dotted(p) for p in optional_fields(schema)} - names[("saaya", "session.ended")]
    assert added == {"data.sentiment.median", "data.turns", "data.turns[].speaker"}
    assert ("data", "turns", ITEM) in object_paths(schema)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"{k.provider}/{k.event}")
def test_only_the_envelope_and_subject_ids_refuse_null(kind: Any) -> None:
    """A field added to a schema must accept null unless it is the envelope or the
    subject id (the issue 13 rule); say so here if a document ever marks one non-null."""
    strict = {f.name for f in schema_fields(kind.schema) if not f.nullable}
    assert strict == ENVELOPE[kind.provider] | subject_ids(kind.provider, kind.event)


def _keywords(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, key, value))
            found += _keywords(value, f"{path}/{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found += _keywords(value, f"{path}/{n}")
    return found


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"{k.provider}/{k.event}")
def test_numbers_are_any_number_and_value_sets_open(kind: Any) -> None:
    words = _keywords(kind.schema)
    assert [(p, k) for p, k, _ in words if k in (
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "enum", "pattern")] == []
    assert [p for p, k, v in words if k == "type" and "integer" in (
        v if isinstance(v, list) else [v])] == []
    # const only for the event-type discriminators (and Saaya's version).
    consts = {p for p, k, _ in words if k == "const"}
    assert consts <= {"/properties/type", "/properties/version",
                      "/properties/payload/properties/type"}


def test_the_canonical_schema_states_no_range_either() -> None:
    schema = orjson.loads((REPO / "schemas/canonical/v1/event.schema.json").read_bytes())
    for name in ("duration_s", "cost", "sentiment"):
        assert not {"minimum", "maximum"} & set(schema["properties"][name]), name


# ------------------------------------------------------------------ validation and mapping

@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_variant_validates_and_maps(variant: Variant) -> None:
    # The reference validator agrees with the compiled one the normalizer runs.
    reference = Draft202012Validator(variant.kind.schema, format_checker=FORMATS)
    assert [e.message for e in reference.iter_errors(variant.payload)] == []
    event = decoded(variant)  # the normalizer's decoder: validation, dedupe key, mapping
    assert event.provider == variant.kind.provider
    assert event.provider_type == variant.kind.event
    assert event.data == variant.payload
    out = orjson.loads(event.to_json())
    assert [e.message for e in CANONICAL.iter_errors(out)] == []


# A null provider field leaves its canonical field null (and nothing raises).
NULL_MAPS = {
    ("saaya", "data.transcriptUrl"): ("transcript_url",),
    ("saaya", "data.agentId"): ("agent_id",),
    ("saaya", "data.sentiment.avg"): ("sentiment", "sentiment_label"),
    ("saaya", "data.sentiment"): ("sentiment", "sentiment_label"),
    ("saaya", "data.cost"): ("cost", "cost_currency"),
    ("saaya", "data.durationMs"): ("duration_s",),
    ("saaya", "data.error"): ("error_code", "error_message"),
    ("saaya", "data.reason"): ("reason",),
    ("sarj", "payload.call_data.recording_url"): ("recording_url",),
    ("sarj", "payload.call_data.ended_at"): ("ended_at", "occurred_at"),
    ("sarj", "payload.call_data.total_duration"): ("duration_s",),
    ("sarj", "payload.call_data.enhanced_transcript"): ("transcript",),
    ("sarj", "payload.call_data"): ("recording_url", "ended_at", "duration_s", "transcript",
                                    "status", "direction", "customer_number"),
    ("sawt", "user_sentiment"): ("sentiment_label",),
    ("sawt", "transcript_object"): ("transcript",),
    ("sawt", "error_type"): ("error_code",),
    ("sawt", "call_status"): ("status",),
    ("sawt", "previous_call_status"): ("previous_status",),
    ("sawt", "call_cost"): ("cost",),
    ("sawt", "duration_s"): ("duration_s",),
}


def test_null_fields_map_to_null() -> None:
    checked = 0
    for variant in VARIANTS:
        fields = NULL_MAPS.get((variant.kind.provider, dotted(variant.path)))
        if variant.change != "null" or fields is None:
            continue
        event = decoded(variant)
        assert {f: getattr(event, f) for f in fields} == dict.fromkeys(fields), variant.id
        checked += 1
    assert checked >= 25


def test_null_subfield_is_created_where_the_example_has_no_parent() -> None:
    payload = {"data": {"sessionId": "s"}}
    assert set_null(payload, ("data", "error", "code")) == {
        "data": {"sessionId": "s", "error": {"code": None}}}
    assert set_null({}, ("transcript_object", ITEM, "text")) == {
        "transcript_object": [{"text": None}]}
    assert set_null({"t": [{"a": 1}, {"a": 2}]}, ("t", ITEM, "a")) == {
        "t": [{"a": None}, {"a": None}]}


def test_the_whole_batch_decodes_without_a_dead_letter() -> None:
    """All variants in one batch through ``Normalizer.decode_batch``, the stage the
    consume loop runs: every record is an event, none a dead letter."""
    normalizer = Normalizer(load(KafkaSettings), None, None, DECODER)  # type: ignore[arg-type]
    records = [rec(v) for v in VARIANTS]
    batch = run(normalizer.decode_batch(records))
    assert [(d.reason, d.detail) for d in batch.dead] == []
    assert len(batch.events) == len(VARIANTS)
    assert len({e.event_id for e in batch.events}) == len(VARIANTS)  # no two collapse


# ------------------------------------------------------------------ every sink's write path

def _items(events: list[dict[str, Any]], wants: Any) -> list[SinkEvent]:
    return [SinkEvent(e, record=None) for e in events if wants(str(e["type"]))]


def _named(outcome: Any) -> list[tuple[str, str, str]]:
    return [(str(i.event["data"]), r, d) for i, r, d in outcome.failed]


def test_warehouse_sink_writes_every_variant(events: list[dict[str, Any]]) -> None:
    sink = WarehouseSink(PostgresSettings(), WarehouseSettings())
    store = FakeStore()
    sink._store = store  # type: ignore[assignment]
    outcome = run(sink.write(_items(events, sink.wants)))
    assert _named(outcome) == [] and outcome.deferred == []
    assert len(store.rows) == len(events)
    by_call: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if (key := call_key(event)) is not None:
            by_call.setdefault(key, []).append(event)
    assert len(by_call) > 100
    for group in by_call.values():
        assert_storable_call_row(fold_call(group))


def test_crm_sink_logs_every_finished_variant(events: list[dict[str, Any]]) -> None:
    async def write() -> None:
        transport = httpx.MockTransport(_crm_server)
        for adapter in (HubSpotAdapter(CRM_SETTINGS, transport=transport),
                        WebhookAdapter(CRM_SETTINGS, transport=transport)):
            sink = CRMSink(CRM_SETTINGS, adapter=adapter)
            items = _items(events, sink.wants)
            assert len(items) > 40 and {i.type for i in items} == FINISHED_TYPES
            outcome = await sink.write(items)
            assert _named(outcome) == [] and outcome.deferred == []
            await adapter.aclose()
    run(write())


def test_alerts_sink_sends_every_hit(events: list[dict[str, Any]]) -> None:
    sent: list[Any] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200)

    async def write() -> None:
        client = httpx.AsyncClient(transport=httpx.MockTransport(server))
        settings = AlertsSettings(alertmanager_url="http://am.test", repeat_window_s=0)
        sink = AlertsSink(settings, LOCAL_RULES, client=client)
        await sink.start()
        items = _items(events, sink.wants)
        outcome = await sink.write(items)
        assert _named(outcome) == [] and outcome.deferred == []
        await client.aclose()
    run(write())
    rules = Counter(a["labels"]["rule"] for body in sent for a in body)
    # Every rule still fires on the variants (a null field is not a reason to stay silent,
    # nor to page for nothing): the budget pause, and the reason-less pause as "other".
    assert {r.name for r in LOCAL_RULES.rules} - {"negative_sentiment",
                                                  "call_negative_sentiment"} <= set(rules)
    assert rules["campaign_paused_other"] >= 1  # the variants with reason null


def test_recordings_sink_handles_every_call_ended_variant(
        events: list[dict[str, Any]], tmp_path: Path) -> None:
    def source(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"RIFF" + request.url.path.encode(),
                              headers={"content-type": "audio/wav"})

    async def write() -> int:
        index = MemoryIndex()
        settings = RecordingsSettings(dir=str(tmp_path), allowed_hosts=(
            "storage.googleapis.com",), max_bytes=10_000)
        sink = RecordingsSink(settings, store=LocalDirStore(tmp_path), index=index,
                              transport=httpx.MockTransport(source))
        await sink.start()
        try:
            items = _items(events, sink.wants)
            outcome = await sink.write(items)
            assert _named(outcome) == [] and outcome.deferred == []
        finally:
            await sink.stop()
        with_url = [i for i in items if i.event.get("recording_url")]
        without = [i for i in items if not i.event.get("recording_url")]
        assert with_url and without  # both kinds present: null URLs are skipped, not failed
        assert len(index.rows) == len({i.event["call_id"] for i in with_url})
        return len(index.rows)
    assert run(write()) > 20


def test_transcripts_sink_handles_every_session_end_variant(
        events: list[dict[str, Any]]) -> None:
    def source(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"turns": [{"role": "agent", "text": "hi"}]})

    async def write() -> int:
        index = TranscriptsIndex()
        sink = TranscriptsSink(TranscriptsSettings(), index=index,
                               transport=httpx.MockTransport(source))
        await sink.start()
        try:
            items = _items(events, sink.wants)
            outcome = await sink.write(items)
            assert _named(outcome) == [] and outcome.deferred == []
        finally:
            await sink.stop()
        with_url = [i for i in items if i.event.get("transcript_url")]
        without = [i for i in items if not i.event.get("transcript_url")]
        assert with_url and without  # both kinds present: null URLs are skipped, not failed
        assert len(index.rows) == len({i.event["session_id"] for i in with_url})
        return len(index.rows)
    assert run(write()) >= 1


def test_fresh_identities_keep_variants_apart() -> None:
    ids = [decoded(v).event_id for v in VARIANTS]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i) for i in ids)
