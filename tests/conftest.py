"""Test configuration.

Integration tests run against the real stack (deploy/local/stack: a KRaft Kafka
broker and PostgreSQL on loopback). The ``stack`` fixture brings it up if it is
not already running, so ``python -m pytest`` works on its own. A skipped test
fails the run when CI is set or HOOKSTREAM_NO_SKIP=1: in CI a skip is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from hookstream.core import topics
from hookstream.core.config import KafkaSettings, load

from .support import local_secrets
from .support import stack as run_stack

# Property-based fuzzing (hypothesis): the default profile keeps the README's test
# command fast; HYPOTHESIS_PROFILE=long runs many more examples per property
# (docs/security.md, "Fuzzing"). Derandomized in CI so a run is reproducible; the
# failures hypothesis finds are kept as named @example regressions.
settings.register_profile(
    "default", max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=3000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

STRICT = os.environ.get("CI", "").lower() in {"1", "true"} or os.environ.get(
    "HOOKSTREAM_NO_SKIP") == "1"


@pytest.fixture(scope="session", autouse=True)
def _local_secrets() -> Iterator[None]:
    """The local sources' secrets, as a deployment would set them."""
    saved = dict(os.environ)
    os.environ.update(local_secrets())
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _fresh_crm_buckets() -> None:
    """Each test starts with full CRM token buckets: a 429 hold or the pacing of one
    test must not slow the next (the buckets are per process, by design)."""
    from hookstream.sinks.crm.ratelimit import forget_buckets

    forget_buckets()


@pytest.fixture(scope="session")
def kafka_settings() -> KafkaSettings:
    return load(KafkaSettings)


@pytest.fixture(scope="session")
async def stack(kafka_settings: KafkaSettings) -> KafkaSettings:
    """The real broker and database, up, with hookstream's topics created."""
    run_stack("up")
    await topics.ensure(kafka_settings, topics.plan(kafka_settings))
    return kafka_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if STRICT and skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"FAILED: {skipped} test(s) skipped; skips are failures in CI",
                                red=True)
