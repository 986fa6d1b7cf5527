"""Fuzzing the normalizer's decode stage (decoder, schema validation, mapping) with
hypothesis, through the real code: ``Normalizer.decode_batch``, the per-record half
that the consume loop runs on every batch.

The property: every record comes out as exactly one of an event (whose JSON is a
valid canonical v1 envelope) or a dead letter with a reason from the closed set;
nothing raises out of the stage. The bounded default profile runs in the README's
test command; ``HYPOTHESIS_PROFILE=long python3 -m pytest tests/unit/*/test_fuzz_*.py``
runs thousands of examples (docs/security.md). Failures hypothesis found are kept
below as named ``@example`` regressions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from hookstream.core import errors
from hookstream.core.config import KafkaSettings, load
from hookstream.core.record import LocalRecord
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.samples import samples
from hookstream.normalizer.pipeline import DecodedBatch, Decoder, Normalizer

from ..core.test_canonical_schema import VALIDATOR
from .test_decoder import poison_body, record

PROVIDERS = ("saaya", "sarj", "sawt")
SAMPLES = [(s.provider, s.event, orjson.loads(s.body)) for s in samples()]
NORMALIZER = Normalizer(load(KafkaSettings), None, None, Decoder(SchemaRegistry()))  # type: ignore[arg-type]

# Every code point, lone surrogates and NUL included.
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
KEYS = st.one_of(ANY_TEXT, st.sampled_from(
    ["type", "version", "id", "call_id", "payload", "data", "message", "timestamp",
     "transcript", "status", "recording_url", "durationMs", "metadata"]))
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(),  # unbounded: beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False), ANY_TEXT)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(KEYS, children, max_size=5)),
    max_leaves=30)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested far beyond the cap (and past orjson's 255 when serialising)."""
    value = draw(SCALARS)
    for _ in range(draw(st.integers(1, 400))):
        value = [value] if draw(st.booleans()) else {draw(KEYS): value}
    return value


@st.composite
def many_keys(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(100, 5000))
    return {f"k{i}": i for i in range(n)}


VALUES = st.one_of(JSON, deep(), many_keys())


def encode(value: Any, how: str) -> bytes:
    """Bytes as a sender could put them on the wire: JSON with escaped surrogates, raw
    (invalid UTF-8) surrogates, or huge integers that orjson.dumps refuses."""
    if how == "ascii":
        return json.dumps(value, ensure_ascii=True).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated_sample(draw: st.DrawFn) -> tuple[str, str, Any]:
    """A real sample with one value replaced, or one key added, anywhere in it."""
    provider, event, payload = draw(st.sampled_from(SAMPLES))
    payload = json.loads(json.dumps(payload))  # a private copy
    node = payload
    while True:
        children = (list(node.items()) if isinstance(node, dict)
                    else list(enumerate(node)) if isinstance(node, list) else [])
        nested = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
        if not nested or draw(st.booleans()):
            break
        _, node = draw(st.sampled_from(nested))
    if isinstance(node, dict) and node and draw(st.booleans()):
        node[draw(st.sampled_from(sorted(node)))] = draw(VALUES)
    elif isinstance(node, dict):
        node[draw(KEYS)] = draw(VALUES)
    elif isinstance(node, list) and node:
        node[draw(st.integers(0, len(node) - 1))] = draw(VALUES)
    return provider, event, payload


def decode(records: Sequence[LocalRecord]) -> DecodedBatch:
    return asyncio.run(NORMALIZER.decode_batch(records))


def check_outcomes(records: Sequence[LocalRecord], batch: DecodedBatch) -> None:
    """Each record exactly once: an event with a valid canonical envelope, or a dead
    letter whose reason is in the closed set."""
    assert len(batch.events) + len(batch.dead) == len(records)
    for letter in batch.dead:
        assert letter.reason in errors.REASONS
        assert letter.detail
    for event in batch.events:
        VALIDATOR.validate(orjson.loads(batch.encoded[event.event_id]))


@given(provider=st.sampled_from(PROVIDERS), value=VALUES,
       how=st.sampled_from(["ascii", "utf8"]), routing_key=st.none() | ANY_TEXT)
@example(provider="sarj", value={"call_id": "x", "payload": {"type": "failed", "x": [[[[1]]]]}},
         how="ascii", routing_key=None).via("a shallow extra field is accepted")
@example(provider="sarj", value="\ud800", how="utf8", routing_key=None)
@example(provider="sarj", value=2**70, how="ascii", routing_key=None)
@example(provider="sawt", value={"call_id": "\x00"}, how="ascii", routing_key="call.ended")
def test_arbitrary_json_is_an_event_or_a_dead_letter(
        provider: str, value: Any, how: str, routing_key: str | None) -> None:
    body = encode(value, how)
    rk = routing_key.encode("utf-8", "replace").decode() if routing_key else None
    records = [record(provider, body, rk)]
    check_outcomes(records, decode(records))


@given(mutated=mutated_sample(), how=st.sampled_from(["ascii", "utf8"]))
def test_real_payloads_with_arbitrary_values_are_an_event_or_a_dead_letter(
        mutated: tuple[str, str, Any], how: str) -> None:
    provider, event, payload = mutated
    records = [record(provider, encode(payload, how), event if provider == "sawt" else None)]
    check_outcomes(records, decode(records))


@given(body=st.binary(max_size=300), provider=st.sampled_from([*PROVIDERS, "unknown"]))
def test_arbitrary_bytes_are_an_event_or_a_dead_letter(body: bytes, provider: str) -> None:
    records = [record(provider, body)]
    check_outcomes(records, decode(records))


def test_the_poison_delivery_dead_letters_alone_in_its_batch() -> None:
    """Issue 11's pill amid ordinary deliveries: it dead-letters too_deep, the others
    decode; before, serialising it raised out of the batch and stopped the consumer."""
    ordinary = [s for s in samples("sarj")][:3]
    records = [record("sarj", ordinary[0].body), record("sarj", poison_body()),
               *(record("sarj", s.body) for s in ordinary[1:])]
    batch = decode(records)
    check_outcomes(records, batch)
    assert [d.reason for d in batch.dead] == [errors.TOO_DEEP]
    assert len(batch.events) == 3


def test_an_event_that_cannot_be_serialised_is_an_internal_error() -> None:
    """With the depth cap raised past orjson's limit, the serialisation failure itself is
    caught per record: internal_error with the exception's type and message."""
    uncapped = Normalizer(load(KafkaSettings), None, None,  # type: ignore[arg-type]
                          Decoder(SchemaRegistry(), max_depth=2000))
    records = [record("sarj", poison_body())]
    batch = asyncio.run(uncapped.decode_batch(records))
    assert [(d.reason, d.detail) for d in batch.dead] == [
        (errors.INTERNAL_ERROR, "TypeError: Recursion limit reached")]
