"""The provider registry: every provider folder's ``SPEC``, by provider name.

A provider is one folder here, ``providers/<name>/``, whose ``__init__.py`` defines
``SPEC`` (a :class:`ProviderSpec`). The folders are found at import, so adding a
provider adds a folder and changes nothing else in ``services/``: ingest, the
normalizer, the sinks, the CLI and the tools reach providers only through
:data:`PROVIDERS` and the spec's hooks. schemas/providers/README.md, "Adding a
provider", walks through it.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator

from .base import ProviderSettings, ProviderSpec

PROVIDERS: dict[str, ProviderSpec] = {}


def register(spec: ProviderSpec) -> ProviderSpec:
    """Add ``spec`` to the registry (the folders at import; a test's own at test time)."""
    if spec.name in PROVIDERS and PROVIDERS[spec.name] is not spec:
        raise ValueError(f"provider {spec.name!r} is registered already")
    PROVIDERS[spec.name] = spec
    return spec


@contextlib.contextmanager
def registered(spec: ProviderSpec) -> Iterator[ProviderSpec]:
    """``spec`` in the registry for the block (tests)."""
    register(spec)
    try:
        yield spec
    finally:
        PROVIDERS.pop(spec.name, None)


def _discover() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.ispkg:
            register(importlib.import_module(f"{__name__}.{module.name}").SPEC)


def title(name: str) -> str:
    """The provider's name as people write it (the name itself when unknown)."""
    spec = PROVIDERS.get(name)
    return spec.title if spec is not None else name


def settings_of(process: str) -> tuple[type, ...]:
    """The providers' settings classes ``process`` reads (its --help, its validation)."""
    return tuple(s.cls for spec in PROVIDERS.values() for s in spec.settings
                 if process in s.used_by)


def accepted_versions() -> dict[str, tuple[str, ...]]:
    """Per provider with versioned payloads, the versions configured (empty: all)."""
    return {name: spec.accepted_versions() for name, spec in PROVIDERS.items()
            if spec.accepted_versions is not None}


def transcript_hosts() -> tuple[str, ...]:
    """Every host a provider serves transcripts from (the transcripts sink's default)."""
    return tuple(h for _, spec in sorted(PROVIDERS.items()) for h in spec.transcript_hosts)


def recording_hosts_note() -> str:
    """Where each provider's recordings are, e.g. ``Title: host`` (help texts)."""
    return "; ".join(f"{spec.title}: {', '.join(spec.recording_hosts)}"
                     for _, spec in sorted(PROVIDERS.items()) if spec.recording_hosts)


_discover()

__all__ = [
    "PROVIDERS",
    "ProviderSettings",
    "ProviderSpec",
    "accepted_versions",
    "recording_hosts_note",
    "register",
    "registered",
    "settings_of",
    "title",
    "transcript_hosts",
]
