"""Issue 13: every provider example, with each optional field set to null in turn, and
with an unknown field added.

The optional fields are read from the JSON schema of the example's event kind, not
listed by hand: every property that its parent's ``required`` does not name, at every
level (``data.sentiment.avg``, ``payload.call_data.ended_at``, the properties of array
items such as ``transcript_object[].text``). A field added to a schema is therefore
covered by the tests that use :func:`variants` without anyone touching them. Required
fields whose schema admits null (Sawt's ``call_status``, Sarj.ai's ``payload.call_data``)
get a null variant too.

Each variant gets fresh identities (:func:`hookstream.devtools.samples.fresh_copy`: Saaya
``id`` and ``sessionId``, Sarj.ai and Sawt ``call_id``), so every variant is a distinct
event for the normalizer's dedupe and for the warehouse.

Used by ``tests/unit/test_schema_variants.py`` (validation, mapping, every sink's write
path with fakes) and ``tests/integration/test_schema_variants.py`` (the real normalizer
and the real warehouse in PostgreSQL).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from hookstream.devtools.samples import SCHEMAS_DIR, Sample, fresh_copy, samples

ITEM = "[]"  # a path step into every item of an array
FieldPath = tuple[str, ...]
SUFFIX = ".schema.json"
# The unknown field added to the root and to every object the schema describes.
UNKNOWN_KEY = "hookstream_unknown_field"
UNKNOWN_VALUE: Any = {"nested": [1, 2.5, None, "text", True, {"deeper": None}]}


@dataclasses.dataclass(frozen=True)
class Field:
    path: FieldPath
    required: bool  # named by its parent's ``required``
    nullable: bool  # its schema admits null (a type list with "null", or no type at all)
    node: dict[str, Any]

    @property
    def name(self) -> str:
        return dotted(self.path)


def dotted(path: FieldPath) -> str:
    return ".".join(path).replace(f".{ITEM}", ITEM) or "(root)"


def _admits_null(node: dict[str, Any]) -> bool:
    if "const" in node or "enum" in node:
        return None in node.get("enum", [node.get("const", 0)])
    kinds = node.get("type")
    if kinds is None:
        return True
    return "null" in (kinds if isinstance(kinds, list) else [kinds])


def schema_fields(schema: dict[str, Any]) -> list[Field]:
    """Every property of ``schema``, depth first: nested objects and array items too."""
    out: list[Field] = []

    def walk(node: dict[str, Any], prefix: FieldPath) -> None:
        required = set(node.get("required", ()))
        for name, child in node.get("properties", {}).items():
            path = (*prefix, name)
            out.append(Field(path, name in required, _admits_null(child), child))
            walk(child, path)
            items = child.get("items")
            if isinstance(items, dict):
                walk(items, (*path, ITEM))

    walk(schema, ())
    return out


def optional_fields(schema: dict[str, Any]) -> list[FieldPath]:
    """The properties not in their parent's ``required``, at every level."""
    return [f.path for f in schema_fields(schema) if not f.required]


def null_fields(schema: dict[str, Any]) -> list[FieldPath]:
    """What the null variants null: every optional field, and every required one whose
    schema admits null."""
    return [f.path for f in schema_fields(schema) if not f.required or f.nullable]


def object_paths(schema: dict[str, Any]) -> list[FieldPath]:
    """The root and every object the schema describes (has ``properties``)."""
    found: list[FieldPath] = [()]
    for f in schema_fields(schema):
        if "properties" in f.node:
            found.append(f.path)
        items = f.node.get("items")
        if isinstance(items, dict) and "properties" in items:
            found.append((*f.path, ITEM))
    return found


def set_null(payload: dict[str, Any], path: FieldPath) -> dict[str, Any]:
    """A copy of ``payload`` with the field at ``path`` set to null. Missing parents are
    created (an object, or an array of one object), so a field the example leaves out is
    tested too; an array's items all get the null."""
    out = copy.deepcopy(payload)

    def put(node: Any, steps: FieldPath) -> None:
        head, rest = steps[0], steps[1:]
        if head == ITEM:
            if not node:
                node.append({})
            for entry in node:
                if isinstance(entry, dict):
                    put(entry, rest)
            return
        if not rest:
            node[head] = None
            return
        want: type = list if rest[0] == ITEM else dict
        if not isinstance(node.get(head), want):
            node[head] = want()
        put(node[head], rest)

    put(out, path)
    return out


def add_unknown(payload: dict[str, Any], path: FieldPath) -> dict[str, Any] | None:
    """A copy of ``payload`` with :data:`UNKNOWN_KEY` added to the object at ``path``
    (to every item, for an array), or None when the example has no object there."""
    out = copy.deepcopy(payload)
    targets: list[Any] = [out]
    for step in path:
        nxt: list[Any] = []
        for node in targets:
            if step == ITEM and isinstance(node, list):
                nxt += node
            elif step != ITEM and isinstance(node, dict) and step in node:
                nxt.append(node[step])
        targets = nxt
    objects = [t for t in targets if isinstance(t, dict)]
    if not objects:
        return None
    for node in objects:
        node[UNKNOWN_KEY] = copy.deepcopy(UNKNOWN_VALUE)
    return out


# ------------------------------------------------------------------ schemas and samples

@dataclasses.dataclass(frozen=True)
class Kind:
    provider: str
    version: str | None
    event: str
    path: Path

    @functools.cached_property
    def schema(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.path.read_bytes())
        return loaded


def kinds(schemas_dir: Path = SCHEMAS_DIR) -> list[Kind]:
    """Every provider event kind: one per schema file."""
    root = schemas_dir / "providers"
    out = []
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        parts = path.relative_to(root).parts
        out.append(Kind(parts[0], parts[1] if len(parts) == 3 else None,
                        path.name.removesuffix(SUFFIX), path))
    return out


def kind_of(sample: Sample, schemas_dir: Path = SCHEMAS_DIR) -> Kind:
    """The kind (schema) an example belongs to: same provider and event, and the example
    file sits in that schema's ``examples/`` directory."""
    found = [k for k in kinds(schemas_dir)
             if k.provider == sample.provider and k.event == sample.event
             and (k.path.parent / "examples" / f"{sample.name}.json").exists()]
    assert len(found) == 1, (sample.provider, sample.name, found)
    return found[0]


@dataclasses.dataclass(frozen=True)
class Variant:
    sample: Sample  # the example, with fresh identities and the change applied
    kind: Kind
    change: str  # "null" or "unknown"
    path: FieldPath
    payload: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.sample.provider}/{self.sample.name}:{self.change}:{dotted(self.path)}"

    @property
    def routing_key(self) -> str | None:
        """Sawt's event name travels outside the body: as the routing key header."""
        return self.kind.event if self.kind.provider == "sawt" else None


def variants(schemas_dir: Path = SCHEMAS_DIR) -> Iterator[Variant]:
    """For every example: one variant per field of :func:`null_fields` (set to null) and
    one per object of :func:`object_paths` that the example has (an unknown field added)."""
    n = 0
    for sample in samples(schemas_dir=schemas_dir):
        kind = kind_of(sample, schemas_dir)
        changes: list[tuple[str, FieldPath]] = [("null", p) for p in null_fields(kind.schema)]
        changes += [("unknown", p) for p in object_paths(kind.schema)]
        for change, path in changes:
            n += 1
            fresh = fresh_copy(sample, f"v{n}")
            base = orjson.loads(fresh.body)
            payload = set_null(base, path) if change == "null" else add_unknown(base, path)
            if payload is None:
                continue
            yield Variant(dataclasses.replace(fresh, body=orjson.dumps(payload)), kind,
                          change, path, payload)
