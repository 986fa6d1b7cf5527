"""The event catalog: every topic, provider event type and field, from the schema files.

``python -m hookstream.devtools.catalog > docs/catalog.md`` regenerates the
catalog page; a unit test compares docs/catalog.md with :func:`render`, so the
page cannot drift from the schemas (or from the adapters' mapping tables).

``python -m hookstream.devtools.catalog --write-examples`` regenerates what of
the canonical contract follows from the provider folders: the ``provider`` enum
of ``schemas/canonical/v1/event.schema.json`` (every registered provider) and
``schemas/canonical/v1/examples/`` (the adapters run over the provider samples).
Unit tests check both, so adding a provider is its folder, its schema directory
and its tests, then this command.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..core.events import event_id
from ..core.record import RawDelivery
from ..core.schemas import SCHEMAS_DIR
from ..providers import PROVIDERS
from .samples import Sample, samples

SUFFIX = ".schema.json"
CANONICAL_SCHEMA = Path("canonical") / "v1" / "event.schema.json"
CANONICAL_EXAMPLES = Path("canonical") / "v1" / "examples"
EXAMPLE_RECEIVED_AT_MS = 1_778_000_000_000  # 2026-05-05T16:53:20Z, fixed so examples are stable
DAY_MS = 24 * 3600 * 1000


def _load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _type_of(node: dict[str, Any]) -> str:
    if "const" in node:
        return f"const `{json.dumps(node['const'], ensure_ascii=False)}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kinds = node.get("type")
    if kinds is None:
        return "any"
    items = node.get("items")
    item_kind = items.get("type") if isinstance(items, dict) else None
    parts = []
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind == "array" and isinstance(item_kind, str):
            kind = f"array of {item_kind}"
        parts.append(kind)
    text = " | ".join(parts)
    if "format" in node:
        text += f" ({node['format']})"
    return text


def fields(schema: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(path, type, required, description) for every property, depth first.

    ``required`` is ``yes`` when the payload must carry the field, ``with <parent>``
    when it is required only inside an optional parent, ``no`` otherwise.
    """

    Row = tuple[str, str, str, str]

    def walk(node: dict[str, Any], prefix: str, always: bool) -> Iterator[Row]:
        required = set(node.get("required", ()))
        for name, child in node.get("properties", {}).items():
            path = f"{prefix}{name}"
            is_required = name in required
            if is_required and always:
                req = "yes"
            elif is_required:
                req = f"with `{prefix.rstrip('.')}`"
            else:
                req = "no"
            yield path, _type_of(child), req, child.get("description", "")
            child_always = always and is_required
            if "properties" in child:
                yield from walk(child, f"{path}.", child_always)
            items = child.get("items")
            if isinstance(items, dict) and "properties" in items:
                yield from walk(items, f"{path}[].", False)

    yield from walk(schema, "", True)


def _field_table(schema: dict[str, Any]) -> list[str]:
    lines = ["| field | type | required | description |", "|---|---|---|---|"]
    for path, kind, req, desc in fields(schema):
        lines.append(f"| `{path}` | {_cell(kind)} | {req} | {_cell(desc)} |")
    return lines


def provider_kinds(schemas_dir: Path = SCHEMAS_DIR) -> list[tuple[str, str | None, str, Path]]:
    """(provider, version or None, event type, schema path) of every provider schema."""
    root = schemas_dir / "providers"
    out = []
    for path in root.rglob(f"*{SUFFIX}"):
        parts = path.relative_to(root).parts
        version = parts[1] if len(parts) == 3 else None
        out.append((parts[0], version, path.name.removesuffix(SUFFIX), path))
    return sorted(out, key=lambda k: (k[0], k[1] or "", k[2]))


def _topics(schemas_dir: Path) -> list[dict[str, Any]]:
    order = {"raw": 0, "events": 1, "dlq": 2}
    specs = [_load(p) for p in (schemas_dir / "topics").glob("*.json")]
    return sorted(specs, key=lambda s: (order.get(s["topic"].split(".")[1], 9), s["topic"]))


