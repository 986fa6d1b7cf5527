"""Saaya: HMAC-SHA256 with the source's secret, in whichever form the source says.

Saaya's document promises "HMAC-SHA256 signing" and nothing more: not the
header, not what is signed, not the encoding. So every part is a per-source
setting, and two presets (``preset``) fill them all in at once:

* ``standard-webhooks`` (default): the Standard Webhooks headers
  ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64>``
  over ``id.timestamp.body``, with a timestamp tolerance (replay protection).
* ``hex``: ``X-Signature: sha256=<hex>`` over the body alone (the ``sha256=``
  prefix may be left out by the sender).

Each part can then be overridden on its own (``SIGNATURE_KEYS``): the header
(``signature_header``), the encoding (``signature_encoding``: hex or base64),
the prefix before each signature (``signature_prefix``, and whether a
signature without it is refused: ``signature_prefix_required``), the string
signed (``signed_string``: ``body``, ``timestamp.body`` or ``id.timestamp.body``),
the headers the id and timestamp come from (``id_header``,
``timestamp_header``), and ``signature_form = "combined"`` for a single
``<header>: t=<timestamp>,v1=<signature>`` header. ``signature_scheme`` is the
older name of ``preset`` and still accepted.

Several secrets may be active at once (``secrets_env = [...]``) for rotation.
A ``whsec_``-prefixed secret is base64-decoded, as Standard Webhooks defines.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from ...core.config import ConfigError
from ..base import (
    HEADER_NAME,
    HeaderMap,
    SecretLookup,
    any_digest_matches,
    secrets_from,
    top_level_string,
)
from ..bounds import (
    MAX_ID_CHARS,
    MAX_SIGNATURES_CHARS,
    MAX_TIMESTAMP_DIGITS,
    bounded,
)

DEFAULT_TOLERANCE_S = 300
DEFAULT_HEX_HEADER = "X-Signature"  # the hex preset's header

ENCODINGS = ("hex", "base64")
SIGNED_STRINGS = ("body", "timestamp.body", "id.timestamp.body")
FORMS = ("value", "combined")
# The combined form's keys: Stripe's ``t=<timestamp>,v1=<signature>`` layout, the one
# form of that kind in wide use; fixed rather than configurable until a sender differs.
COMBINED_TIMESTAMP_KEY = "t"
COMBINED_SIGNATURE_KEY = "v1"
MAX_PREFIX_CHARS = 32

# Every part of the signature a source may set, and what each preset sets it to.
SIGNATURE_KEYS = ("signature_header", "signature_encoding", "signature_prefix",
                  "signature_prefix_required", "signed_string", "signature_form",
                  "id_header", "timestamp_header")
PRESETS: dict[str, dict[str, Any]] = {
    "standard-webhooks": {
        "signature_header": "webhook-signature",
        "signature_encoding": "base64",
        "signature_prefix": "v1,",
        # A signature of another version ("v2,...") is not ours to check: ignored.
        "signature_prefix_required": True,
        "signed_string": "id.timestamp.body",
        "signature_form": "value",
        "id_header": "webhook-id",
        "timestamp_header": "webhook-timestamp",
    },
    "hex": {
        "signature_header": DEFAULT_HEX_HEADER,
        "signature_encoding": "hex",
        "signature_prefix": "sha256=",
        # Senders of plain hex differ on the prefix; it carries no secret, so both pass.
        "signature_prefix_required": False,
        "signed_string": "body",
        "signature_form": "value",
        "id_header": "webhook-id",
        "timestamp_header": "webhook-timestamp",
    },
}
DEFAULT_PRESET = "standard-webhooks"
SCHEMES = tuple(PRESETS)  # the older name, kept for callers of the first version


def _key(secret: bytes) -> bytes:
    if secret.startswith(b"whsec_"):
        try:
            return base64.b64decode(secret[6:], validate=True)
        except binascii.Error:
            raise ConfigError("a whsec_ secret is not valid base64") from None
    return secret


def _decode(text: str, encoding: str) -> bytes | None:
    """A signature's digest bytes, or None if it is not valid in ``encoding``.

    Compared as bytes, not text, so upper- and lower-case hex are the same signature.
    """
    try:
        if encoding == "hex":
            return binascii.a2b_hex(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _encode(digest: bytes, encoding: str) -> str:
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


@dataclasses.dataclass(frozen=True)
class SaayaVerifier:
    keys: tuple[bytes, ...]
    preset: str = DEFAULT_PRESET  # what the options below started from (then overridden)
    signature_header: str = "webhook-signature"
    encoding: str = "base64"
    prefix: str = "v1,"
    prefix_required: bool = True
    signed_string: str = "id.timestamp.body"
    form: str = "value"
    id_header: str = "webhook-id"
    timestamp_header: str = "webhook-timestamp"
    tolerance_s: int = DEFAULT_TOLERANCE_S
    authenticates: bool = True

    @property
    def scheme(self) -> str:
        """The older name of ``preset``."""
        return self.preset

    @property
    def signs_timestamp(self) -> bool:
        return "timestamp" in self.signed_string

    @property
    def signs_id(self) -> bool:
        return self.signed_string.startswith("id.")

    def verify(self, headers: HeaderMap, body: bytes, now: float) -> bool:
        # Every value is bounded before any arithmetic or decoding: a 309-digit
        # timestamp once overflowed float (500).
        value = bounded(headers.get(self.signature_header.lower()), MAX_SIGNATURES_CHARS)
        if value is None:
            return False
        if self.form == "combined":
            parsed = self._combined(value)
            if parsed is None:
                return False
            timestamp, given = parsed
        else:
            timestamp = bounded(headers.get(self.timestamp_header.lower()), MAX_TIMESTAMP_DIGITS)
            given = self._listed(value)
        if not given:
            return False
        signed_prefix = b""
        if self.signs_timestamp:
            # ASCII digits only (int() would take " 1_0"); a timestamp outside the
            # tolerance is refused before any HMAC is computed.
            if timestamp is None or not timestamp.isdigit():
                return False
            if abs(now - int(timestamp)) > self.tolerance_s:
                return False
            signed_prefix = timestamp.encode() + b"."
        if self.signs_id:
            msg_id = bounded(headers.get(self.id_header.lower()), MAX_ID_CHARS)
            if msg_id is None:
                return False
            signed_prefix = msg_id.encode() + b"." + signed_prefix
        signed = signed_prefix + body
        expected = [hmac.new(k, signed, hashlib.sha256).digest() for k in self.keys]
        return any_digest_matches(given, expected)

    def _listed(self, value: str) -> list[bytes]:
        """The signatures of a plain header value: space-separated, each with the prefix
        (Standard Webhooks sends several during a rotation)."""
        found: list[bytes] = []
        for part in value.strip().split(" "):
            if part.startswith(self.prefix):
                part = part[len(self.prefix):]
            elif self.prefix_required:
                continue
            digest = _decode(part, self.encoding)
            if digest is not None:
                found.append(digest)
        return found

    def _combined(self, value: str) -> tuple[str | None, list[bytes]] | None:
        """``t=<timestamp>,v1=<sig>[,v1=<sig>...]``: (timestamp, signatures), or None when
        the timestamp is repeated (which one was signed would be a guess)."""
        timestamp: str | None = None
        found: list[bytes] = []
        for item in value.split(","):
            name, sep, text = item.strip().partition("=")
            if not sep:
                continue
            if name == COMBINED_TIMESTAMP_KEY:
                if timestamp is not None:
                    return None
                timestamp = text
            elif name == COMBINED_SIGNATURE_KEY:
                digest = _decode(text, self.encoding)
                if digest is not None:
                    found.append(digest)
        if timestamp is not None and len(timestamp) > MAX_TIMESTAMP_DIGITS:
            timestamp = None
        return timestamp, found

    def sign(self, body: bytes, now: float, delivery_id: str) -> dict[str, str]:
        """The headers a sender in this source's form writes, signed with the first key."""
        timestamp = str(int(now))
        signed = body
        if self.signs_timestamp:
            signed = f"{timestamp}.".encode() + signed
        if self.signs_id:
            signed = f"{delivery_id}.".encode() + signed
        signature = _encode(hmac.new(self.keys[0], signed, hashlib.sha256).digest(),
                            self.encoding)
        headers: dict[str, str] = {}
        if self.signs_id:
            headers[self.id_header] = delivery_id
        if self.form == "combined":
            headers[self.signature_header] = (
                f"{COMBINED_TIMESTAMP_KEY}={timestamp},{COMBINED_SIGNATURE_KEY}={signature}")
        else:
            if self.signs_timestamp:
                headers[self.timestamp_header] = timestamp
            headers[self.signature_header] = f"{self.prefix}{signature}"
        return headers


