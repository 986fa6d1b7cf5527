"""The topic plan: every topic hookstream writes, with its partitions and retention.

Topics are created explicitly (``hookstream topics``, the stack's ``up``, test
fixtures) and never auto-created, so partition counts are always the documented
ones. See docs/topics.md for why these numbers.
"""

from __future__ import annotations

import dataclasses
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .config import KafkaSettings

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


@dataclasses.dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    doc: str
    compacted: bool = False

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "compact" if self.compacted else "delete",
        }


def plan(settings: KafkaSettings, partitions: int = 6) -> list[TopicSpec]:
    """The topics of one deployment; ``partitions`` caps consumer parallelism."""
    return [
        TopicSpec(settings.raw_topic, partitions, 7 * DAY_MS,
                  "raw deliveries, exactly the bytes received; replay source"),
        TopicSpec(settings.events_topic, partitions, 7 * DAY_MS,
                  "canonical events, keyed by call/session id"),
        TopicSpec(settings.dlq_topic, 1, 30 * DAY_MS,
                  "dead letters with reason and stage; redrive source"),
    ]


async def ensure(settings: KafkaSettings, specs: list[TopicSpec]) -> list[str]:
    """Create missing topics; returns the names created. Existing ones are left as they are."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=settings.request_timeout_ms,
    )
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        for spec in missing:
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs())]
                )
                created.append(spec.name)
                log.info("topic created", extra={"topic": spec.name, "partitions": spec.partitions})
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    return created
