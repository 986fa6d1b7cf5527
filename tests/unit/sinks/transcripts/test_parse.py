"""What counts as a transcript, and the canonical turns read from the shapes we know."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from hookstream.sinks.egress import FetchFailed
from hookstream.sinks.transcripts.parse import NOT_A_TRANSCRIPT, parse, turns

TURNS = [{"role": "agent", "text": "Hello, how can I help?"},
         {"role": "customer", "text": "I'd like to move my appointment."}]


@pytest.mark.parametrize("document", [
    TURNS,
    {"turns": TURNS},
    {"sessionId": "ses_1", "messages": [{"role": "assistant", "content": TURNS[0]["text"]},
                                        {"role": "user", "content": TURNS[1]["text"]}]},
    {"transcript": {"messages": [{"speaker": "AGENT", "text": TURNS[0]["text"]},
                                 {"speaker": "Customer", "text": TURNS[1]["text"]}]}},
    {"data": {"transcript": {"utterances": [{"participant": "bot", "message": TURNS[0]["text"]},
                                            {"participant": "caller",
                                             "utterance": TURNS[1]["text"]}]}}},
])
def test_the_common_shapes_give_canonical_turns(document: object) -> None:
    body = orjson.dumps(document)
    transcript = parse(body)
    assert transcript.turns == TURNS
    assert orjson.loads(transcript.document) == document  # stored whole, as fetched
    assert transcript.sha256 == hashlib.sha256(body).hexdigest()


def test_an_unknown_role_is_passed_on_lower_cased() -> None:
    assert turns([{"role": "Supervisor", "text": "joining"}]) == [
        {"role": "supervisor", "text": "joining"}]


def test_an_empty_transcript_has_no_turns_but_is_one() -> None:
    assert parse(b'{"turns": []}').turns == []


@pytest.mark.parametrize("document", [
    {"sessionId": "ses_1", "text": "Agent: hi. Customer: hello."},  # plain text inside
    {"transcript": "Agent: hi"},
    {"turns": [{"role": "agent", "text": "hi"}, {"role": "customer"}]},  # a turn lacks text
    {"turns": [{"role": "agent", "text": "hi"}, "hello"]},  # an item is no object
    [1, 2, 3],
])
def test_other_shapes_are_stored_without_turns(document: object) -> None:
    """The format is open: an unforeseen shape keeps its document, never a partial list."""
    transcript = parse(orjson.dumps(document))
    assert transcript.turns is None
    assert orjson.loads(transcript.document) == document


@pytest.mark.parametrize(("body", "why"), [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"<html><body>Sign in</body></html>", "not JSON"),
    (b"Agent: hello\nCustomer: hi", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    (b'"a string"', "str"),
    (b"42", "int"),
    (b"null", "NoneType"),
    (b"true", "bool"),
    (b"[" * 300 + b"]" * 300, "not storable"),
])
def test_a_body_that_is_not_a_transcript_is_refused(body: bytes, why: str) -> None:
    with pytest.raises(FetchFailed) as caught:
        parse(body)
    assert caught.value.reason == NOT_A_TRANSCRIPT and why in caught.value.detail


def test_nul_is_dropped_from_the_stored_document() -> None:
    """PostgreSQL refuses NUL in jsonb: one transcript must not fail its batch forever."""
    transcript = parse(orjson.dumps({"turns": [{"role": "agent", "text": "a\x00b"}]}))
    assert "\\u0000" not in transcript.document
    assert transcript.turns == [{"role": "agent", "text": "ab"}]
