"""What a provider folder supplies: one :class:`ProviderSpec`.

A provider is one folder, ``providers/<name>/``, whose ``__init__.py`` defines
``SPEC``: how its deliveries authenticate (``auth.py``), how they map onto the
canonical envelope (``adapter.py``), and the hooks where the rest of hookstream
would otherwise branch on the provider's name (a sample's routing key, fresh ids
for a copied example, accepted versions, a call API, ...). The registry
(``providers/__init__.py``) finds every folder; nothing outside ``providers/``
names a provider. schemas/providers/README.md, "Adding a provider", walks through it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..core.config import ConfigError
from .adapter import Adapter

if TYPE_CHECKING:
    from ..devtools.samples import Sample

# Header lookup: Starlette's case-insensitive ``Headers``, or a dict with lower-cased
# names (verifiers look up lower-cased names).
HeaderMap = Mapping[str, str]
SecretLookup = Callable[[str], str]
# Where a copy of an example's linked media is served instead: (kind, id) -> URL, kind
# "recording" or "transcript", id the call's or session's (``ProviderSpec.point_media``).
MediaUrl = Callable[[str, str], str]
# An HTTP header name (RFC 9110 token): a configured name outside it could never match.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Verifier(Protocol):
    """Checks one delivery's provider-level authenticity, in constant time."""

    # False when verify() accepts everything (no provider-level secret): the
    # source must then rely on a path secret or an IP allow-list (sources.py).
    @property
    def authenticates(self) -> bool: ...

    def verify(self, headers: HeaderMap, body: bytes, now: float) -> bool: ...

    def sign(self, body: bytes, now: float, delivery_id: str) -> dict[str, str]:
        """Headers a genuine sender would add (used by ``hookstream send`` and tests)."""
        ...


