"""Test deliveries (issue 13, item 3): recognised by the source's ``test_call_ids`` /
``test_call_id_pattern`` and by the ``X-Hookstream-Test`` header, marked ``test: true``
by the normalizer, kept by the warehouse (flagged, out of ``calls``) and skipped by
every other sink (counted, never written, parked or dead-lettered)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from hookstream.core.config import ConfigError, KafkaSettings, PostgresSettings
from hookstream.core.events import CanonicalEvent, is_test
from hookstream.core.record import H_TEST, LocalRecord, RawDelivery, marks_test
from hookstream.core.schemas import SchemaRegistry
from hookstream.core.sources import TestCalls, load_test_calls, parse_sources, parse_test_calls
from hookstream.devtools.samples import samples
from hookstream.normalizer.pipeline import Decoder
from hookstream.sinks.alerts.rules import load_rules
from hookstream.sinks.alerts.settings import AlertsSettings
from hookstream.sinks.alerts.sink import AlertsSink
from hookstream.sinks.crm.settings import CRMSettings
from hookstream.sinks.crm.sink import CRMSink
from hookstream.sinks.recordings.settings import RecordingsSettings
from hookstream.sinks.recordings.sink import RecordingsSink
from hookstream.sinks.runner import TEST_SKIPPED, SinkRunner, SinkSettings
from hookstream.sinks.transcripts.settings import TranscriptsSettings
from hookstream.sinks.transcripts.sink import TranscriptsSink
from hookstream.sinks.warehouse.settings import WarehouseSettings
from hookstream.sinks.warehouse.sink import WarehouseSink
from hookstream.sinks.warehouse.store import EVENT_COLUMNS, call_key, event_row

REPO = Path(__file__).resolve().parents[2]
# The repository's stand-in for Sarj.ai's dashboard "Send test webhook" payload.
SARJ_TEST = next(s for s in samples("sarj") if s.name == "complete.test_webhook")
SARJ_TEST_CALL = "call_00000000-7e57-4b1d-9a0c-d45b0a4d7e57"
SAWT_ENDED = next(s for s in samples("sawt") if s.name == "call.ended")
SAAYA_ENDED = next(s for s in samples("saaya") if s.event == "session.ended")


def record(provider: str, body: bytes, *, source: str | None = None, test: bool = False,
           routing_key: str | None = None) -> LocalRecord:
    raw = RawDelivery(source=source or f"{provider}-main", provider=provider,
                      received_at_ms=1_780_000_000_000, request_id="r", body=body,
                      routing_key=routing_key, test=test)
    return LocalRecord(body, raw.headers())


# --- the raw record and the header ------------------------------------------------------


@pytest.mark.parametrize(("value", "marked"), [
    ("1", True), ("true", True), ("TRUE", True), (" True ", True),
    (None, False), ("0", False), ("false", False), ("", False), ("yes", False),
])
def test_header_values(value: str | None, marked: bool) -> None:
    assert marks_test(value) is marked


def test_raw_record_carries_hs_test_only_when_set() -> None:
    marked = RawDelivery("s", "sarj", 1, "r", b"{}", test=True)
    assert (H_TEST, b"1") in marked.headers()
    assert RawDelivery.from_kafka(marked.headers(), b"{}").test is True
    plain = RawDelivery("s", "sarj", 1, "r", b"{}")
    assert H_TEST not in {k for k, _ in plain.headers()}
    assert RawDelivery.from_kafka(plain.headers(), b"{}").test is False


# --- per-source settings ----------------------------------------------------------------


def test_test_calls_match_ids_and_whole_pattern() -> None:
    rule = parse_test_calls("s", {"test_call_ids": ["call_a"],
                            "test_call_id_pattern": "call_00000000-.*"})
    assert rule.match("call_a")
    assert rule.match(SARJ_TEST_CALL)
    assert not rule.match("xcall_00000000-1")  # the whole id must match
    assert not rule.match("call_b")
    assert not rule.match(None)
    assert not parse_test_calls("s", {})  # defaults: nothing is a test call
    assert not TestCalls().match("call_a")


@pytest.mark.parametrize("table", [
    {"test_call_ids": "call_a"}, {"test_call_ids": [1]}, {"test_call_ids": [""]},
    {"test_call_id_pattern": "("}, {"test_call_id_pattern": ""},
    {"test_call_id_pattern": 5},
])
def test_bad_settings_are_refused(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="source 's': test_call"):
        parse_test_calls("s", table)


def test_ingest_refuses_a_bad_pattern_at_start() -> None:
    document = {"sources": {"sarj-x": {"provider": "sarj", "allow_unauthenticated": True,
                                       "test_call_id_pattern": "[unclosed"}}}
    with pytest.raises(ConfigError, match="sarj-x"):
        parse_sources(document, {})
    document["sources"]["sarj-x"]["test_call_id_pattern"] = "call_0+-.*"
    assert parse_sources(document, {})["sarj-x"].test_calls.match("call_000-1")


def test_normalizer_reads_only_the_test_settings(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(
        '[defaults]\ntest_call_id_pattern = "smoke-.*"\n'
        '[sources.sarj-a]\nprovider = "sarj"\npath_secret_env = "NOT_SET_ANYWHERE"\n'
        'test_call_ids = ["call_x"]\n'
        '[sources.sawt-b]\nprovider = "sawt"\nsecret_env = "NOT_SET_EITHER"\n')
    rules = load_test_calls(path)  # no secret variable is read
    assert sorted(rules) == ["sarj-a", "sawt-b"]
    assert rules["sarj-a"].match("call_x") and rules["sarj-a"].match("smoke-1")
    assert rules["sawt-b"].match("smoke-2") and not rules["sawt-b"].match("call_x")
    with pytest.raises(ConfigError, match="does not exist"):
        load_test_calls(tmp_path / "missing.toml")


def test_shipped_sources_file_has_no_test_calls() -> None:
    assert load_test_calls(REPO / "deploy" / "local" / "sources.toml") == {}


# --- the normalizer marks them ----------------------------------------------------------


def decoder(**rules: TestCalls) -> Decoder:
    return Decoder(SchemaRegistry(), test_calls=rules)


def test_sarj_test_webhook_is_real_without_configuration() -> None:
    """No provider document shows a marker in the payload: the body alone marks nothing."""
    event = decoder().decode(record("sarj", SARJ_TEST.body))
    assert (event.type, event.call_id, event.test) == ("call.ended", SARJ_TEST_CALL, False)
    assert orjson.loads(event.to_json())["test"] is False


def test_sarj_test_webhook_marked_by_test_call_ids() -> None:
    d = decoder(**{"sarj-main": TestCalls(frozenset({SARJ_TEST_CALL}))})
    event = d.decode(record("sarj", SARJ_TEST.body))
    assert (event.type, event.call_id, event.test) == ("call.ended", SARJ_TEST_CALL, True)
    assert orjson.loads(event.to_json())["test"] is True
    # the rule is per source: another source's delivery of that call is not a test
    assert d.decode(record("sarj", SARJ_TEST.body, source="sarj-other")).test is False
    # and a real call of the same source is not one either
    real = orjson.loads(SARJ_TEST.body)
    real["call_id"] = "call_8f9b2c1e-4a5d-4f6e-8b1a-2c3d4e5f6a7b"
    assert d.decode(record("sarj", orjson.dumps(real))).test is False


def test_marked_by_pattern_for_every_provider() -> None:
    d = decoder(**{"sarj-main": TestCalls(pattern=re.compile(r"call_00000000-.*")),
                   "sawt-main": TestCalls(pattern=re.compile(r"call_12\d")),
                   "saaya-main": TestCalls(pattern=re.compile(r"ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D"))})
    assert d.decode(record("sarj", SARJ_TEST.body)).test is True
    sawt = d.decode(record("sawt", SAWT_ENDED.body, routing_key="call.ended"))
    assert (sawt.call_id, sawt.test) == ("call_123", True)
    saaya = d.decode(record("saaya", SAAYA_ENDED.body))
    assert (saaya.session_id, saaya.test) == ("ses_01HWB7Q2K9ZM4X8T3V6RJ5NC1D", True)


@pytest.mark.parametrize("sample", [SARJ_TEST, SAWT_ENDED, SAAYA_ENDED],
                         ids=lambda s: s.name)
def test_marked_by_the_header_for_every_provider(sample: Any) -> None:
    rk = sample.event if sample.provider == "sawt" else None
    d = decoder()
    marked = d.decode(record(sample.provider, sample.body, test=True, routing_key=rk))
    plain = d.decode(record(sample.provider, sample.body, routing_key=rk))
    assert (marked.test, plain.test) == (True, False)
    # the same event either way: the flag is not part of its identity
    assert marked.event_id == plain.event_id


def test_events_from_before_the_field_read_as_real() -> None:
    assert is_test({"type": "call.ended"}) is False
    assert is_test({"test": None}) is False
    assert is_test({"test": "true"}) is False  # only the JSON boolean
    assert is_test({"test": True}) is True


# --- the warehouse keeps them, flagged, out of calls ------------------------------------


def canonical(test: bool) -> dict[str, Any]:
    event = decoder().decode(record("sarj", SARJ_TEST.body, test=test))
    parsed: dict[str, Any] = event.to_dict()
    return parsed


def test_warehouse_row_has_the_test_column() -> None:
    row = dict(zip(EVENT_COLUMNS, event_row(canonical(True)), strict=True))
    assert row["test"] is True and row["call_id"] == SARJ_TEST_CALL
    assert dict(zip(EVENT_COLUMNS, event_row(canonical(False)), strict=True))["test"] is False
    old = canonical(False)
    del old["test"]
    assert dict(zip(EVENT_COLUMNS, event_row(old), strict=True))["test"] is False


def test_a_test_event_touches_no_call() -> None:
    assert call_key(canonical(False)) == f"sarj:{SARJ_TEST_CALL}"
    assert call_key(canonical(True)) is None


# --- every other sink skips them ---------------------------------------------------------


@dataclasses.dataclass
class Rec:
    value: bytes
    headers: list[tuple[str, bytes]]
    topic: str = "events"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None


def kafka_record(event: dict[str, Any]) -> Rec:
    return Rec(orjson.dumps(event), [("hs-event-type", str(event["type"]).encode())])


def sinks(tmp_path: Path) -> list[Any]:
    rules = load_rules(str(REPO / "deploy" / "local" / "alerts.toml"))
    return [
        WarehouseSink(PostgresSettings(), WarehouseSettings()),
        CRMSink(CRMSettings(url="http://127.0.0.1:9", token="t")),
        AlertsSink(AlertsSettings(alertmanager_url="http://127.0.0.1:9"), rules),
        RecordingsSink(RecordingsSettings(dir=str(tmp_path))),
        TranscriptsSink(TranscriptsSettings()),
    ]


def test_only_the_warehouse_takes_test_events(tmp_path: Path) -> None:
    taken = {s.name: s.takes_test_events for s in sinks(tmp_path)}
    assert taken == {"warehouse": True, "crm": False, "alerts": False, "recordings": False,
                     "transcripts": False}


def alerting_test_event() -> dict[str, Any]:
    """A Sawt tool failure (an alert) marked as a test."""
    sample = next(s for s in samples("sawt") if s.event == "tool.function.failed")
    return decoder().decode(record("sawt", sample.body, test=True,
                                   routing_key=sample.event)).to_dict()


@pytest.mark.parametrize("name", ["crm", "alerts", "recordings", "transcripts", "warehouse"])
def test_each_sink_runner_skips_test_events(tmp_path: Path, name: str) -> None:
    sink = next(s for s in sinks(tmp_path) if s.name == name)
    runner = SinkRunner(sink, KafkaSettings(), SinkSettings())
    real = canonical(False)
    events = [canonical(True), alerting_test_event(), real]
    before = TEST_SKIPPED.labels(name)._value.get()
    wanted, malformed, skipped = runner._parse([kafka_record(e) for e in events], lambda r: 0)
    got = [(w.event["event_id"], w.event["test"]) for w in wanted]
    assert malformed == []
    if name == "warehouse":
        assert got == [(e["event_id"], e["test"]) for e in events]
        assert skipped == 0
        assert TEST_SKIPPED.labels(name)._value.get() == before
    else:
        # the real call.ended is offered when the sink wants it; no test event ever is
        assert all(test is False for _, test in got)
        assert (real["event_id"], False) in got or not sink.wants("call.ended")
        assert TEST_SKIPPED.labels(name)._value.get() - before == sum(
            1 for e in events[:2] if sink.wants(e["type"]))
        assert skipped == 3 - len(wanted)


def test_a_test_session_is_not_given_to_the_transcripts_sink() -> None:
    """A Saaya test delivery's transcriptUrl is never fetched: the runner skips it."""
    example = orjson.loads((REPO / "schemas/canonical/v1/examples/session.ended.json")
                           .read_bytes())
    runner = SinkRunner(TranscriptsSink(TranscriptsSettings()), KafkaSettings(), SinkSettings())
    test, real = {**example, "test": True}, {**example, "event_id": "x", "test": False}
    before = TEST_SKIPPED.labels("transcripts")._value.get()
    wanted, _, skipped = runner._parse([kafka_record(test), kafka_record(real)], lambda r: 0)
    assert [w.event["event_id"] for w in wanted] == ["x"] and skipped == 1
    assert TEST_SKIPPED.labels("transcripts")._value.get() - before == 1


def test_canonical_event_default_is_not_a_test() -> None:
    event = CanonicalEvent(event_id="e", provider="sarj", source="s", type="call.ended",
                           provider_type="complete", received_at="t", occurred_at=None,
                           data={})
    assert event.test is False and event.to_dict()["test"] is False
