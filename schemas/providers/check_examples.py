#!/usr/bin/env python3
"""Check the provider webhook schemas and their example payloads.

Usage: python3 schemas/providers/check_examples.py [ROOT]

ROOT defaults to the directory holding this script. For every
``*.schema.json`` under ROOT it checks that

* the schema is a valid draft 2020-12 schema, declares that ``$schema``, and
  has a unique ``$id``, a ``title`` and a ``description``;
* it has at least one example in the sibling ``examples/`` directory, named
  ``<type>.json`` or ``<type>.<variant>.json`` (``call.updated.2.json``,
  ``complete.test_webhook.json``);

and for every example that

* it maps to exactly one schema and validates against it (formats checked);
* it contains no placeholder ellipsis ("\u2026" or "...");
* it FAILS against every other schema of the same provider directory when
  both schemas carry an event-type discriminator (a ``const`` at ``/type``,
  as Saaya's envelope has, or at ``/payload/type``, as Sarj.ai's has). Sawt
  bodies carry no event name, so its schemas are not mutually exclusive and
  that check does not apply to them.

Exits 1 on any failure. Needs only the standard library and ``jsonschema``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_SUFFIX = ".schema.json"


def format_checker() -> FormatChecker:
    """Draft 2020-12 format checker; fills in `date-time` and `uri` when the
    optional packages jsonschema uses for them (rfc3339-validator,
    rfc3986-validator) are not installed, so the check never silently
    skips them."""
    checker = Draft202012Validator.FORMAT_CHECKER
    checker = FormatChecker(formats=list(checker.checkers))
    if "date-time" not in checker.checkers:
        rfc3339 = re.compile(
            r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
        )

        @checker.checks("date-time", raises=ValueError)
        def _date_time(value: object) -> bool:
            if not isinstance(value, str):
                return True
            if not rfc3339.match(value):
                return False
            datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
            return True

    if "uri" not in checker.checkers:

        @checker.checks("uri", raises=ValueError)
        def _uri(value: object) -> bool:
            if not isinstance(value, str):
                return True
            parts = urlsplit(value)
            return bool(parts.scheme) and not any(c.isspace() for c in value)

    return checker


def discriminator(schema: dict[str, Any]) -> Any:
    """The event-type const a schema pins, or None."""
    props = schema.get("properties", {})
    if "const" in props.get("type", {}):
        return ("type", props["type"]["const"])
    payload_type = props.get("payload", {}).get("properties", {}).get("type", {})
    if "const" in payload_type:
        return ("payload.type", payload_type["const"])
    return None


def walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_strings(v)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    failures: list[str] = []
    fmt = format_checker()

    def fail(msg: str) -> None:
        failures.append(msg)
        print(f"FAIL {msg}")

    # group schemas by their directory (one provider, or one provider version)
    groups: dict[Path, dict[str, dict[str, Any]]] = {}
    ids: dict[str, Path] = {}
    n_schemas = 0
    for path in sorted(root.rglob(f"*{SCHEMA_SUFFIX}")):
        rel = path.relative_to(root)
        n_schemas += 1
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
        except Exception as exc:  # invalid JSON or invalid schema
            fail(f"{rel}: not a valid schema: {exc}")
            continue
        if schema.get("$schema") != DRAFT:
            fail(f"{rel}: $schema is not {DRAFT}")
        for key in ("$id", "title", "description"):
            if not isinstance(schema.get(key), str) or not schema[key]:
                fail(f"{rel}: missing {key}")
        sid = schema.get("$id")
        if isinstance(sid, str):
            if sid in ids:
                fail(f"{rel}: $id {sid} also used by {ids[sid]}")
            ids[sid] = rel
        name = path.name[: -len(SCHEMA_SUFFIX)]
        groups.setdefault(path.parent, {})[name] = schema

    n_examples = 0
    n_negative = 0
    for directory, schemas in sorted(groups.items()):
        validators = {
            name: Draft202012Validator(schema, format_checker=fmt)
            for name, schema in schemas.items()
        }
        covered: set[str] = set()
        ex_dir = directory / "examples"
        ex_paths = sorted(ex_dir.glob("*.json")) if ex_dir.is_dir() else []
        for ex_path in ex_paths:
            rel = ex_path.relative_to(root)
            n_examples += 1
            stem = ex_path.name[: -len(".json")]
            # longest schema name that equals the stem or prefixes "<name>."
            matches = [n for n in schemas if stem == n or stem.startswith(n + ".")]
            if not matches:
                fail(f"{rel}: no schema named after it in {directory.relative_to(root)}")
                continue
            own = max(matches, key=len)
            covered.add(own)
            text = ex_path.read_text(encoding="utf-8")
            try:
                example = json.loads(text)
            except ValueError as exc:
                fail(f"{rel}: invalid JSON: {exc}")
                continue
            if any("\u2026" in s or "..." in s for s in walk_strings(example)):
                fail(f"{rel}: contains a placeholder ellipsis")
            errors = sorted(validators[own].iter_errors(example), key=str)
            for err in errors:
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                fail(f"{rel}: invalid against {own}: {where}: {err.message}")
            own_disc = discriminator(schemas[own])
            if own_disc is None:
                continue
            for other, validator in validators.items():
                if other == own or discriminator(schemas[other]) is None:
                    continue
                n_negative += 1
                if validator.is_valid(example):
                    fail(f"{rel}: also validates against {other} (types not distinguishable)")
        for name in sorted(set(schemas) - covered):
            fail(f"{(directory / (name + SCHEMA_SUFFIX)).relative_to(root)}: no example")

    print(f"{n_negative} cross-type negative checks")
    status = "ok" if not failures else f"{len(failures)} failure(s)"
    print(f"{n_schemas} schemas, {n_examples} examples: {status}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