def signature_options(source: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """The source's signature settings: its preset's, overridden key by key; every
    value checked, so a typo stops start-up instead of refusing every delivery."""
    preset = table.get("preset")
    scheme = table.get("signature_scheme")
    if preset is not None and scheme is not None and preset != scheme:
        raise ConfigError(f"source {source!r}: preset {preset!r} and signature_scheme "
                          f"{scheme!r} disagree (signature_scheme is the older name of "
                          "preset: set only preset)")
    name = preset if preset is not None else scheme if scheme is not None else DEFAULT_PRESET
    if name not in PRESETS:
        key = "preset" if preset is not None else "signature_scheme"
        raise ConfigError(f"source {source!r}: {key} must be one of {sorted(PRESETS)}, "
                          f"got {name!r}")
    explicit = {k: table[k] for k in SIGNATURE_KEYS if k in table}
    options = {**PRESETS[name], **explicit, "preset": name}

    for key in ("signature_header", "id_header", "timestamp_header"):
        value = options[key]
        if not isinstance(value, str) or not HEADER_NAME.fullmatch(value):
            raise ConfigError(f"source {source!r}: {key} must be an HTTP header name "
                              f"(letters, digits, '-' ...), got {value!r}")
    for key, allowed in (("signature_encoding", ENCODINGS), ("signed_string", SIGNED_STRINGS),
                         ("signature_form", FORMS)):
        if options[key] not in allowed:
            raise ConfigError(f"source {source!r}: {key} must be one of {list(allowed)}, "
                              f"got {options[key]!r}")
    prefix = options["signature_prefix"]
    if (not isinstance(prefix, str) or len(prefix) > MAX_PREFIX_CHARS
            or not (prefix.isascii() and prefix.isprintable()) or " " in prefix):
        raise ConfigError(f"source {source!r}: signature_prefix must be at most "
                          f"{MAX_PREFIX_CHARS} printable ASCII characters without spaces "
                          f"(e.g. \"sha256=\", \"v1,\" or \"\"), got {prefix!r}")
    if not isinstance(options["signature_prefix_required"], bool):
        raise ConfigError(f"source {source!r}: signature_prefix_required must be true or false")
    if options["signature_form"] == "combined":
        # The combined form names its parts itself (t=, v1=): a prefix or a timestamp
        # header set for it would be silently unused, so it is refused.
        for key in ("signature_prefix", "signature_prefix_required", "timestamp_header"):
            if key in explicit:
                raise ConfigError(
                    f"source {source!r}: {key} does not apply with signature_form = "
                    f"\"combined\" (the header is {COMBINED_TIMESTAMP_KEY}=<timestamp>,"
                    f"{COMBINED_SIGNATURE_KEY}=<signature>)")
    return options


def build_verifier(source: str, table: Mapping[str, Any], lookup: SecretLookup) -> SaayaVerifier:
    options = signature_options(source, table)
    try:
        tolerance = int(table.get("timestamp_tolerance_s", DEFAULT_TOLERANCE_S))
    except (TypeError, ValueError):
        raise ConfigError(f"source {source!r}: timestamp_tolerance_s must be a number of "
                          "seconds") from None
    # The length rule applies to the HMAC key: a whsec_ secret after decoding.
    keys = secrets_from(source, table, lookup, "secret", decode=_key)
    if not keys:
        raise ConfigError(f"source {source!r}: saaya needs secret_env or secrets_env")
    return SaayaVerifier(
        keys=keys,
        preset=options["preset"],
        signature_header=options["signature_header"],
        encoding=options["signature_encoding"],
        prefix=options["signature_prefix"],
        prefix_required=options["signature_prefix_required"],
        signed_string=options["signed_string"],
        form=options["signature_form"],
        id_header=options["id_header"],
        timestamp_header=options["timestamp_header"],
        tolerance_s=tolerance,
    )


def natural_key(body: bytes) -> bytes | None:
    return top_level_string(body, "id")


OPTIONS: dict[str, Any] = {
    "secret_env": None,  # required, or secrets_env
    "secrets_env": None,
    "preset": DEFAULT_PRESET,
    "signature_scheme": None,  # the older name of preset
    **{key: "<preset>" for key in SIGNATURE_KEYS},
    "timestamp_tolerance_s": DEFAULT_TOLERANCE_S,
}
