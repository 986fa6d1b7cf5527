"""What a provider adapter does: name the event, key it for dedupe, map it.

The normalizer calls, for each raw delivery whose body parsed as a JSON object:

1. ``identify`` -> (provider event type, provider version or None, inferred?)
2. the schema registry validates the payload against that type and version
3. ``dedupe_key`` -> a string stable across redeliveries of the same event
4. ``to_canonical`` -> the CanonicalEvent (``event_id`` is derived from the key)

Any permanent problem raises ``hookstream.core.errors.Invalid`` with a reason.
"""

from __future__ import annotations

from typing import Any, Protocol

from ...core.events import CanonicalEvent
from ...core.record import RawDelivery


class Adapter(Protocol):
    provider: str
    # Every provider event type this adapter maps, to its canonical type.
    canonical_types: dict[str, str]

    def identify(self, raw: RawDelivery, payload: dict[str, Any]) -> tuple[str, str | None, bool]:
        ...

    def dedupe_key(self, event_type: str, payload: dict[str, Any]) -> str: ...

    def to_canonical(
        self,
        raw: RawDelivery,
        payload: dict[str, Any],
        event_type: str,
        version: str | None,
        inferred: bool,
        event_id: str,
    ) -> CanonicalEvent: ...
