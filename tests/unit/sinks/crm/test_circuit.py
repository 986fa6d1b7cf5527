"""The CRM circuit breaker: closed → open → half-open → closed/open, and its gauge."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from hookstream.sinks.crm.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge() -> float | None:
    return REGISTRY.get_sample_value("hookstream_crm_circuit_open")


def test_opens_after_n_consecutive_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=5, cooldown_s=30, clock=clock)
    assert breaker.state == CLOSED and gauge() == 0
    for _ in range(4):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == CLOSED and breaker.consecutive_failures == 4
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and gauge() == 1
    assert not breaker.allow()


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=Clock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == CLOSED


def test_half_open_after_the_cooldown_lets_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30, clock=clock)
    breaker.record_failure()
    clock.now += 29.9
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 0.1
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one at a time
    assert gauge() == 1
    breaker.record_success()
    assert breaker.state == CLOSED and gauge() == 0
    assert breaker.allow() and breaker.allow()


def test_a_failed_trial_opens_again_for_a_new_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 9
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_release_frees_the_trial_without_a_verdict() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.release()
    assert breaker.state == HALF_OPEN
    assert breaker.allow()


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
