"""Saaya's share of ``hookstream load``: sessions that start, call a tool (sometimes
failing), end (rarely errored or escalated), now and then beside another event."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..base import LoadMix

if TYPE_CHECKING:
    from ...devtools.samples import Sample


def conversation(rng: random.Random, by_event: Mapping[str, Sequence[Sample]]) -> list[Sample]:
    ending = rng.choices(["session.ended", "session.errored", "session.escalated"],
                         weights=[90, 5, 5])[0]
    picked = [by_event["session.started"][0], by_event["tool.called"][0]]
    if rng.random() < 0.05:
        picked.append(by_event["tool.errored"][0])
    picked.append(by_event[ending][0])
    if rng.random() < 0.15:
        other = rng.choice(["agent.updated", "agent.published", "campaign.row.completed",
                            "campaign.started", "kb.upload.completed",
                            "kb.upload.failed", "campaign.paused"])
        picked.append(rng.choice(by_event[other]))
    return picked


MIX = LoadMix(share=0.3, conversation=conversation)
