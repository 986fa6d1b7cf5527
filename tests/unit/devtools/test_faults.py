"""The fault suite's pure parts: the providers' retry policy, recovery time, the table."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hookstream.core.record import LocalRecord, RawDelivery
from hookstream.core.schemas import SchemaRegistry
from hookstream.devtools.faults import (
    ALERT_RULES,
    COLUMNS,
    DEFAULT_POLICIES,
    SCENARIOS,
    AlertsDestination,
    CRMDestination,
    MediaRow,
    RecordingsDestination,
    Result,
    RetryPolicy,
    TranscriptsDestination,
    caught_up_at,
    destination_figures,
    exit_status,
    media_figures,
    metric_samples,
    metric_total,
    parse_policy,
    per_event_alert_rules,
    recovery_seconds,
    render_table,
)
from hookstream.devtools.loadgen import deliveries
from hookstream.devtools.samples import Sample, media_urls, samples, with_media
from hookstream.normalizer.pipeline import Decoder
from hookstream.providers import PROVIDERS
from hookstream.sinks.alerts.rules import load_rules, loads_rules
from hookstream.sinks.transcripts.parse import parse as parse_transcript
from tests.fakes.crm import example
from tests.fakes.media import FakeMedia

SARJ = DEFAULT_POLICIES["sarj"]


def test_sarj_policy_is_the_documented_one() -> None:
    # ../shared/providers: "retries up to 3 times ... 2-second delay ... 10-second timeout"
    assert (SARJ.retries, SARJ.delay_s, SARJ.timeout_s, SARJ.tries) == (3, 2.0, 10.0, 4)


@pytest.mark.parametrize(("number", "status", "action"), [
    (1, 202, "done"), (4, 200, "done"), (1, 503, "retry"), (3, 0, "retry"),
    (1, 401, "retry"), (4, 503, "given up"), (4, 0, "given up"), (4, 302, "given up"),
])
def test_what_the_provider_does_after_a_try(number: int, status: int, action: str) -> None:
    assert SARJ.after(number, status) == action


@pytest.mark.parametrize(("statuses", "given_up"), [
    ([503, 503, 503, 503], True),  # every try refused
    ([0, 0, 0, 0], True),  # timeouts and network errors
    ([503, 503, 503, 202], False),  # the last retry got through
    ([202], False),
    ([503, 503], False),  # still retrying
])
def test_given_up_only_when_every_try_failed(statuses: list[int], given_up: bool) -> None:
    assert SARJ.given_up(statuses) is given_up


def test_a_policy_without_retries_gives_up_after_one_failure() -> None:
    assert RetryPolicy(retries=0).after(1, 503) == "given up"
    assert RetryPolicy(retries=0).given_up([503])


def test_policies_are_parsed_from_the_command_line() -> None:
    assert parse_policy("saaya=5:1.5:8") == ("saaya", RetryPolicy(5, 1.5, 8.0))
    for bad in ("saaya=5:1", "nobody=1:1:1", "sawt=-1:1:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_policy(bad)


def test_recovery_runs_to_the_first_2xx_after_which_all_are_2xx() -> None:
    tries = [(9.0, 202), (10.5, 503), (11.0, 202), (12.0, 503), (13.0, 202), (14.0, 202)]
    assert recovery_seconds(10.0, tries, caught_up=10.0) == 3.0


def test_recovery_waits_for_the_pipeline_to_catch_up() -> None:
    tries = [(10.0, 202), (11.0, 202)]
    assert recovery_seconds(10.0, tries, caught_up=17.5) == 7.5


def test_recovery_is_zero_when_nothing_failed_and_nothing_lagged() -> None:
    assert recovery_seconds(10.0, [(10.0, 202), (10.5, 202)], caught_up=10.0) == 0.0


def test_not_recovered_when_still_failing_or_never_caught_up_or_no_tries() -> None:
    assert recovery_seconds(10.0, [(11.0, 202), (12.0, 503)], caught_up=11.0) is None
    assert recovery_seconds(10.0, [(11.0, 202)], caught_up=None) is None
    assert recovery_seconds(10.0, [(9.0, 202)], caught_up=10.0) is None


def test_caught_up_after_the_last_look_that_was_behind() -> None:
    checks = [(9.5, True), (10.0, False), (10.5, True), (11.0, True), (11.5, False),
              (12.0, False)]
    assert caught_up_at(10.0, checks) == 11.5
    assert caught_up_at(10.0, [(10.5, False), (11.0, False)]) == 10.5
    assert caught_up_at(10.0, [(10.5, False), (11.0, True)]) is None
    assert caught_up_at(10.0, [(9.0, False)]) is None


def test_the_table_has_the_issues_columns_and_one_row_per_scenario() -> None:
    results = [
        Result("broker-restart", 900, 610, 290, 0, 0, 12.25),
        Result("kill-warehouse", 750, 750, 0, 0, 0, 3.0, {"warehouse": 1}),
        Result("postgres-kill", error="RuntimeError('stack up failed')"),
        Result("broker-kill", 10, 10, 0, 0, None, None),
    ]
    lines = render_table(results).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == list(COLUMNS)
    assert set(lines[1]) <= {"|", "-", ":"}
    assert len(lines) == 2 + len(results)
    assert len({len(line) for line in lines}) == 1  # aligned
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == ["broker-restart", "900", "610", "290", "0", "0", "12.2"]
    assert "postgres-kill (ERROR)" in lines[4]
    assert [c.strip() for c in lines[5].strip("|").split("|")][-2:] == ["?", "not recovered"]


def test_exit_status_fails_on_missing_duplicates_errors_and_optionally_given_up() -> None:
    clean = Result("kill-ingest", 10, 10, 0, 0, 0, 1.0)
    gave_up = Result("broker-kill", 10, 6, 4, 0, 0, 9.0)
    assert exit_status([clean, gave_up], strict_given_up=False) == 0
    assert exit_status([clean, gave_up], strict_given_up=True) == 1
    assert exit_status([Result("a", 10, 10, 0, 1, 0, 1.0)], strict_given_up=False) == 1
    assert exit_status([Result("a", 10, 10, 0, 0, 2, 1.0)], strict_given_up=False) == 1
    assert exit_status([Result("a", 10, 10, 0, 0, None, 1.0)], strict_given_up=False) == 1
    assert exit_status([Result("a", error="x")], strict_given_up=False) == 1


def test_destination_figures_count_missing_duplicates_and_unexpected() -> None:
    assert destination_figures({"a", "b", "c"}, {"a": 1, "b": 1, "c": 1}) == (0, 0, 0)
    assert destination_figures({"a", "b", "c"}, {"a": 1, "b": 0}) == (2, 0, 0)
    assert destination_figures({"a", "b"}, {"a": 3, "b": 1, "x": 2}) == (0, 3, 1)
    assert destination_figures(set(), {}) == (0, 0, 0)


def test_missing_or_duplicated_at_a_destination_fails_the_run() -> None:
    assert exit_status([Result("crm-429-5xx", 10, 10, 0, 0, 0, 1.0, sink_missing=1)],
                       strict_given_up=False) == 1
    assert exit_status([Result("crm-429-5xx", 10, 10, 0, 0, 0, 1.0, sink_duplicates=1)],
                       strict_given_up=False) == 1
    assert exit_status([Result("crm-429-5xx", 10, 10, 0, 0, 0, 1.0)],
                       strict_given_up=False) == 0


def test_per_event_alert_rules_keep_the_rules_and_group_each_hit_apart() -> None:
    local = load_rules(ALERT_RULES)
    derived = loads_rules(per_event_alert_rules(ALERT_RULES.read_text()))
    assert len(derived) == len(local)
    for mine, theirs in zip(derived.rules, local.rules, strict=True):
        assert mine.group_by == (*theirs.group_by, "event_id")
        assert dataclasses.replace(mine, group_by=theirs.group_by) == theirs
    twice = per_event_alert_rules(per_event_alert_rules(ALERT_RULES.read_text()))
    assert loads_rules(twice).rules == derived.rules  # event_id is not added twice


def test_metric_samples_match_labels() -> None:
    text = """# HELP x_total things