def _render_topics(schemas_dir: Path) -> list[str]:
    specs = _topics(schemas_dir)
    lines = ["## Topics", "",
             "From `schemas/topics/<topic>.json`. Topic names are the defaults "
             "(`HOOKSTREAM_RAW_TOPIC`, `HOOKSTREAM_EVENTS_TOPIC`, `HOOKSTREAM_DLQ_TOPIC`).", "",
             "| topic | partitions | retention | key | value | schema versions |",
             "|---|---|---|---|---|---|"]
    for spec in specs:
        days = int(spec["topic_creation_config"]["retention.ms"]) // DAY_MS
        versions = ", ".join(f"v{s['version']} ({s['type']}: `{s['resource']}`)"
                             for s in spec["schemas"])
        lines.append(f"| `{spec['topic']}` | {spec['partitions']} | {days} days | "
                     f"{_cell(spec['key'])} | {_cell(spec['value'])} | {_cell(versions)} |")
    for spec in specs:
        lines += ["", f"### `{spec['topic']}`", "", _cell(spec["description"]), ""]
        producers = ", ".join(spec["services"]["producers"])
        consumers = ", ".join(spec["services"]["consumers"])
        lines += [f"Producers: {producers}. Consumers: {consumers}.", ""]
        for schema in spec["schemas"]:
            examples = ", ".join(f"`{e}`" for e in schema["examples"]) or "none"
            lines.append(f"* schema v{schema['version']} ({schema['type']}, compatibility "
                         f"`{schema['compatibility_mode']}`): `schemas/{schema['resource']}`. "
                         f"{_cell(schema['description'])} Examples: {examples}.")
        lines.append("")
        if spec["headers"]:
            lines += ["| header | required | description |", "|---|---|---|"]
            for header in spec["headers"]:
                desc = header["description"]
                if "values" in header:
                    desc += " Values: " + ", ".join(f"`{v}`" for v in header["values"]) + "."
                name = header["name"]
                name = f"`{name}`" if not name.startswith("(") else name
                lines.append(f"| {name} | {'yes' if header['required'] else 'no'} | "
                             f"{_cell(desc)} |")
        else:
            lines.append("No record headers.")
    return lines


def _render_canonical(schemas_dir: Path) -> list[str]:
    schema = _load(schemas_dir / CANONICAL_SCHEMA)
    envelope = schema["properties"]["envelope"]["const"]
    lines = ["## Canonical envelope", "",
             f"`{envelope}`, from `schemas/{CANONICAL_SCHEMA.as_posix()}`. "
             f"{_cell(schema['description'])}", "",
             *_field_table(schema), "",
             "### Canonical types", "",
             "| canonical type | provider events |", "|---|---|"]
    by_type: dict[str, list[str]] = {t: [] for t in schema["properties"]["type"]["enum"]}
    for provider in sorted(PROVIDERS):
        for provider_type, canonical in sorted(
                PROVIDERS[provider].adapter.canonical_types.items()):
            by_type.setdefault(canonical, []).append(f"{provider} `{provider_type}`")
    for canonical, sources in sorted(by_type.items()):
        lines.append(f"| `{canonical}` | {', '.join(sources) or '—'} |")
    return lines


def _render_providers(schemas_dir: Path) -> list[str]:
    kinds = provider_kinds(schemas_dir)
    lines = ["## Provider events", "",
             f"{len(kinds)} event kinds, from `schemas/providers/`. \"required\" is `yes` when "
             "every payload must carry the field, `with <parent>` when it is required only "
             "inside an optional parent.", "",
             "| provider | version | event type | canonical type | examples |",
             "|---|---|---|---|---|"]
    for provider, version, event, path in kinds:
        canonical = PROVIDERS[provider].adapter.canonical_types.get(event, "(unmapped)")
        examples = _examples(path.parent / "examples", event)
        lines.append(f"| {provider} | {version or '—'} | `{event}` | `{canonical}` | "
                     f"{', '.join(f'`{e}`' for e in examples)} |")
    for provider, version, event, path in kinds:
        schema = _load(path)
        canonical = PROVIDERS[provider].adapter.canonical_types.get(event, "(unmapped)")
        where = path.relative_to(schemas_dir).as_posix()
        lines += ["", f"### {provider} {version + ' ' if version else ''}`{event}` → "
                      f"`{canonical}`", "",
                  f"`schemas/{where}`. {_cell(schema.get('description', ''))}", "",
                  *_field_table(schema)]
    return lines


def _examples(directory: Path, event: str) -> list[str]:
    names = []
    for path in sorted(directory.glob("*.json")):
        stem = path.name.removesuffix(".json")
        variant = stem.startswith(f"{event}.") and not _longer_match(directory, stem, event)
        if stem == event or variant:
            names.append(path.name)
    return names


def _longer_match(directory: Path, stem: str, event: str) -> bool:
    """True when another schema's name is a longer prefix of ``stem`` than ``event``."""
    for schema in directory.parent.glob(f"*{SUFFIX}"):
        other = schema.name.removesuffix(SUFFIX)
        if len(other) > len(event) and (stem == other or stem.startswith(f"{other}.")):
            return True
    return False


