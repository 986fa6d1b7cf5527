"""ISO 8601 times: the one parser of the times events carry, and the command-line
tools' time arguments."""

from __future__ import annotations

import argparse
import datetime as dt

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def parse_iso(value: object) -> dt.datetime | None:
    """An ISO 8601 / RFC 3339 time (``Z`` or an offset; one without a zone is taken as
    UTC) as an aware datetime in its own offset; None if ``value`` is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def parse_utc(value: object) -> dt.datetime | None:
    """:func:`parse_iso` in UTC; None also for a time with no UTC equivalent in Python's
    range (``9999-12-31T23:00:00-05:00``, which asyncpg would refuse to encode)."""
    parsed = parse_iso(value)
    if parsed is None:
        return None
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        return None


def iso_to_ms(value: object) -> int | None:
    """:func:`parse_iso` as integer milliseconds since the epoch (exact: no float)."""
    parsed = parse_iso(value)
    return None if parsed is None else (parsed - _EPOCH) // _MS


def parse_time(text: str) -> int:
    """ISO 8601 (``2026-11-23T10:00:00Z``), epoch milliseconds, or ``<N>[smhd]`` ago
    (``30m``, ``2h``, ``7d``; a leading ``-`` is accepted too)."""
    text = text.strip()
    now = dt.datetime.now(dt.UTC)
    ago = text.removeprefix("-")
    if ago[-1:] in ("s", "m", "h", "d") and ago[:-1].isdigit():
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[ago[-1]]
        return int((now - dt.timedelta(**{unit: int(ago[:-1])})).timestamp() * 1000)
    if text.isdigit():
        return int(text)
    ms = iso_to_ms(text)
    if ms is None:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}")
    return ms