x_total{sink="crm",outcome="deferred"} 3.0
x_total{sink="crm",outcome="written"} 7.0
x_total{sink="alerts",outcome="deferred"} 1.0
x_total_created{sink="crm"} 1.7e9
y 2.0
"""
    assert metric_total(text, "x_total", sink="crm") == 10.0
    assert metric_total(text, "x_total", outcome="deferred") == 4.0
    assert metric_total(None, "x_total") == 0.0
    assert metric_samples(text, "y") == [({}, 2.0)]


def test_the_crm_owes_one_upsert_per_finished_call_event() -> None:
    crm = CRMDestination("http://127.0.0.1:1")
    ended = example("call.ended.sawt")
    assert crm.expect(ended) == {ended["event_id"]}
    assert crm.expect(example("session.ended")) != frozenset()
    assert "call.started" not in crm.types and "call.analyzed" in crm.types
    assert crm.expect(example("call.ended.sawt", event_id="")) == frozenset()  # unmappable
    assert crm.unmappable == 1


def test_alertmanager_owes_one_alert_per_rule_hit() -> None:
    rules = loads_rules(per_event_alert_rules(ALERT_RULES.read_text()))
    alerts = AlertsDestination("http://127.0.0.1:1/", ("faults_run", "x"), rules)
    errored = example("session.errored")
    assert alerts.expect(errored) == {f"session_errored {errored['event_id']}"}
    assert alerts.expect(example("call.started")) == frozenset()
    assert "session.errored" in alerts.types and "call.started" not in alerts.types


def test_the_new_scenarios_run_the_parts_they_need() -> None:
    assert SCENARIOS["normalizer-rebalance"].normalizers == 2
    assert SCENARIOS["crm-429-5xx"].sinks == ("crm",)
    assert SCENARIOS["alertmanager-down"].sinks == ("alerts",)
    assert SCENARIOS["kill-crm"].sinks == ("crm",)
    assert SCENARIOS["kill-alerts"].sinks == ("alerts",)
    assert SCENARIOS["kill-recordings"].sinks == ("recordings",)
    assert SCENARIOS["kill-transcripts"].sinks == ("transcripts",)
    assert SCENARIOS["media-5xx"].sinks == ("recordings", "transcripts")
    assert all(SCENARIOS[n].default for n in ("kill-recordings", "kill-transcripts",
                                              "media-5xx"))
    assert SCENARIOS["raw-partitions-added"].afterwards is not None
    others = [s for s in SCENARIOS.values()
              if s.name not in ("normalizer-rebalance", "crm-429-5xx", "alertmanager-down",
                                "kill-crm", "kill-alerts", "kill-recordings",
                                "kill-transcripts", "media-5xx")]
    assert all(s.normalizers == 1 and s.sinks == () for s in others)


# ---------------------------------------------------------------- the fetching sinks
OWED = {"p:a": "/recordings/a", "p:b": "/recordings/b"}
SERVED = {"/recordings/a": 100, "/recordings/b": 200}


def test_media_held_once_each_is_clean_and_refetches_are_counted_apart() -> None:
    rows = [MediaRow("p:a", 100, "/s/a.wav"), MediaRow("p:b", 200, "/s/b.wav")]
    figures, held = media_figures(OWED, rows, SERVED, {"/recordings/a": 1, "/recordings/b": 3},
                                  {"/s/a.wav": 100, "/s/b.wav": 200})
    assert (figures.owed, figures.held, figures.missing, figures.duplicates) == (2, 2, 0, 0)
    assert (figures.fetches, figures.refetched, figures.extra_fetches) == (4, 1, 2)
    assert held == {"p:a": 1, "p:b": 1}


def test_media_without_a_row_or_with_a_wrong_one_is_missing() -> None:
    rows = [MediaRow("p:a", 99, "/s/a.wav")]  # not the size the stand-in served
    figures, held = media_figures(OWED, rows, SERVED, {}, {"/s/a.wav": 99})
    assert (figures.missing, figures.wrong, figures.duplicates) == (2, 1, 0)
    assert not held["p:a"] and not held["p:b"]
    # The row is right, but its file is gone, or of another size.
    rows = [MediaRow("p:a", 100, "/s/a.wav"), MediaRow("p:b", 200, "/s/b.wav")]
    figures, _ = media_figures(OWED, rows, SERVED, {}, {"/s/b.wav": 7})
    assert (figures.held, figures.missing, figures.wrong) == (0, 2, 2)


def test_a_second_row_or_a_file_without_a_row_is_a_duplicate() -> None:
    rows = [MediaRow("p:a", 100, "/s/a.wav"), MediaRow("p:a", 100, "/s/a2.wav"),
            MediaRow("p:b", 200, "/s/b.wav"), MediaRow("p:x", 5, "/s/x.wav")]
    files = {"/s/a.wav": 100, "/s/a2.wav": 100, "/s/b.wav": 200, "/s/x.wav": 5,
             "/s/stray.wav": 100}
    figures, held = media_figures(OWED, rows, SERVED, {}, files)
    assert (figures.missing, figures.extra_rows, figures.orphans) == (0, 1, 1)
    assert (figures.duplicates, figures.unexpected) == (2, 1)
    assert held["p:a"] == 2


def test_media_without_a_store_is_held_by_its_row_alone() -> None:
    owed = {"p:s": "/transcripts/s"}
    figures, held = media_figures(owed, [MediaRow("p:s", 42)], {"/transcripts/s": 42},
                                  {"/transcripts/s": 2})
    assert (figures.held, figures.missing, figures.duplicates, figures.refetched) == (1, 0, 0, 1)
    assert held == {"p:s": 1}
    figures, _ = media_figures(owed, [], {}, {})
    assert (figures.missing, figures.fetches) == (1, 0)


def test_an_event_with_a_media_link_owes_its_call_one_row(tmp_path: Path) -> None:
    recordings = RecordingsDestination("http://127.0.0.1:1/", tmp_path)
    ended = example("call.ended", recording_url="http://127.0.0.1:1/recordings/c%201")
    key = f"{ended['provider']}:{ended['call_id']}"
    assert recordings.expect(ended) == {key}
    assert recordings.paths[key] == "/recordings/c 1"  # as the stand-in counts it
    assert recordings.expect(example("call.ended", recording_url=None)) == frozenset()
    assert recordings.expect(example("call.ended", test=True)) == frozenset()  # skipped
    assert recordings.types == ["call.ended"]
    transcripts = TranscriptsDestination("http://127.0.0.1:1")
    session = example("session.ended")
    assert transcripts.expect(session) == {f"{session['provider']}:{session['session_id']}"}
    assert set(transcripts.types) == {"session.ended", "session.errored"}


def _store_with_a_stray_file(root: Path) -> RecordingsDestination:
    """A recordings store holding the owed call's file, a file no row points at and a
    spool leftover; the destination's last look at it."""
    (root / "p" / "2026").mkdir(parents=True)
    (root / "p" / "2026" / "a.wav").write_bytes(b"x" * 100)
    (root / "p" / "2026" / "stray.wav").write_bytes(b"x" * 3)
    (root / ".partial").mkdir()
    (root / ".partial" / "1.part").write_bytes(b"x")
    recordings = RecordingsDestination("http://media", root)
    recordings.keys = {"e1": frozenset({"p:a"})}
    recordings.paths = {"p:a": "/recordings/a"}
    recordings.files = recordings.read_files()
    stored = root.resolve() / "p" / "2026"
    assert recordings.partial == 1
    assert set(recordings.files) == {str(stored / "a.wav"), str(stored / "stray.wav")}
    recordings.rows = [MediaRow("p:a", 100, str(stored / "a.wav"))]
    return recordings


