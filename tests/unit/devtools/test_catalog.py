"""docs/catalog.md is generated from the schemas and must match them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hookstream.core.events import CanonicalEvent
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools import catalog

CATALOG = Path(__file__).resolve().parents[3] / "docs" / "catalog.md"


def test_catalog_page_is_up_to_date() -> None:
    """Regenerate: python -m hookstream.devtools.catalog > docs/catalog.md"""
    assert CATALOG.read_text(encoding="utf-8") == catalog.render()


def test_render_is_deterministic() -> None:
    assert catalog.render() == catalog.render()


def test_catalog_lists_every_topic_event_and_field() -> None:
    page = catalog.render()
    for topic in ("hookstream.raw.v1", "hookstream.events.v1", "hookstream.dlq.v1"):
        assert f"### `{topic}`" in page
    kinds = SchemaRegistry().kinds()
    assert len(kinds) == 30
    for provider, version, event in kinds:
        heading = f"### {provider} {version + ' ' if version else ''}`{event}` → "
        assert heading in page, heading
    for field in dataclasses.fields(CanonicalEvent):
        assert f"| `{field.name}` |" in page
    for path in ("`data.sentiment.avg`", "`payload.call_data.recording_url`",
                 "`transcript_object[].role`",
                 "`payload.call_data.enhanced_transcript.transcript.messages[].content`"):
        assert path in page, path
    assert "(unmapped)" not in page


def test_fields_flattens_nested_properties() -> None:
    schema = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "object", "required": ["b"], "properties": {
            "b": {"type": ["string", "null"], "format": "date-time", "description": "x|y"}}},
        "c": {"type": "object", "required": ["d"], "properties": {"d": {"const": "k"}}},
        "e": {"type": "array", "items": {"type": "object", "required": ["f"],
                                          "properties": {"f": {}}}},
    }}
    rows = list(catalog.fields(schema))
    assert rows == [
        ("a", "object", "yes", ""),
        ("a.b", "string | null (date-time)", "yes", "x|y"),
        ("c", "object", "no", ""),
        ("c.d", 'const `"k"`', "with `c`", ""),
        ("e", "array of object", "no", ""),
        ("e[].f", "any", "with `e[]`", ""),
    ]


def test_main_prints_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert catalog.main([]) == 0
    assert capsys.readouterr().out == catalog.render()