class ApiFailed(Exception):
    """A provider API's permanent failure: asking again will not help."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class ApiUnavailable(Exception):
    """A provider API kept failing in a way that may pass (after its retries)."""


class RecordingUrls(Protocol):
    """A provider's way to a fresh recording URL when the one its webhook carried has
    expired (the recordings sink's only provider-specific step)."""

    provider: str

    def can_refresh(self, source: str) -> bool:
        """Whether a fresh URL can be asked for calls of ``source`` (API set, key known)."""
        ...

    async def fresh_recording_url(self, source: str, call_id: str) -> str | None:
        """The call's fresh recording URL, or None when the call has none. Raises
        :class:`ApiFailed` (permanent) or :class:`ApiUnavailable` (may pass)."""
        ...

    async def aclose(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class SenderRetries:
    """How the provider retries a delivery that was not answered 2xx (``hookstream
    faults`` replays it); ``documented`` False: the provider's document states none."""

    retries: int = 3
    delay_s: float = 2.0
    timeout_s: float = 10.0
    documented: bool = False


@dataclasses.dataclass(frozen=True)
class ProviderSettings:
    """A settings class of the provider's own (``core.config.env`` fields), the
    processes that read it, and the README reference section it appears under."""

    label: str  # e.g. "call API": the section is "<title> <label> (<used_by>)"
    cls: type[Any]
    used_by: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoadMix:
    """The provider's share of ``hookstream load`` traffic and one conversation of it:
    the samples one call or session delivers, picked from the provider's samples by
    event name (each list: the sample named after the event first)."""

    share: float
    conversation: Callable[[random.Random, Mapping[str, Sequence[Sample]]], list[Sample]]


def renew_call_ids(body: dict[str, Any], tag: str) -> None:
    """New identities for a copied example keyed by ``call_id`` (and a
    ``payload.call_data.call_id`` beside it): ``<id>_<tag>``."""
    if isinstance(body.get("call_id"), str):
        body["call_id"] = f"{body['call_id']}_{tag}"
        call_data = body.get("payload", {}).get("call_data") if isinstance(
            body.get("payload"), dict) else None
        if isinstance(call_data, dict) and isinstance(call_data.get("call_id"), str):
            call_data["call_id"] = body["call_id"]


def whole_body(body: dict[str, Any]) -> Any:
    return body


@dataclasses.dataclass(frozen=True)
class ProviderSpec:
    """Everything hookstream knows of one provider; built in ``providers/<name>/``."""

    name: str  # as in sources files, record headers and canonical events
    title: str  # as people write it (CRM titles, help texts)
    build_verifier: Callable[[str, Mapping[str, Any], SecretLookup], Verifier]
    # The delivery's natural id, used as the raw record's key when cheaply known.
    natural_key: Callable[[bytes], bytes | None]
    # Raw delivery -> canonical event (providers/adapter.py).
    adapter: Adapter
    default_routing_key_header: str | None = None
    default_event_id_header: str | None = None
    # The provider's own settings in a source's table, with their defaults (as
    # documented in docs/sources.md, whose table a test keeps equal to these).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The event name travels outside the body, as the delivery's routing key (header,
    # query parameter or path segment): samples are sent with theirs.
    event_in_routing_key: bool = False
    # New identities, in place, for a copy of an example body (``tag`` appended), so
    # that the normalizer takes it for a new event, not a redelivery.
    renew_ids: Callable[[dict[str, Any], str], None] = renew_call_ids
    # The object of a body holding the event's own figures (durations, sentiment).
    figures: Callable[[dict[str, Any]], Any] = whole_body
    load_mix: LoadMix | None = None
    sender_retries: SenderRetries = SenderRetries()
    settings: tuple[ProviderSettings, ...] = ()
    # The payload versions the normalizer accepts (read from the provider's settings);
    # None or empty: every version with schemas.
    accepted_versions: Callable[[], tuple[str, ...]] | None = None
    # The environment variable a source's table names for the provider's API key, or
    # None (raises ValueError for a malformed setting). Read by load_api_keys.
    api_key_var: Callable[[str, Mapping[str, Any]], str | None] | None = None
    # The recordings sink's fresh URLs, built from the environment (None: not set up).
    recording_urls: Callable[[], RecordingUrls | None] | None = None
    # Adds ``hookstream backfill <name>`` to the CLI: (subparsers, default sources
    # file, printable), printable making untrusted text safe for the terminal.
    add_backfill_command: Callable[
        [argparse._SubParsersAction[argparse.ArgumentParser], str, Callable[[str], str]],
        None] | None = None
    # Hosts the provider serves transcripts and recordings from (the sinks' defaults
    # and help texts).
    transcript_hosts: tuple[str, ...] = ()
    recording_hosts: tuple[str, ...] = ()
    # Points the recording or transcript URL a body carries (if any) at
    # ``media_url(kind, id)``, in place (``hookstream faults``: its media stand-in serves
    # what the fetching sinks download). None: the provider's bodies link no media.
    point_media: Callable[[dict[str, Any], MediaUrl], None] | None = None
    # Where its schemas and examples are; None: <schemas>/providers/<name>/.
    schemas_dir: Path | None = None

    def routing_key(self, event: str) -> str | None:
        """The routing key a sample of ``event`` is sent with (None: none)."""
        return event if self.event_in_routing_key else None

    def schema_dir(self, schemas_root: Path) -> Path:
        return self.schemas_dir if self.schemas_dir is not None else (
            schemas_root / "providers" / self.name)


# The shortest secret (HMAC key, shared secret, password) a source may use, in bytes
# of the key itself (a ``whsec_`` secret after base64-decoding). 16 bytes = 128 bits.
MIN_SECRET_BYTES = 16


def secrets_from(
    source: str,
    table: Mapping[str, Any],
    lookup: SecretLookup,
    key: str,
    decode: Callable[[bytes], bytes] | None = None,
) -> tuple[bytes, ...]:
    """Read ``<key>_env`` (one variable) or ``<key>s_env`` (a list, for rotation).

    Each value is turned into its key by ``decode`` (default: its bytes) and must
    then be at least ``MIN_SECRET_BYTES`` long, or the source is refused.
    """
    names: list[str] = []
    single = table.get(f"{key}_env")
    many = table.get(f"{key}s_env")
    if isinstance(single, str):
        names.append(single)
    if isinstance(many, list):
        names.extend(str(n) for n in many)
    values: list[bytes] = []
    for name in names:
        raw = lookup(name).encode()
        if not raw:
            raise ConfigError(f"source {source!r}: environment variable {name} ({key}_env) "
                              "is empty")
        try:
            value = decode(raw) if decode is not None else raw
        except ValueError as exc:
            raise ConfigError(f"source {source!r}: environment variable {name}: {exc}") from None
        if len(value) < MIN_SECRET_BYTES:
            decoded = " after base64-decoding" if value is not raw else ""
            raise ConfigError(
                f"source {source!r}: environment variable {name} ({key}_env) holds a "
                f"{len(value)}-byte secret{decoded}; it must be at least {MIN_SECRET_BYTES} "
                "bytes (use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        values.append(value)
    return tuple(values)


def any_digest_matches(candidates: list[bytes], expected: list[bytes]) -> bool:
    """Compare every candidate with every expected value, without early exit."""
    matched = False
    for candidate in candidates:
        for value in expected:
            matched |= hmac.compare_digest(candidate, value)
    return matched


def top_level_string(body: bytes, field: str) -> bytes | None:
    """One top-level string field of a JSON object body, or None if it is not one.

    Only used for the Kafka key; a malformed body simply gets no key and is left
    for the normalizer to dead-letter.
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        value = parsed.get(field)
        if isinstance(value, str) and value:
            return value.encode()
    return None