async def test_the_recordings_destination_reads_the_stand_in_and_the_store(
        tmp_path: Path) -> None:
    recordings = _store_with_a_stray_file(tmp_path)
    fake = FakeMedia()
    fake.served["/recordings/a"] = 100
    fake.fetches.update({"/recordings/a": 2})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(fake.app),
                                 base_url="http://media") as client:
        recordings.observed = await recordings.observe(client)
    line, missing, duplicates = recordings.report(0.0, None)
    assert (missing, duplicates) == (0, 1)  # the stray file
    assert "stored files without a row 1" in line and "1 fetched again" in line


async def test_the_media_stand_in_serves_the_same_bytes_counts_and_fails_on_demand() -> None:
    fake = FakeMedia()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(fake.app),
                                 base_url="http://media") as client:
        first, again = [await client.get("/recordings/c1") for _ in range(2)]
        assert first.status_code == 200 and first.content == again.content
        assert first.headers["content-type"] == "audio/wav"
        assert len((await client.get("/recordings/c2")).content) != len(first.content)
        document = (await client.get("/transcripts/s1")).json()
        assert parse_transcript(orjson.dumps(document)).turns  # turns the sink can read
        down = await client.post("/_admin/faults", json={"mode": "down",
                                                         "statuses": [500, 503]})
        assert down.json() == {"mode": "down"}
        assert [(await client.get("/transcripts/s1")).status_code for _ in range(3)] == [
            500, 503, 500]
        await client.post("/_admin/faults", json={"mode": "up"})
        assert (await client.get("/transcripts/s1")).status_code == 200
        await client.post("/_admin/faults", json={"mode": "down", "for_s": 0})
        assert (await client.get("/recordings/c1")).status_code == 200  # over already
        slow = await client.post("/_admin/faults", json={"mode": "slow", "delay_s": 0.2})
        assert slow.json() == {"mode": "slow"}
        started = time.monotonic()
        assert (await client.get("/transcripts/s1")).status_code == 200
        assert time.monotonic() - started >= 0.2
        await client.post("/_admin/faults", json={"mode": "up"})
        state = (await client.get("/_admin/state")).json()
    assert state["mode"] == "up"
    assert state["fetches"] == {"/recordings/c1": 3, "/recordings/c2": 1,
                                "/transcripts/s1": 6}
    assert state["served"]["/recordings/c1"] == len(first.content)
    assert state["faulted"] == {"transcripts": {"500": 2, "503": 1}}


