"""Compiled provider schemas, keyed by (provider, version, event type).

Layout (see schemas/providers/README.md): each registered provider's schema
directory (``ProviderSpec.schema_dir``: ``schemas/providers/<name>/``); versioned
providers keep one folder per version (``<name>/<version>/<type>.schema.json``),
unversioned providers keep their schemas in the provider folder. Validators are compiled once with
fastjsonschema (generated Python code, far faster than interpreting).
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from ..providers import PROVIDERS
from .errors import SCHEMA_VIOLATION, UNKNOWN_EVENT_TYPE, UNKNOWN_VERSION, Invalid


def _schemas_dir() -> Path:
    """The schema files: the package data ``hookstream.schemas`` (the repository's
    schemas/ folder, mapped by setup.py), unless HOOKSTREAM_SCHEMAS_DIR points
    elsewhere (a deployment trying other contracts, a test's copy)."""
    override = os.environ.get("HOOKSTREAM_SCHEMAS_DIR")
    if override:
        return Path(override)
    # A regular (unzipped) install: the package's folder is a real directory.
    return Path(str(importlib.resources.files("hookstream.schemas")))


SCHEMAS_DIR = _schemas_dir()

Validator = Callable[[Any], Any]
SUFFIX = ".schema.json"


class SchemaRegistry:
    def __init__(self, schemas_dir: Path = SCHEMAS_DIR) -> None:
        self._validators: dict[tuple[str, str | None, str], Validator] = {}
        self._versions: dict[str, set[str]] = {}
        for provider in sorted(PROVIDERS):
            root = PROVIDERS[provider].schema_dir(schemas_dir)
            for path in sorted(root.rglob(f"*{SUFFIX}")):
                relative = path.relative_to(root).parts
                version = relative[0] if len(relative) == 2 else None
                event_type = path.name.removesuffix(SUFFIX)
                schema = orjson.loads(path.read_bytes())
                self._validators[(provider, version, event_type)] = fastjsonschema.compile(
                    schema)
                if version is not None:
                    self._versions.setdefault(provider, set()).add(version)

    def versions(self, provider: str) -> set[str]:
        return set(self._versions.get(provider, set()))

    def kinds(self) -> list[tuple[str, str | None, str]]:
        return sorted(self._validators, key=lambda k: (k[0], k[1] or "", k[2]))

    def validate(self, provider: str, version: str | None, event_type: str, payload: Any) -> None:
        """Raise ``Invalid`` unless ``payload`` is a valid ``event_type`` of that version."""
        validator = self._validators.get((provider, version, event_type))
        if validator is None:
            if version is not None and version not in self._versions.get(provider, set()):
                raise Invalid(UNKNOWN_VERSION, f"{provider} version {version!r} not configured")
            raise Invalid(UNKNOWN_EVENT_TYPE, f"{provider} has no event type {event_type!r}")
        try:
            validator(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise Invalid(SCHEMA_VIOLATION, f"{event_type}: {exc.message}") from None
