"""HubSpot's longest property value, and how the CRM sink stays inside it.

A HubSpot string property holds at most 65,536 characters; a longer value is a
400 and the event would be dead-lettered. HubSpot's backend is Java, so its
characters are UTF-16 code units: an emoji or other character outside the Basic
Multilingual Plane counts twice. Every length here is measured that way, on the
*rendered* value (after HTML markup and escaping, which can multiply a text's
length: ``&`` becomes ``&amp;``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

MAX_CHARS = 65536


def size(text: str) -> int:
    """Length in UTF-16 code units, as HubSpot counts it."""
    return len(text.encode("utf-16-le")) // 2


def cut(text: str, budget: int, render: Callable[[str], str]) -> str:
    """The longest prefix of ``text`` whose rendering fits ``budget`` (binary search:
    escaping makes the rendered length grow unevenly)."""
    if size(render(text)) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if size(render(text[:mid])) <= budget:
            low = mid
        else:
            high = mid - 1
    return text[:low]


def details(record: dict[str, Any], max_chars: int = MAX_CHARS) -> tuple[dict[str, Any], str]:
    """``record`` as the ``hookstream_details`` JSON, made to fit: the transcript's last
    turns go first (halving until it fits), then the summary is cut. Returns the record
    that was stored (later events merge into it) and its JSON."""
    fitted = dict(record)
    text = orjson.dumps(fitted, option=orjson.OPT_SORT_KEYS).decode()
    while size(text) > max_chars and fitted.get("transcript"):
        turns = list(fitted["transcript"])
        keep = len(turns) // 2
        fitted["transcript"] = turns[:keep]
        fitted["transcript_cut"] = True
        text = orjson.dumps(fitted, option=orjson.OPT_SORT_KEYS).decode()
    if size(text) > max_chars and isinstance(fitted.get("summary"), str):
        def render(summary: str) -> str:
            return orjson.dumps({**fitted, "summary": summary},
                                option=orjson.OPT_SORT_KEYS).decode()
        # The summary's own JSON length is what can be spent on it.
        budget = max_chars - (size(text) - size(orjson.dumps(fitted["summary"]).decode()))
        fitted["summary"] = cut(fitted["summary"], budget,
                                lambda t: orjson.dumps(t).decode())
        text = render(fitted["summary"])
    return fitted, text
