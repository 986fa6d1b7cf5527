"""Every provider sample through every adapter: identify -> schema -> dedupe key -> canonical.

Cross-provider properties: each of the 30 provider event kinds is mapped, every canonical
event validates against schemas/canonical/v1/event.schema.json, dedupe keys are stable
and distinct, and adapters raise nothing but ``Invalid`` on odd shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from hookstream.core.errors import MAPPING_FAILED, Invalid
from hookstream.core.events import CanonicalEvent, event_id
from hookstream.core.record import RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import SCHEMAS_DIR, Sample, samples
from hookstream.providers import PROVIDERS as _PROVIDERS
from tests.support import format_checker

REGISTRY = SchemaRegistry()
SAMPLES = list(samples())
RECEIVED_AT_MS = 1_777_284_871_123  # 2026-04-27T10:14:31.123Z


CANONICAL = Draft202012Validator(
    orjson.loads((SCHEMAS_DIR / "canonical" / "v1" / "event.schema.json").read_bytes()),
    format_checker=format_checker(),
)

ADAPTERS = {name: spec.adapter for name, spec in _PROVIDERS.items()}


def raw_of(sample: Sample, routing_key: str | None = None) -> RawDelivery:
    return RawDelivery(source=f"{sample.provider}-test", provider=sample.provider,
                       received_at_ms=RECEIVED_AT_MS, request_id="req-1", body=sample.body,
                       routing_key=routing_key)


def normalize(sample: Sample, routing_key: str | None = None) -> CanonicalEvent:
    adapter = ADAPTERS[sample.provider]
    raw = raw_of(sample, routing_key)
    payload = orjson.loads(sample.body)
    event_type, version, inferred = adapter.identify(raw, payload)
    REGISTRY.validate(sample.provider, version, event_type, payload)
    key = adapter.dedupe_key(event_type, payload)
    return adapter.to_canonical(raw, payload, event_type, version, inferred,
                                event_id(sample.provider, key))


def test_samples_cover_every_provider_kind() -> None:
    kinds = {(p, e) for p, _, e in REGISTRY.kinds()}
    assert len(kinds) == 30
    assert {(s.provider, s.event) for s in SAMPLES} == kinds
    assert len(SAMPLES) == 34


def test_every_schema_kind_has_a_canonical_type() -> None:
    kinds = REGISTRY.kinds()
    for provider, _, event in kinds:
        assert event in ADAPTERS[provider].canonical_types, (provider, event)
    mapped = {(p, e) for p, a in ADAPTERS.items() for e in a.canonical_types}
    assert mapped == {(p, e) for p, _, e in kinds}
    assert sum(len(a.canonical_types) for a in ADAPTERS.values()) == 30
    assert {p: len(a.canonical_types) for p, a in ADAPTERS.items()} == {
        "saaya": 17, "sawt": 7, "sarj": 6}


def test_adapters_satisfy_the_protocol() -> None:
    for name, adapter in ADAPTERS.items():
        assert adapter.provider == name
        for method in ("identify", "dedupe_key", "to_canonical"):
            assert callable(getattr(adapter, method))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.provider}/{s.name}")
def test_sample_maps_and_validates_against_the_canonical_schema(sample: Sample) -> None:
    routing_key = sample.event if sample.provider == "sawt" else None
    event = normalize(sample, routing_key)
    adapter = ADAPTERS[sample.provider]
    assert event.provider == sample.provider
    assert event.provider_type == sample.event
    assert event.type == adapter.canonical_types[sample.event]
    assert event.source == f"{sample.provider}-test"
    assert event.request_id == "req-1"
    assert event.received_at == "2026-04-27T10:14:31.123Z"
    assert event.data == orjson.loads(sample.body)
    assert event.type_inferred is False
    assert event.subject_id is not None or event.type.startswith("kb.upload.")
    out = event.to_dict()
    errors = [e.message for e in CANONICAL.iter_errors(out)]
    assert errors == []
    # The wire form round-trips as JSON and still validates.
    assert list(CANONICAL.iter_errors(orjson.loads(event.to_json()))) == []


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.provider}/{s.name}")
def test_dedupe_key_is_stable(sample: Sample) -> None:
    adapter = ADAPTERS[sample.provider]
    payload = orjson.loads(sample.body)
    event_type, _, _ = adapter.identify(raw_of(sample, None), payload)
    again = orjson.loads(sample.body)
    reordered = dict(reversed(list(orjson.loads(sample.body).items())))
    key = adapter.dedupe_key(event_type, payload)
    assert isinstance(key, str) and key
    assert adapter.dedupe_key(event_type, again) == key
    assert adapter.dedupe_key(event_type, reordered) == key
    assert normalize(sample).event_id == normalize(sample).event_id


def test_dedupe_keys_and_event_ids_differ_across_samples() -> None:
    """No two samples are the same event (none is an intentional duplicate)."""
    ids = [normalize(s).event_id for s in SAMPLES]
    assert len(set(ids)) == len(SAMPLES)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:2]):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _replace(payload: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(payload)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


ODD_VALUES: list[Any] = [None, 0, -1.5, True, "", "x", [], [1, "a"], {}, {"a": None}]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"{s.provider}/{s.name}")
def test_odd_shapes_raise_only_invalid(sample: Sample) -> None:
    """Whatever a field holds, adapters return an event or raise ``Invalid`` (never
    KeyError/TypeError/...), and to_canonical fails only with ``mapping_failed``."""
    adapter = ADAPTERS[sample.provider]
    payload = orjson.loads(sample.body)
    event_type = sample.event
    for path in _paths(payload):
        for odd in ODD_VALUES:
            bent = _replace(payload, path, odd)
            raw = raw_of(sample)
            try:
                adapter.identify(raw, bent)
            except Invalid:
                pass
            try:
                key = adapter.dedupe_key(event_type, bent)
            except Invalid as exc:
                assert exc.reason == MAPPING_FAILED
                key = "k"
            try:
                event = adapter.to_canonical(raw, bent, event_type, None, False,
                                             event_id(sample.provider, key))
            except Invalid as exc:
                assert exc.reason == MAPPING_FAILED, (path, odd, exc)
            else:
                assert event.data is bent
                event.to_json()


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
def test_unmapped_type_is_mapping_failed(provider: str) -> None:
    adapter = ADAPTERS[provider]
    raw = RawDelivery(source="s", provider=provider, received_at_ms=0, request_id="r", body=b"{}")
    with pytest.raises(Invalid) as info:
        adapter.to_canonical(raw, {}, "no.such.event", None, False, "id")
    assert info.value.reason == MAPPING_FAILED


def test_example_files_use_real_field_names() -> None:
    """Guard against silently-null typed fields: across all samples, each typed field
    the adapters promise to fill is filled at least once."""
    events = [normalize(s, s.event if s.provider == "sawt" else None) for s in SAMPLES]
    for field in ("call_id", "session_id", "agent_id", "campaign_id", "status",
                  "previous_status", "direction", "customer_number", "started_at",
                  "ended_at", "duration_s", "cost", "cost_currency", "sentiment",
                  "sentiment_label", "summary", "outcome", "transcript", "transcript_url",
                  "recording_url", "tool_name", "error_code", "error_message", "reason",
                  "occurred_at", "provider_version"):
        assert any(getattr(e, field) is not None for e in events), field

