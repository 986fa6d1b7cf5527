"""``hookstream dlq show`` prints what a hostile sender wrote (headers, detail, body):
no terminal control may reach the operator's terminal."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any

import pytest

from hookstream import cli
from hookstream.cli import dlq as cli_dlq
from hookstream.core import dlq

OSC_TITLE = "\x1b]0;pwned-title\x07"  # sets the terminal's title
CLEAR = "\x1b[2J\x1b[H"  # clears the screen
C1_CSI = "\x9b31m"  # the 8-bit CSI (U+009B)
RLO = "\u202e"  # right-to-left override: reorders what follows on screen
FAKE_LINE = "\n--- hookstream.dlq.v1/0/0  reason=fake"


@dataclasses.dataclass
class Record:
    headers: list[tuple[str, bytes]]
    value: bytes
    partition: int = 0
    offset: int = 7


def hostile() -> Record:
    return Record(
        headers=[
            ("hs-source", b"sawt-main"),
            ("hs-routing-key", f"{OSC_TITLE}call.ended{CLEAR}".encode()),
            ("content-type", f"application/json{C1_CSI}".encode()),
            ("x-\x1b[31mname", b"v"),
            (dlq.H_REASON, b"schema_violation"),
            (dlq.H_STAGE, b"normalizer"),
            (dlq.H_DETAIL, f"bad \x1b[31mred\x1b[0m{FAKE_LINE}\x08\x07\x00 {RLO}é مرحبا".encode()),
            (dlq.H_ORIGIN, b"hookstream.raw.v1/0/7"),
        ],
        value=f'{{"summary":"{CLEAR}hi\x1b[6n\x9b5n{OSC_TITLE}","note":"نص"}}'.encode(),
    )


def run_show(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             *records: Record) -> str:
    async def fake_records(kafka: Any, args: Any) -> list[Record]:
        return list(records)

    monkeypatch.setattr(cli_dlq, "_dlq_records", fake_records)
    assert cli.main(["dlq", "show"]) == 0
    return capsys.readouterr().out


def controls(text: str) -> list[str]:
    """Every character a terminal may act on (C0 but newline, DEL, C1, format controls)."""
    return [f"U+{ord(c):04X}" for c in text
            if c != "\n" and unicodedata.category(c) in {"Cc", "Cf"}]


def test_show_strips_terminal_controls(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = run_show(monkeypatch, capsys, hostile())
    assert controls(out) == []
    # Nothing of the escape sequences is left, not even escaped in the body's repr.
    for leftover in ("pwned-title", "[2J", "[31m", "[6n", "\\x1b", "\\x9b", "\\x07"):
        assert leftover not in out, leftover
    # One record: one header line, however many newlines the sender put in.
    assert len(re.findall(r"^---", out, re.M)) == 1
    # The printable text is all there.
    for kept in ("call.ended", "application/json", "red", "é مرحبا", "hi", "نص",
                 "reason=schema_violation", "sawt-main", "x-name=v"):
        assert kept in out, kept


def test_show_prints_ordinary_records_unchanged(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    record = Record(headers=[("hs-source", b"saaya-main"), (dlq.H_REASON, b"bad_json"),
                             (dlq.H_DETAIL, b"Expecting value: line 1 column 1 (char 0)")],
                    value=b'{"id": "evt_1",\n "type": "x"}')
    out = run_show(monkeypatch, capsys, record)
    assert "detail: Expecting value: line 1 column 1 (char 0)" in out
    assert "headers: hs-source=saaya-main" in out
    assert "body (29 bytes): '{\"id\": \"evt_1\",\\n \"type\": \"x\"}'" in out


def test_list_strips_terminal_controls(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    async def fake_records(kafka: Any, args: Any) -> list[Record]:
        return [Record(headers=[("hs-source", f"{CLEAR}sawt{OSC_TITLE}".encode()),
                                (dlq.H_REASON, b"bad_json\x1b[5m")], value=b"")]

    monkeypatch.setattr(cli_dlq, "_dlq_records", fake_records)
    assert cli.main(["dlq", "list"]) == 0
    out = capsys.readouterr().out
    assert controls(out) == []
    assert "sawt" in out and "bad_json" in out