def render(schemas_dir: Path = SCHEMAS_DIR) -> str:
    lines = ["# Event catalog", "",
             "<!-- Generated by `python -m hookstream.devtools.catalog > docs/catalog.md` "
             "from schemas/; do not edit by hand. tests/unit/devtools/test_catalog.py fails when "
             "this page and the schemas disagree. -->", "",
             "Every topic, every provider event type with its fields, and the canonical "
             "envelope. Meaning and mapping rules: [canonical.md](canonical.md); what the "
             "provider documents leave open: [providers.md](providers.md).", "",
             *_render_topics(schemas_dir), "",
             *_render_canonical(schemas_dir), "",
             *_render_providers(schemas_dir)]
    return "\n".join(lines) + "\n"


# --- canonical examples ------------------------------------------------------------


def _example_delivery(sample: Sample) -> RawDelivery:
    return RawDelivery(
        source=f"{sample.provider}-main",
        provider=sample.provider,
        received_at_ms=EXAMPLE_RECEIVED_AT_MS,
        request_id=uuid.uuid5(uuid.NAMESPACE_URL, f"hookstream-example:{sample.provider}/"
                                                  f"{sample.name}").hex,
        body=sample.body,
        content_type="application/json",
        # An event name sent outside the body arrives as on a configured source.
        routing_key=PROVIDERS[sample.provider].routing_key(sample.event),
    )


def canonical_example(sample: Sample) -> dict[str, Any]:
    """The canonical event the adapters make of one provider sample."""
    adapter = PROVIDERS[sample.provider].adapter
    raw = _example_delivery(sample)
    payload = orjson.loads(sample.body)
    event_type, version, inferred = adapter.identify(raw, payload)
    key = adapter.dedupe_key(event_type, payload)
    event = adapter.to_canonical(raw, payload, event_type, version, inferred,
                                 event_id(sample.provider, key))
    return event.to_dict()


def canonical_examples(schemas_dir: Path = SCHEMAS_DIR) -> dict[str, dict[str, Any]]:
    """File name -> canonical event: ``<type>.json`` from the first provider (by name)
    with that type, ``<type>.<provider>.json`` for each further provider. Each uses
    the provider's main example (``<event>.json``) when it has one."""
    chosen: dict[tuple[str, str], tuple[bool, dict[str, Any]]] = {}
    for sample in samples(schemas_dir=schemas_dir):
        event = canonical_example(sample)
        slot = (event["type"], sample.provider)
        is_main = sample.name == sample.event
        if slot not in chosen or (is_main and not chosen[slot][0]):
            chosen[slot] = (is_main, event)
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for (canonical, provider), (_, event) in sorted(chosen.items()):
        name = f"{canonical}.json" if canonical not in seen else f"{canonical}.{provider}.json"
        seen.add(canonical)
        out[name] = event
    return out


def example_bytes(event: dict[str, Any]) -> bytes:
    return json.dumps(event, indent=2, ensure_ascii=False).encode() + b"\n"


def schema_bytes(schema: dict[str, Any]) -> bytes:
    return json.dumps(schema, indent=2, ensure_ascii=False).encode() + b"\n"


def canonical_schema_with_providers(schemas_dir: Path = SCHEMAS_DIR) -> dict[str, Any]:
    """The canonical schema with its ``provider`` enum set to the registered providers:
    the contract lists every provider (docs/canonical.md, "Compatibility"), and the
    list follows from the provider folders rather than from a hand edit."""
    schema: dict[str, Any] = _load(schemas_dir / CANONICAL_SCHEMA)
    schema["properties"]["provider"]["enum"] = sorted(PROVIDERS)
    return schema


def write_examples(schemas_dir: Path = SCHEMAS_DIR) -> list[Path]:
    schema_path = schemas_dir / CANONICAL_SCHEMA
    schema_path.write_bytes(schema_bytes(canonical_schema_with_providers(schemas_dir)))
    directory = schemas_dir / CANONICAL_EXAMPLES
    directory.mkdir(parents=True, exist_ok=True)
    wanted = canonical_examples(schemas_dir)
    for stale in directory.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    written = [schema_path]
    for name, event in wanted.items():
        path = directory / name
        path.write_bytes(example_bytes(event))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hookstream.devtools.catalog",
        description="Print the Markdown event catalog (docs/catalog.md) built from schemas/.",
    )
    parser.add_argument("--write-examples", action="store_true",
                        help="instead, regenerate the canonical schema's provider enum "
                             "and schemas/canonical/v1/examples/ from the provider folders")
    args = parser.parse_args(argv)
    if args.write_examples:
        for path in write_examples():
            print(path, file=sys.stderr)
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
