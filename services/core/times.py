"""Time arguments of the command-line tools."""

from __future__ import annotations

import argparse
import datetime as dt


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
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)
