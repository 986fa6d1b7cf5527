"""``hookstream load`` reports ingest's own ack latency beside the client's: quantiles
of what ingest's histogram counted between two scrapes, as bucket upper bounds."""

from __future__ import annotations

from hookstream.cli import bucket_quantile


def test_quantiles_count_only_what_happened_between_the_scrapes() -> None:
    before = {0.005: 100.0, 0.01: 100.0, 0.1: 100.0, float("inf"): 100.0}
    # 100 more acks: 90 within 5 ms, 9 more within 10 ms, 1 more within 100 ms.
    after = {0.005: 190.0, 0.01: 199.0, 0.1: 200.0, float("inf"): 200.0}
    assert bucket_quantile(before, after, 0.5) == 0.005
    assert bucket_quantile(before, after, 0.95) == 0.01
    assert bucket_quantile(before, after, 1.0) == 0.1


def test_nothing_counted_is_no_figure() -> None:
    same = {0.005: 3.0, float("inf"): 3.0}
    assert bucket_quantile(same, same, 0.99) is None
    assert bucket_quantile({}, {}, 0.5) is None
