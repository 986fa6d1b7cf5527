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

from ..core.errors import MAPPING_FAILED, Invalid
from ..core.events import CanonicalEvent, iso_ms
from ..core.record import RawDelivery


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


# Small readers of untrusted payload values, shared by every adapter: a value of
# the wrong type reads as absent rather than failing the mapping.
def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def lower_or_none(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


def num_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def obj_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class MappingAdapter:
    """``to_canonical`` for adapters that implement ``_fields``: looks up the canonical
    type, fills the envelope fields every provider shares (ids, source, types,
    receive time, the payload whole, version), and turns any shape surprise in the
    payload into ``Invalid(MAPPING_FAILED)``. ``_fields`` returns the rest: the
    provider's typed fields, ``occurred_at`` always included."""

    provider: str
    canonical_types: dict[str, str]

    def to_canonical(
        self,
        raw: RawDelivery,
        payload: dict[str, Any],
        event_type: str,
        version: str | None,
        inferred: bool,
        event_id: str,
    ) -> CanonicalEvent:
        canonical = self.canonical_types.get(event_type)
        if canonical is None:
            raise Invalid(MAPPING_FAILED, f"{self.provider}: no canonical type for {event_type!r}")
        try:
            return CanonicalEvent(
                event_id=event_id,
                provider=self.provider,
                source=raw.source,
                type=canonical,
                provider_type=event_type,
                received_at=iso_ms(raw.received_at_ms),
                data=payload,
                provider_version=version,
                type_inferred=inferred,
                request_id=raw.request_id,
                **self._fields(payload, event_type),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Invalid(MAPPING_FAILED, f"{self.provider} {event_type}: {exc!r}") from None

    def _fields(self, payload: dict[str, Any], event_type: str) -> dict[str, Any]:
        raise NotImplementedError
