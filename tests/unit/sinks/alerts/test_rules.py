"""Alert rules: parsing, validation messages, matching, templates, the shipped file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hookstream.core.config import ConfigError
from hookstream.sinks.alerts.rules import (
    canonical_types,
    load_rules,
    loads_rules,
    parse_rules,
    render,
)

REPO = Path(__file__).resolve().parents[4]
EXAMPLES = REPO / "schemas" / "canonical" / "v1" / "examples"
LOCAL_RULES = REPO / "deploy" / "local" / "alerts.toml"


def example(name: str, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    event.update(changes)
    return event


def one_rule(**fields: Any) -> dict[str, Any]:
    rule = {"name": "r", "types": ["session.errored"], "severity": "warning"}
    rule.update(fields)
    return {"rule": [rule]}


def error_of(document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_rules(document, "alerts.toml")
    return str(caught.value)


# ------------------------------------------------------------------ parsing

def test_minimal_rule_and_defaults() -> None:
    rules = parse_rules(one_rule())
    (rule,) = rules.rules
    assert rule.name == rule.alertname == "r"
    assert rule.types == {"session.errored"}
    assert rule.group_by == () and rule.where == () and rule.labels == ()
    assert rules.wants("session.errored") and not rules.wants("session.ended")
    assert rule.group_key(example("session.errored")) == ("r",)


def test_full_rule_from_toml() -> None:
    rules = loads_rules('''
        [[rule]]
        name = "low_sentiment"
        alertname = "LowSentiment"
        types = ["session.ended", "call.analyzed"]
        where = { provider = ["saaya", "sawt"], type_inferred = false }
        severity = "critical"
        group_by = ["agent_id", "provider"]
        summary = "{agent_id}: {sentiment:.1f}"
        description = "session {session_id}"
        labels = { team = "quality", tier = "1" }

        [rule.below]
        sentiment = -0.3

        [rule.above]
        duration_s = 10
    ''')
    (rule,) = rules.rules
    assert rule.alertname == "LowSentiment"
    assert rule.where == (("provider", ("saaya", "sawt")), ("type_inferred", (False,)))
    assert rule.below == (("sentiment", -0.3),)
    assert rule.above == (("duration_s", 10.0),)
    assert rule.labels == (("team", "quality"), ("tier", "1"))
    assert rules.types == {"session.ended", "call.analyzed"}


@pytest.mark.parametrize(("document", "message"), [
    ({}, "no rules"),
    ({"rules": []}, "unknown top-level key(s) rules"),
    ({"rule": [{"types": ["session.errored"], "severity": "info"}]},
     "rule #1: name must match"),
    ({"rule": ["x"]}, "rule #1: must be a table"),
    (one_rule(name="Bad-Name"), "name must match [a-z][a-z0-9_]*"),
    (one_rule(severty="info"), "rule 'r': unknown key(s) severty"),
    (one_rule(types=[]), "types must be a non-empty list"),
    (one_rule(types="session.errored"), "types must be a non-empty list"),
    (one_rule(types=["session.erored"]), "unknown canonical type(s) session.erored"),
    (one_rule(severity="page"), "severity must be one of critical, warning, info"),
    (one_rule(group_by="agent_id"), "group_by must be a list of field names"),
    (one_rule(group_by=["agentid"]), "group_by names 'agentid', which is not a canonical"),
    (one_rule(group_by=["data"]), "group_by names 'data'"),
    (one_rule(group_by=["agent_id", "agent_id"]), "lists a field twice"),
    (one_rule(where={}), "where must be a non-empty table"),
    (one_rule(where={"reasn": "x"}), "where tests 'reasn', which is not a canonical"),
    (one_rule(where={"reason": []}), "where.reason must be a string, number or boolean"),
    (one_rule(where={"reason": {"a": 1}}), "where.reason must be"),
    (one_rule(matches={}), "matches must be a non-empty table"),
    (one_rule(matches={"reasn": "x"}), "matches tests 'reasn', which is not a canonical"),
    (one_rule(matches={"reason": ""}), "matches.reason must be a non-empty regular expr"),
    (one_rule(matches={"reason": ["a"]}), "matches.reason must be a non-empty regular"),
    (one_rule(not_matches={"reason": "(unclosed"}), "not_matches.reason: bad regular expr"),
    (one_rule(below={"sentiment": "low"}), "below.sentiment must be a number"),
    (one_rule(above={"cost": True}), "above.cost must be a number"),
    (one_rule(below={"sentiment": float("nan")}), "below.sentiment must be a number"),
    (one_rule(summary=""), "summary must be a non-empty string"),
    (one_rule(summary="{agent}"), "uses {agent}, which is not a canonical event field"),
    (one_rule(summary="{data[x]}"), "uses {data[x]}"),
    (one_rule(summary="oops {agent_id"), "bad template"),
    (one_rule(description="{0}"), "description: template '{0}' uses {0}"),
    (one_rule(alertname=""), "alertname must be a non-empty string"),
    (one_rule(labels={"bad-name": "x"}), "label name 'bad-name' is not a valid"),
    (one_rule(labels={"severity": "x"}), "label 'severity' is set by the sink"),
    (one_rule(labels={"agent_id": "x"}, group_by=["agent_id"]), "label 'agent_id' is set by"),
    (one_rule(labels={"team": 1}), "label team must be a non-empty string"),
    (one_rule(labels="team=x"), "labels must be a table"),
    ({"rule": [{"name": "r", "types": ["tool.failed"], "severity": "info"}] * 2},
     "rule name 'r' is used twice"),
])
def test_validation_messages(document: dict[str, Any], message: str) -> None:
    assert message in error_of(document)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"x\.toml: not valid TOML"):
        loads_rules("[[rule]\nname=", "x.toml")
    with pytest.raises(ConfigError, match=r"HOOKSTREAM_ALERT_RULES_FILE=.*cannot read"):
        load_rules(tmp_path / "absent.toml")


def test_type_check_uses_the_canonical_schema() -> None:
    types = canonical_types()
    assert {"session.errored", "tool.failed", "kb.upload.failed"} <= types
    assert len(types) == 23
    assert canonical_types(Path("/nonexistent")) == frozenset()
    # Without a schema to check against, any type is accepted.
    parse_rules(one_rule(types=["future.type"]), known_types=frozenset())


# ------------------------------------------------------------------ matching

def test_where_equals_and_in() -> None:
    rules = parse_rules({"rule": [
        {"name": "budget", "types": ["campaign.paused"], "severity": "critical",
         "where": {"reason": "budget_alert"}},
        {"name": "either", "types": ["campaign.paused"], "severity": "info",
         "where": {"reason": ["manual", "budget_alert"]}},
    ]})
    budget = example("campaign.paused")
    manual = example("campaign.paused", reason="manual")
    missing = example("campaign.paused", reason=None)
    assert [r.name for r in rules.matching(budget)] == ["budget", "either"]
    assert [r.name for r in rules.matching(manual)] == ["either"]
    assert rules.matching(missing) == []
    assert rules.matching(example("session.errored")) == []  # type not listed


def test_matches_and_not_matches_take_any_spelling() -> None:
    """Issue 13: the pause reason is an open string (Saaya's document says only
    "manual or budget alert"), so a rule must not hang on one spelling of it."""
    rules = parse_rules({"rule": [
        {"name": "budget", "types": ["campaign.paused"], "severity": "critical",
         "matches": {"reason": "budget"}},
        {"name": "other", "types": ["campaign.paused"], "severity": "warning",
         "not_matches": {"reason": "budget|manual"}},
    ]})

    def hits(reason: Any) -> list[str]:
        return [r.name for r in rules.matching(example("campaign.paused", reason=reason))]

    for reason in ("budget_alert", "BUDGET_ALERT", "Budget alert", "budgetAlert",
                   "budget_exceeded", "daily-budget"):
        assert hits(reason) == ["budget"], reason
    for reason in ("manual", "MANUAL", "manual_pause"):
        assert hits(reason) == [], reason
    for reason in (None, "", "spend_limit", "compliance_hold", 7):
        assert hits(reason) == ["other"], reason
    event = example("campaign.paused")
    del event["reason"]
    assert [r.name for r in rules.matching(event)] == ["other"]  # absent: not recognised


def test_equality_does_not_mix_booleans_and_numbers() -> None:
    rules = parse_rules(one_rule(types=["call.analyzed"], where={"type_inferred": False}))
    assert rules.matching(example("call.analyzed", type_inferred=False))
    assert not rules.matching(example("call.analyzed", type_inferred=0))
    numeric = parse_rules(one_rule(types=["call.ended"], where={"duration_s": 315}))
    assert numeric.matching(example("call.ended.sawt", duration_s=315.0))
    assert not numeric.matching(example("call.ended.sawt", duration_s="315"))
    assert not numeric.matching(example("call.ended.sawt", duration_s=True))


def test_below_and_above_need_numbers() -> None:
    rules = parse_rules(one_rule(types=["session.ended"], below={"sentiment": -0.3},
                                 above={"duration_s": 60}))
    assert rules.matching(example("session.ended", sentiment=-0.31))
    assert not rules.matching(example("session.ended", sentiment=-0.3))  # strictly below
    assert not rules.matching(example("session.ended", sentiment=None))
    assert not rules.matching(example("session.ended", sentiment="-0.9"))
    assert not rules.matching(example("session.ended", sentiment=-0.9, duration_s=60))
    event = example("session.ended", sentiment=-0.9)
    del event["sentiment"]
    assert not rules.matching(event)  # absent field


def test_group_key_and_values() -> None:
    rules = parse_rules(one_rule(types=["tool.failed"], group_by=["agent_id", "tool_name"]))
    (rule,) = rules.rules
    saaya = example("tool.failed")
    assert rule.group_key(saaya) == ("r", "agt_01HV2K8D5RS1N7Q4T9X3M6CW0B", "create_refund")
    assert rule.group_values(example("tool.failed", agent_id=None)) == ("", "create_refund")


# ------------------------------------------------------------------ templates

def test_templates_render_fields_missing_as_empty() -> None:
    event = example("session.ended", sentiment=-0.456)
    assert render("{agent_id}: {sentiment:.2f}", event) == (
        "agt_01HT9F4M2CXQ7P8K5W3ZR6YB0A: -0.46")
    assert render("a {error_code} b {reason} c", event) == "a b c"  # nulls collapse
    assert render("{sentiment:.2f}!", example("session.ended", sentiment=None)) == "!"
    assert render("{sentiment:.2f}", example("session.ended", sentiment="odd")) == "odd"
    event.pop("tool_name")
    assert render("[{tool_name}]", event) == "[]"
    assert render("{{literal}} {type}", event) == "{literal} session.ended"


# ------------------------------------------------------------------ the shipped file

EXPECTED_LOCAL = {
    # example file (with changes) -> the rules it must hit
    ("session.errored", ()): {"session_errored"},
    ("session.escalated", ()): {"session_escalated"},
    ("tool.failed", ()): {"tool_failed"},
    ("tool.failed.sawt", ()): {"tool_failed"},
    ("campaign.paused", ()): {"campaign_budget_paused"},
    ("campaign.paused", (("reason", "BUDGET_ALERT"),)): {"campaign_budget_paused"},
    ("campaign.paused", (("reason", "budget_exceeded"),)): {"campaign_budget_paused"},
    ("campaign.paused", (("reason", "manual"),)): set(),
    ("campaign.paused", (("reason", "spend_cap"),)): {"campaign_paused_other"},
    ("campaign.paused", (("reason", None),)): {"campaign_paused_other"},
    ("kb.upload.failed", ()): {"kb_upload_failed"},
    ("session.ended", ()): set(),  # sentiment 0.32
    ("session.ended", (("sentiment", -0.6), ("sentiment_label", "negative"))):
        {"negative_sentiment"},
    ("call.analyzed", ()): set(),  # positive
    ("call.analyzed", (("sentiment_label", "negative"),)): {"call_negative_sentiment"},
    ("call.analyzed", (("sentiment_label", "very_negative"),)): {"call_negative_sentiment"},
    ("call.analyzed", (("sentiment_label", None),)): set(),
    ("call.ended", ()): set(),
    ("tool.called", ()): set(),
}


def test_local_rules_cover_the_issue_examples() -> None:
    rules = load_rules(LOCAL_RULES)
    for (name, changes), expected in EXPECTED_LOCAL.items():
        event = example(name, **dict(changes))
        assert {r.name for r in rules.matching(event)} == expected, (name, changes)
    severities = {r.name: r.severity for r in rules.rules}
    assert severities["session_errored"] == severities["campaign_budget_paused"] == "critical"
    for rule in rules.rules:  # every summary renders on every example without error
        for path in EXAMPLES.glob("*.json"):
            assert isinstance(render(rule.summary, json.loads(path.read_text())), str)


def test_every_local_rule_matches_some_example() -> None:
    rules = load_rules(LOCAL_RULES)
    hit = set()
    for (name, changes), _ in EXPECTED_LOCAL.items():
        hit |= {r.name for r in rules.matching(example(name, **dict(changes)))}
    assert hit == {r.name for r in rules.rules}


def test_parse_does_not_mutate_input() -> None:
    document = one_rule(where={"reason": ["a", "b"]}, labels={"team": "x"})
    before = copy.deepcopy(document)
    parse_rules(document)
    assert document == before
