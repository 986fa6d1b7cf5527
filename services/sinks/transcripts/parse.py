"""What a fetched transcript is, and the canonical turns read from it.

A provider's document may link a transcript (canonical ``transcript_url``, on its
API host) but never show one. So hookstream decides (docs/providers.md, docs/sinks-transcripts.md):

* a transcript is a JSON object or array; anything else (an HTML error page, plain
  text, a JSON scalar or ``null``, an empty or undecodable body) is
  ``not_a_transcript`` and dead-lettered;
* the document is stored whole, as fetched (JSONB), whatever its shape: a shape we
  did not foresee must not lose the transcript;
* canonical turns (``[{role, text}]``, the shape of ``transcript`` in the canonical
  event) are read from it when its shape is one of the common ones: a list of turns,
  or an object holding one under ``turns`` / ``messages`` / ``transcript`` /
  ``utterances`` / ``entries`` / ``segments`` (also nested: ``{"data": {"transcript":
  {"messages": [...]}}}``), each turn an object with a role (``role`` / ``speaker`` /
  ``participant`` / ``from``) and a text (``text`` / ``content`` / ``message`` /
  ``utterance``). A list with any other item gives no turns (never a partial
  transcript); the document is still stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson

from ...core.errors import sink_reasons
from ..egress import FetchFailed
from ..warehouse.schema import nul_free_json

# The transcripts sink's dead-letter reasons (beyond every sink's), on its own topic
# hookstream.sink.transcripts.dlq.v1 (docs/sinks-transcripts.md). url_rejected: not
# http(s), a host not allowed, or one resolving to a non-public address; unavailable:
# a 4xx other than 408/425/429; too_large: past HOOKSTREAM_TRANSCRIPTS_MAX_BYTES;
# not_a_transcript: the body is not a JSON object or array.
TRANSCRIPT_REASONS = sink_reasons(
    "transcripts", "transcript_url_rejected", "transcript_unavailable",
    "transcript_too_large", "not_a_transcript")
(TRANSCRIPT_URL_REJECTED, TRANSCRIPT_UNAVAILABLE, TRANSCRIPT_TOO_LARGE,
 NOT_A_TRANSCRIPT) = TRANSCRIPT_REASONS

TURN_LISTS = ("turns", "messages", "transcript", "utterances", "entries", "segments")
ROLE_KEYS = ("role", "speaker", "participant", "from")
TEXT_KEYS = ("text", "content", "message", "utterance")
# The canonical roles (docs/canonical.md: agent / customer); any other role is passed
# on lower-cased, as the adapters do.
ROLES = {"agent": "agent", "assistant": "agent", "bot": "agent", "ai": "agent",
         "user": "customer", "customer": "customer", "caller": "customer",
         "human": "customer", "contact": "customer"}


@dataclasses.dataclass(frozen=True)
class Transcript:
    document: str  # the body as JSON text, NUL-free (PostgreSQL refuses NUL in jsonb)
    turns: list[dict[str, str]] | None  # canonical turns, None if the shape is unknown
    sha256: str  # of the fetched bytes



def _first_str(turn: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = turn.get(key)
        if isinstance(value, str):
            return value
    return None


def _turn_list(document: Any, depth: int = 3) -> list[Any] | None:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict) or depth < 0:
        return None
    for key in (*TURN_LISTS, "data"):
        found = _turn_list(document.get(key), depth - 1) if key in document else None
        if found is not None:
            return found
    return None


def turns(document: Any) -> list[dict[str, str]] | None:
    """The canonical turns of ``document``, or None when its shape is not recognised."""
    items = _turn_list(document)
    if items is None:
        return None
    found: list[dict[str, str]] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        role, text = _first_str(item, ROLE_KEYS), _first_str(item, TEXT_KEYS)
        if role is None or text is None:
            return None
        role = role.strip().lower()
        found.append({"role": ROLES.get(role, role), "text": text})
    return found


def parse(body: bytes) -> Transcript:
    """The transcript in ``body``; raises FetchFailed(``not_a_transcript``) if it is none."""
    if not body.strip():
        raise FetchFailed(NOT_A_TRANSCRIPT, "empty body")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        start = body[:40].decode("utf-8", "replace")
        raise FetchFailed(NOT_A_TRANSCRIPT, f"not JSON ({exc}); body starts {start!r}"
                          ) from None
    if not isinstance(document, dict | list):
        raise FetchFailed(NOT_A_TRANSCRIPT,
                          f"a JSON {type(document).__name__}, not an object or array")
    cleaned = nul_free_json(document)
    try:
        text = orjson.dumps(cleaned).decode()
    except orjson.JSONEncodeError as exc:  # nested deeper than 255, or an int past 64 bits
        raise FetchFailed(NOT_A_TRANSCRIPT, f"not storable as JSON: {exc}") from None
    return Transcript(text, turns(cleaned), hashlib.sha256(body).hexdigest())
