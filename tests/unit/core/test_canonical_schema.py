"""The canonical v1 schema, its generated examples and the topic files agree with the code."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from hookstream.core import dlq, errors, headers, record, topics
from hookstream.core.config import KafkaSettings
from hookstream.core.events import ENVELOPE, CanonicalEvent, TranscriptTurn, is_test
from hookstream.devtools import catalog
from hookstream.devtools.samples import SCHEMAS_DIR
from hookstream.providers import PROVIDERS as _PROVIDERS
from tests.support import format_checker

ADAPTERS = {name: spec.adapter for name, spec in _PROVIDERS.items()}


CANONICAL_SCHEMA_REL = Path("canonical") / "v1" / "event.schema.json"
SCHEMA_PATH = SCHEMAS_DIR / CANONICAL_SCHEMA_REL
SCHEMA = orjson.loads(SCHEMA_PATH.read_bytes())
EXAMPLES_DIR = SCHEMAS_DIR / "canonical" / "v1" / "examples"
TOPICS_DIR = SCHEMAS_DIR / "topics"
CANONICAL_TYPES = sorted({t for a in ADAPTERS.values() for t in a.canonical_types.values()})


VALIDATOR = Draft202012Validator(SCHEMA, format_checker=format_checker())


def test_schema_is_valid_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "hookstream/canonical/v1/event"
    assert SCHEMA["properties"]["envelope"]["const"] == ENVELOPE


# Fields added within v1: to_dict() emits them, but an event written before they
# existed lacks them, so the schema does not require them (each has a default).
ADDED_IN_V1: dict[str, object] = {"test": False, "channel": None}


def test_schema_fields_are_exactly_the_dataclass_fields() -> None:
    fields = [f.name for f in dataclasses.fields(CanonicalEvent)]
    assert fields[0] == "envelope"
    assert list(SCHEMA["properties"]) == fields
    # to_dict() always emits every field; all but those added within v1 are required
    assert SCHEMA["required"] == [f for f in fields if f not in ADDED_IN_V1]
    for name, default in ADDED_IN_V1.items():
        assert SCHEMA["properties"][name]["default"] == default
    for name, prop in SCHEMA["properties"].items():
        assert prop.get("description"), name


def test_nullable_fields_are_typed_with_null() -> None:
    for field in dataclasses.fields(CanonicalEvent):
        if field.name == "envelope":
            continue
        prop = SCHEMA["properties"][field.name]
        nullable = "None" in str(field.type)
        kinds = prop.get("type", [])
        assert ("null" in kinds) == nullable, field.name


def test_type_enum_is_every_canonical_type() -> None:
    assert SCHEMA["properties"]["type"]["enum"] == CANONICAL_TYPES
    assert len(CANONICAL_TYPES) == 23


def test_provider_enum_is_every_registered_provider() -> None:
    """The enum follows from the provider folders, written by the catalog generator.
    Regenerate: python -m hookstream.devtools.catalog --write-examples"""
    assert SCHEMA["properties"]["provider"]["enum"] == sorted(ADAPTERS)
    assert SCHEMA_PATH.read_bytes() == catalog.schema_bytes(
        catalog.canonical_schema_with_providers())


def test_the_generator_adds_a_new_provider_to_the_enum(tmp_path: Path) -> None:
    """A provider registered but not yet in the schema is written into the enum, the
    rest of the schema byte for byte as it was."""
    (tmp_path / CANONICAL_SCHEMA_REL.parent).mkdir(parents=True)
    stale = dict(SCHEMA, properties=dict(
        SCHEMA["properties"], provider=dict(SCHEMA["properties"]["provider"], enum=["saaya"])))
    (tmp_path / CANONICAL_SCHEMA_REL).write_bytes(catalog.schema_bytes(stale))
    fixed = catalog.canonical_schema_with_providers(tmp_path)
    assert fixed["properties"]["provider"]["enum"] == sorted(ADAPTERS)
    assert catalog.schema_bytes(fixed) == SCHEMA_PATH.read_bytes()

def _event(**overrides: Any) -> dict[str, Any]:
    base = CanonicalEvent(event_id="2cd6bdb0-93fd-50d6-8005-36f33d105174", provider="sawt",
                          source="s", type="call.ended", provider_type="call.ended",
                          received_at="2026-04-27T10:14:31.000Z", occurred_at=None, data={},
                          transcript=[TranscriptTurn("agent", "hi")])
    return base.to_dict() | overrides


def test_minimal_event_validates_and_bad_ones_do_not() -> None:
    assert list(VALIDATOR.iter_errors(_event())) == []
    for bad in ({"type": "call.exploded"}, {"envelope": "hookstream.event.v2"},
                {"duration_s": "12"}, {"transcript": [{"role": "agent"}]},
                {"received_at": "yesterday"}, {"event_id": "not-a-uuid"},
                {"type_inferred": None}, {"data": []}):
        assert list(VALIDATOR.iter_errors(_event(**bad))), bad
    missing = _event()
    del missing["call_id"]
    assert list(VALIDATOR.iter_errors(missing))


def test_test_flag_is_written_and_optional() -> None:
    """``test`` is always written (false by default); an event from before it existed
    (no ``test``) still validates and reads as a real event."""
    assert _event()["test"] is False
    assert list(VALIDATOR.iter_errors(_event(test=True))) == []
    assert list(VALIDATOR.iter_errors(_event(test="yes")))
    old = _event()
    del old["test"]
    assert list(VALIDATOR.iter_errors(old)) == []
    assert is_test(old) is False
    assert is_test(_event(test=True)) is True


def test_a_new_field_is_accepted() -> None:
    """Adding a field is a compatible change within v1."""
    assert list(VALIDATOR.iter_errors(_event(new_field=1))) == []


# --- examples ----------------------------------------------------------------------


def test_examples_are_up_to_date() -> None:
    """schemas/canonical/v1/examples/ is exactly what the adapters make of the samples.
    Regenerate: python -m hookstream.devtools.catalog --write-examples"""
    wanted = catalog.canonical_examples()
    on_disk = {p.name: p.read_bytes() for p in EXAMPLES_DIR.glob("*.json")}
    assert sorted(on_disk) == sorted(wanted)
    for name, event in wanted.items():
        assert on_disk[name] == catalog.example_bytes(event), name


def test_one_example_per_canonical_type() -> None:
    names = {p.name for p in EXAMPLES_DIR.glob("*.json")}
    for canonical in CANONICAL_TYPES:
        assert f"{canonical}.json" in names
    assert {"call.ended.sawt.json", "tool.failed.sawt.json"} <= names


@pytest.mark.parametrize("path", sorted(EXAMPLES_DIR.glob("*.json")), ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    event = orjson.loads(path.read_bytes())
    assert list(VALIDATOR.iter_errors(event)) == []
    assert path.name.startswith(event["type"] + ".")


def test_write_examples_round_trips(tmp_path: Path) -> None:
    (tmp_path / "providers").symlink_to(SCHEMAS_DIR / "providers")
    (tmp_path / "canonical" / "v1" / "examples").mkdir(parents=True)
    (tmp_path / "canonical" / "v1" / "examples" / "stale.json").write_text("{}")
    (tmp_path / CANONICAL_SCHEMA_REL).write_bytes(SCHEMA_PATH.read_bytes())
    schema_path, *written = catalog.write_examples(tmp_path)
    assert schema_path.read_bytes() == SCHEMA_PATH.read_bytes()
    assert sorted(p.name for p in written) == sorted(p.name for p in EXAMPLES_DIR.glob("*.json"))
    for path in written:
        assert path.read_bytes() == (EXAMPLES_DIR / path.name).read_bytes()
    assert not (tmp_path / "canonical" / "v1" / "examples" / "stale.json").exists()


# --- topics ------------------------------------------------------------------------


def _topics() -> dict[str, dict[str, Any]]:
    return {p.stem: orjson.loads(p.read_bytes()) for p in TOPICS_DIR.glob("*.json")}


def test_topics_match_the_topic_plan() -> None:
    specs = _topics()
    plan = {t.name: t for t in topics.plan(KafkaSettings())}
    assert set(specs) == set(plan)
    for name, spec in specs.items():
        assert spec["topic"] == name
        assert spec["partitions"] == plan[name].partitions
        assert spec["topic_creation_config"] == plan[name].configs()
        for schema in spec["schemas"]:
            assert (SCHEMAS_DIR / schema["resource"]).exists(), schema["resource"]
            for example in schema["examples"]:
                assert (SCHEMAS_DIR / example).is_dir(), example


def test_raw_topic_headers_match_the_record() -> None:
    headers = {h["name"]: h["required"] for h in _topics()["hookstream.raw.v1"]["headers"]}
    always = {name for name, _ in record.RawDelivery("s", "p", 1, "r", b"").headers()}
    constants = {v for k, v in vars(record).items() if k.startswith("H_")}
    assert set(headers) == constants
    assert {name for name, required in headers.items() if required} == always


def test_dlq_topic_headers_match_the_dead_letter_record() -> None:
    headers = {h["name"]: h for h in _topics()["hookstream.dlq.v1"]["headers"]}
    written = {name for name, _ in dlq.dead_letter_headers(
        [], reason=errors.MAPPING_FAILED, stage="normalizer", detail="d", topic="t",
        partition=0, offset=0)}
    assert set(headers) - {"(original headers)"} == written
    assert tuple(headers["hs-dlq-reason"]["values"]) == errors.REASONS


def test_events_topic_headers_match_the_pipeline() -> None:
    names = {h["name"] for h in _topics()["hookstream.events.v1"]["headers"]}
    assert headers.H_EVENT_TYPE in names
    assert {"hs-provider", "hs-source", "hs-event-id", "content-type"} <= names


def test_events_topic_names_the_canonical_schema() -> None:
    spec = _topics()["hookstream.events.v1"]
    assert [s["resource"] for s in spec["schemas"]] == ["canonical/v1/event.schema.json"]
