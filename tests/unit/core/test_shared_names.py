"""What exists once: header names (core/headers.py), the ISO time parser
(core/times.py) and the registry of dead-letter reasons (core/errors.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import re

import pytest

from hookstream.core import errors, headers, times
from tests.support import REPO


def test_every_hs_header_name_is_spelled_in_the_headers_module_alone() -> None:
    literal = re.compile(r"""["']hs-[a-z-]+["']""")
    found = [f"{path.relative_to(REPO)}:{n}"
             for path in (REPO / "services").rglob("*.py") if path.name != "headers.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if literal.search(line)]
    assert found == []
    names = [v for k, v in vars(headers).items() if k.startswith("H_")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("text", "ms"), [
    ("2025-05-01T10:05:15.000Z", 1746093915000),
    ("2025-05-01T13:05:15.250+03:00", 1746093915250),
    ("2025-05-01T10:05:15", 1746093915000),  # no zone: UTC
    ("2025-05-01T10:05:15.941Z", 1746093915941),  # exact, no float rounding
    ("9999-12-31T23:00:00-05:00", 253402315200000),  # past UTC's range, still a number
])
def test_iso_to_ms(text: str, ms: int) -> None:
    assert times.iso_to_ms(text) == ms
    assert times.parse_time(text) == ms


@pytest.mark.parametrize("value", ["yesterday", "", None, 17, "2025-13-01T00:00:00Z"])
def test_what_is_not_a_time_is_none(value: object) -> None:
    assert times.parse_iso(value) is None and times.iso_to_ms(value) is None
    assert times.parse_utc(value) is None


def test_parse_utc_refuses_a_time_with_no_utc_equivalent() -> None:
    assert times.parse_utc("9999-12-31T23:00:00-05:00") is None
    assert times.parse_utc("2025-05-01T13:05:15+03:00") == dt.datetime(
        2025, 5, 1, 10, 5, 15, tzinfo=dt.UTC)


def test_parse_time_refuses_what_is_not_a_time() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        times.parse_time("yesterday")


def test_every_sink_registers_its_dead_letter_reasons() -> None:
    for module in ("warehouse.sink", "alerts.sink", "crm.sink", "recordings.fetch",
                   "transcripts.parse"):
        importlib.import_module(f"hookstream.sinks.{module}")
    stages = errors.registered()
    assert stages["normalizer"] == errors.REASONS
    for sink, own in [("warehouse", {"rejected_by_database", "unstorable_event"}),
                      ("alerts", {"alert_rejected"}),
                      ("crm", {"crm_rejected", "crm_unmappable", "crm_error"}),
                      ("recordings", {"recording_unavailable", "recording_too_large",
                                      "recording_url_rejected"}),
                      ("transcripts", {"transcript_url_rejected", "transcript_unavailable",
                                       "transcript_too_large", "not_a_transcript"})]:
        reasons = errors.reasons_of(errors.sink_stage(sink))
        assert set(reasons) == set(errors.SINK_REASONS) | own
    assert errors.reasons_of("sink:none-of-ours") == errors.SINK_REASONS


def test_a_sink_cannot_take_a_reason_of_the_normalizer_or_of_every_sink() -> None:
    with pytest.raises(ValueError):
        errors.sink_reasons("x", errors.MALFORMED_JSON)
    with pytest.raises(ValueError):
        errors.sink_reasons("x", errors.RETRIES_EXHAUSTED)
    with pytest.raises(ValueError):
        errors.sink_reasons("x", "Not A Reason")


def test_the_warehouse_is_shared_through_its_public_module_alone() -> None:
    """Nothing but the warehouse sink reaches into its internals (store.py, sink.py):
    the other sinks, the CLI and the load generator use sinks/warehouse/schema.py."""
    internals = re.compile(r"warehouse(\.|\s+import\s+)(store|sink)\b|WarehouseStore")
    found = [f"{path.relative_to(REPO)}:{n}"
             for path in (REPO / "services").rglob("*.py")
             if "warehouse" not in path.relative_to(REPO / "services").parts
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if line.lstrip().startswith(("from ", "import ")) and internals.search(line)]
    assert found == []