def test_the_load_links_media_on_the_stand_in_and_stays_valid() -> None:
    """Every delivery whose event links a recording or transcript links it on the
    stand-in after ``with_media``, for its own call or session; the body still decodes
    (the provider's schema)."""
    decoder = Decoder(SchemaRegistry())
    media = media_urls("http://127.0.0.1:9/")
    linked = Counter()
    for sample in samples():
        before = _decode(decoder, sample)
        after = _decode(decoder, with_media(sample, media))
        for field, kind in (("recording_url", "recording"), ("transcript_url", "transcript")):
            if getattr(before, field) is None:
                assert getattr(after, field) is None
                continue
            subject = after.call_id or after.session_id
            assert getattr(after, field) == f"http://127.0.0.1:9/{kind}s/{subject}"
            linked[kind] += 1
        assert dataclasses.replace(after, recording_url=before.recording_url,
                                   transcript_url=before.transcript_url,
                                   data=before.data) == before
    assert linked["recording"] and linked["transcript"]
    stream = itertools.islice(deliveries(0.0, 0.0, seed=1, media=media), 300)
    assert sum(b"127.0.0.1:9/" in d.sample.body for d in stream) > 10
    assert media("recording", "a/b c") == "http://127.0.0.1:9/recordings/a%2Fb%20c"


def _decode(decoder: Decoder, sample: Sample) -> Any:
    raw = RawDelivery(source="s", provider=sample.provider, received_at_ms=0,
                      request_id="r", body=sample.body,
                      routing_key=PROVIDERS[sample.provider].routing_key(sample.event))
    return decoder.decode(LocalRecord(raw.body, raw.headers()))
