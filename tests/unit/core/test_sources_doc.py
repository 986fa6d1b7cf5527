"""docs/sources.md has one table of every per-source setting with its default, and it
stays equal to what the code reads: a setting added to the code without a row (or a
row for a setting that no longer exists) fails here."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from hookstream.core.sources import COMMON_KEYS, known_keys
from hookstream.providers import PROVIDERS
from tests.support import source

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "sources.md"
CODE = [REPO / "services" / "core" / "sources.py",
        *sorted((REPO / "services" / "core" / "providers").glob("*.py"))]
HEADER = "| key | provider | default | meaning |"


def settings_table() -> dict[str, tuple[str, str]]:
    """key -> (provider column, default column) of the one settings table."""
    lines = DOC.read_text().splitlines()
    assert lines.count(HEADER) == 1, f"docs/sources.md must have exactly one {HEADER!r} table"
    start = lines.index(HEADER) + 2
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        key_cell, provider, default = (c.strip() for c in line.strip("|").split(" | ")[:3])
        for key in re.findall(r"`([a-z_]+)`", key_cell):
            rows[f"{provider.split(',')[0].split(' ')[0]}:{key}"] = (provider, default)
    return rows


def read_by_code() -> set[str]:
    """Every key the sources code and the provider modules read from a source table."""
    found: set[str] = set()
    for path in CODE:
        text = path.read_text()
        found |= set(re.findall(r'table\.get\(\s*"([a-z_]+)"', text))
        found |= set(re.findall(r'table\[\s*"([a-z_]+)"\s*\]', text))
        found |= set(re.findall(r'"([a-z_]+)" in table', text))
        for stem in re.findall(r'secrets_from\([^)]*?"([a-z_]+)"', text):
            found |= {f"{stem}_env", f"{stem}s_env"}
    return found


def test_one_table_lists_every_setting_of_every_provider() -> None:
    rows = settings_table()
    documented = {key.split(":", 1)[1] for key in rows}
    assert documented == known_keys()
    for key in COMMON_KEYS:
        assert f"any:{key}" in rows, f"{key} is accepted by every source: provider 'any'"
    for name, spec in PROVIDERS.items():
        for key in spec.options:
            assert f"{name}:{key}" in rows, f"{key} belongs to {name}"


def test_every_row_names_a_default() -> None:
    for key, (_, default) in settings_table().items():
        assert default, f"{key}: no default"


def test_documented_defaults_of_the_common_settings() -> None:
    rows = settings_table()
    assert rows["any:max_body_bytes"][1] == "`1048576`" == f"`{COMMON_KEYS['max_body_bytes']}`"
    assert rows["any:routing_key_from"][1] == "`header`" == f"`{COMMON_KEYS['routing_key_from']}`"
    assert rows["any:routing_key_param"][1] == f"`{COMMON_KEYS['routing_key_param']}`"
    assert rows["saaya:preset"][1] == f"`{PROVIDERS['saaya'].options['preset']}`"
    assert rows["saaya:timestamp_tolerance_s"][1] == "`300`"
    assert rows["sawt:auth"][1] == "`header`" and rows["sawt:auth_header"][1] == (
        "`X-Webhook-Secret`")


def test_every_key_the_code_reads_is_declared() -> None:
    assert read_by_code() <= known_keys(), read_by_code() - known_keys()


def test_an_unknown_setting_is_logged_not_ignored_silently(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hookstream.core.sources"):
        source("s", provider="saaya", secret_env="SAAYA_A", signature_encodng="hex")
    assert "source 's': unknown settings ['signature_encodng'] are ignored" in caplog.text
    caplog.clear()
    # Another provider's setting (from [defaults], say) is not flagged.
    with caplog.at_level(logging.WARNING, logger="hookstream.core.sources"):
        source("s", provider="sawt", secret_env="SAWT_SECRET", signature_encoding="hex")
    assert caplog.text == ""
