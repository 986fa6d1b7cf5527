"""Only http(s) URLs reach the CRM: a ``javascript:`` (or ``data:``, ...) URL passes the
schema's ``format: uri`` and would become a clickable link in the CRM's call notes."""

from __future__ import annotations

from typing import Any

import pytest

from hookstream.sinks.crm.adapters import call_properties, webhook_document
from hookstream.sinks.crm.mapping import activity, body_html, merge
from tests.fakes.crm import example

HOSTILE = [
    "javascript:alert(document.cookie)",
    "JavaScript:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "//evil.example/x",
    "http:///no-host",
    "https://exa mple.com/x",
]


def sarj_with(url: str) -> dict[str, Any]:
    event = example("call.ended")
    assert event["provider"] == "sarj" and event.get("recording_url")
    return {**event, "recording_url": url, "recording_location": url, "transcript_url": url}


@pytest.mark.parametrize("url", HOSTILE)
def test_a_non_http_url_never_reaches_the_crm(url: str) -> None:
    act = activity(sarj_with(url))
    assert not {"recording_url", "recording_location", "transcript_url"} & set(act.fields)
    record = merge(None, act)
    props = call_properties(record)
    assert "hs_call_recording_url" not in props
    assert "script:" not in props["hs_call_body"].lower()
    assert "<a " not in props["hs_call_body"]
    assert "script:" not in props["hookstream_details"].lower()
    call = webhook_document(act)["call"]
    assert "recording_url" not in call and "transcript_url" not in call


@pytest.mark.parametrize("url", HOSTILE)
def test_a_stored_record_with_a_non_http_url_is_not_rendered(url: str) -> None:
    """A record merged from details written before the check is rendered safely too."""
    record = {"provider": "sarj", "call_id": "c", "call_key": "sarj:c",
              "recording_location": url, "transcript_url": url}
    assert "<a " not in body_html(record)
    assert "hs_call_recording_url" not in call_properties(record)


def test_http_and_https_urls_are_kept() -> None:
    from hookstream.sinks.crm.mapping import web_url

    url = ("https://storage.googleapis.com/sarj-recordings-prod/org_1/c.wav"
           "?X-Goog-Expires=3600&X-Goog-Signature=ab")
    props = call_properties(merge(None, activity(sarj_with(url))))
    assert props["hs_call_recording_url"] == url  # (as an archived location)
    assert 'href="https://storage.googleapis.com/' in props["hs_call_body"]
    assert web_url("HTTP://example.com/a") == "HTTP://example.com/a"
    assert web_url("http://example.com") == "http://example.com"
    for bad in [*HOSTILE, None, 5, "", "https://"]:
        assert web_url(bad) is None, bad
