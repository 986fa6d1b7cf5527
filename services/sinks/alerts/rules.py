"""Alert rules: which canonical events raise an alert, how loud, grouped how.

Rules live in a TOML file (``HOOKSTREAM_ALERT_RULES_FILE``), one ``[[rule]]``
table each::

    [[rule]]
    name = "campaign_budget_paused"          # [a-z][a-z0-9_]*: the `rule` label
    types = ["campaign.paused"]              # canonical types it looks at
    matches = { reason = "budget" }          # optional: field's text contains the pattern
    severity = "critical"                    # critical | warning | info
    group_by = ["campaign_id"]               # event fields forming the grouping key
    summary = "Campaign {campaign_id} paused: {reason}"
    labels = { team = "growth" }             # optional: extra Alertmanager labels

    [rule.below]                             # optional: numeric field < value
    sentiment = -0.3
    # [rule.above]: numeric field > value

Conditions: ``where = { field = value }`` (equal; a list: one of), ``matches =
{ field = "regex" }`` (the field is a string in which the regular expression is
found, case-insensitively: for the open value sets the documents never spell out,
such as a campaign's pause reason), ``not_matches = { field = "regex" }`` (the opposite:
the field is null, absent, not a string, or a string without a match), ``below`` /
``above``.

Optional keys: ``alertname`` (default: the name), ``description`` (a second
template). Templates are ``str.format`` strings over the event's top-level
fields (``{agent_id}``, ``{sentiment:.2f}``); a missing or null field renders
as "". Every condition of a rule must hold. A field that is null or absent never
matches ``where``, ``matches``, ``below`` or ``above`` (nor does a value of the wrong
kind: not a string for ``matches``, not a number for ``below``/``above``); it
always satisfies ``not_matches``.
Mistakes (an unknown key, field, type or severity, a bad template or regular
expression) are ``ConfigError``s naming the rule.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from ...core.config import ConfigError
from ...core.events import CanonicalEvent
from ...core.schemas import SCHEMAS_DIR

SEVERITIES = ("critical", "warning", "info")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SPACES = re.compile(r" {2,}")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # Prometheus / Alertmanager label names
# Labels the sink sets itself; rule labels may not override them.
RESERVED_LABELS = frozenset({"alertname", "severity", "rule", "provider", "source"})

# Top-level fields of the canonical event that a rule may test, group by or render
# (``data`` and ``transcript`` are an object and a list: not comparable, not labels).
FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(CanonicalEvent) if f.name not in ("data", "transcript"))

RULE_KEYS = frozenset({"name", "alertname", "types", "where", "matches", "not_matches",
                       "below", "above", "severity", "group_by", "summary", "description",
                       "labels"})
DEFAULT_SUMMARY = "{type} from {provider} ({source})"

Scalar = str | int | float | bool


def canonical_types(schemas_dir: Path = SCHEMAS_DIR) -> frozenset[str]:
    """The canonical types of the v1 schema (empty if the schema cannot be read)."""
    try:
        schema = orjson.loads((schemas_dir / "canonical" / "v1" / "event.schema.json")
                              .read_bytes())
        return frozenset(schema["properties"]["type"]["enum"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return frozenset()


class _Fields(string.Formatter):
    """``str.format`` over an event: missing or null fields render as ""."""

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return kwargs.get(str(key))

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return ""
        try:
            return str(super().format_field(value, format_spec))
        except (ValueError, TypeError, OverflowError):  # {sentiment:.2f} on a string,
            return str(value)  # or on an int past float's range


_FORMATTER = _Fields()


def template_fields(template: str, where: str) -> list[str]:
    """The field names ``template`` uses; ConfigError if it is malformed or names
    something other than a canonical field."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: bad template {template!r}: {exc}") from None
    names = []
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if field not in FIELDS:
            raise ConfigError(f"{where}: template {template!r} uses {{{field}}}, which is "
                              f"not a canonical event field ({', '.join(FIELDS)})")
        if spec and "{" in spec:
            raise ConfigError(f"{where}: template {template!r}: nested fields are not "
                              "supported")
        names.append(field)
    return names


def render(template: str, event: Mapping[str, Any]) -> str:
    """``template`` over ``event``; runs of spaces left by empty fields collapse to one."""
    return _SPACES.sub(" ", _FORMATTER.vformat(template, (), event)).strip()


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(actual: Any, expected: Scalar) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and actual is expected
    if _is_number(expected):
        return _is_number(actual) and actual == expected
    return bool(actual == expected)


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    alertname: str
    types: frozenset[str]
    severity: str
    group_by: tuple[str, ...] = ()
    where: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()  # field in (values)
    patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()  # `matches`: text with a match
    not_patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()  # `not_matches`
    below: tuple[tuple[str, float], ...] = ()
    above: tuple[tuple[str, float], ...] = ()
    summary: str = DEFAULT_SUMMARY
    description: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, event: Mapping[str, Any]) -> bool:
        if not _is_type(event.get("type"), self.types):
            return False
        for field, allowed in self.where:
            actual = event.get(field)
            if actual is None or not any(_equal(actual, v) for v in allowed):
                return False
        for field, pattern in self.patterns:
            if not _found(pattern, event.get(field)):
                return False
        for field, pattern in self.not_patterns:
            if _found(pattern, event.get(field)):
                return False
        for field, limit in self.below:
            actual = event.get(field)
            if not _is_number(actual) or not actual < limit:
                return False
        for field, limit in self.above:
            actual = event.get(field)
            if not _is_number(actual) or not actual > limit:
                return False
        return True

    def group_values(self, event: Mapping[str, Any]) -> tuple[str, ...]:
        """The grouping key's values, in ``group_by`` order (null: "")."""
        return tuple(_label_value(event.get(field)) for field in self.group_by)

    def group_key(self, event: Mapping[str, Any]) -> tuple[str, ...]:
        """What the repeat window is keyed by: the rule and its grouping values."""
        return (self.name, *self.group_values(event))


def _found(pattern: re.Pattern[str], value: Any) -> bool:
    return isinstance(value, str) and pattern.search(value) is not None


def _is_type(value: Any, types: frozenset[str]) -> bool:
    """Is ``value`` one of ``types`` (False, not TypeError, for a list or an object)?"""
    return isinstance(value, str) and value in types


def _label_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Rules:
    """The rule set, in file order."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.types: frozenset[str] = frozenset().union(*(r.types for r in self.rules))

    def __len__(self) -> int:
        return len(self.rules)

    def wants(self, event_type: str) -> bool:
        return event_type in self.types

    def matching(self, event: Mapping[str, Any]) -> list[Rule]:
        if not _is_type(event.get("type"), self.types):
            return []
        return [rule for rule in self.rules if rule.matches(event)]


# ------------------------------------------------------------------ parsing

def _field_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of field names, got {value!r}")
    for field in value:
        if field not in FIELDS:
            raise ConfigError(f"{where}: {key} names {field!r}, which is not a canonical "
                              f"event field ({', '.join(FIELDS)})")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: {key} lists a field twice: {value!r}")
    return tuple(value)


def _conditions(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty table of field = value, "
                          f"got {value!r}")
    for field in value:
        if field not in FIELDS:
            raise ConfigError(f"{where}: {key} tests {field!r}, which is not a canonical "
                              f"event field ({', '.join(FIELDS)})")
    return value


def _where(value: Any, where: str) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    out = []
    for field, expected in _conditions(value, where, "where").items():
        values = expected if isinstance(expected, list) else [expected]
        if not values or not all(isinstance(v, str | int | float | bool) for v in values):
            raise ConfigError(f"{where}: where.{field} must be a string, number or boolean, "
                              f"or a non-empty list of them, got {expected!r}")
        out.append((field, tuple(values)))
    return tuple(out)


def _patterns(value: Any, where: str, key: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for field, pattern in _conditions(value, where, key).items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}: {key}.{field} must be a non-empty regular "
                              f"expression, got {pattern!r}")
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"{where}: {key}.{field}: bad regular expression "
                              f"{pattern!r}: {exc}") from None
        out.append((field, compiled))
    return tuple(out)


def _limits(value: Any, where: str, key: str) -> tuple[tuple[str, float], ...]:
    out = []
    for field, limit in _conditions(value, where, key).items():
        if not _is_number(limit) or not math.isfinite(limit):
            raise ConfigError(f"{where}: {key}.{field} must be a number, got {limit!r}")
        out.append((field, float(limit)))
    return tuple(out)


def _labels(value: Any, where: str, group_by: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: labels must be a table of name = \"value\", got {value!r}")
    for name, text in value.items():
        if not LABEL_NAME.match(name):
            raise ConfigError(f"{where}: label name {name!r} is not a valid Alertmanager "
                              "label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if name in RESERVED_LABELS or name in group_by:
            raise ConfigError(f"{where}: label {name!r} is set by the sink "
                              f"({', '.join(sorted(RESERVED_LABELS))} and the group_by "
                              "fields); pick another name")
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}: label {name} must be a non-empty string, "
                              f"got {text!r}")
    return tuple(sorted(value.items()))


def parse_rule(raw: Any, index: int, known_types: frozenset[str] = frozenset()) -> Rule:
    """One ``[[rule]]`` table; ``index`` (1-based) names it in errors until it has a name."""
    where = f"rule #{index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: name must match [a-z][a-z0-9_]*, got {name!r}")
    where = f"rule {name!r}"
    unknown = sorted(set(raw) - RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(RULE_KEYS))})")

    types = raw.get("types")
    if (not isinstance(types, list) or not types
            or not all(isinstance(t, str) and t for t in types)):
        raise ConfigError(f"{where}: types must be a non-empty list of canonical types, "
                          f"got {types!r}")
    if known_types:
        strange = sorted(set(types) - known_types)
        if strange:
            raise ConfigError(f"{where}: unknown canonical type(s) {', '.join(strange)} "
                              f"(known: {', '.join(sorted(known_types))})")

    severity = raw.get("severity")
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}, "
                          f"got {severity!r}")

    alertname = raw.get("alertname", name)
    if not isinstance(alertname, str) or not alertname:
        raise ConfigError(f"{where}: alertname must be a non-empty string, got {alertname!r}")

    group_by = _field_list(raw.get("group_by", []), where, "group_by")
    summary = raw.get("summary", DEFAULT_SUMMARY)
    description = raw.get("description")
    for key, template in (("summary", summary), ("description", description)):
        if template is None and key == "description":
            continue
        if not isinstance(template, str) or not template.strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string, got {template!r}")
        template_fields(template, f"{where}: {key}")

    return Rule(
        name=name, alertname=alertname, types=frozenset(types), severity=severity,
        group_by=group_by,
        where=_where(raw["where"], where) if "where" in raw else (),
        patterns=_patterns(raw["matches"], where, "matches") if "matches" in raw else (),
        not_patterns=(_patterns(raw["not_matches"], where, "not_matches")
                     if "not_matches" in raw else ()),
        below=_limits(raw["below"], where, "below") if "below" in raw else (),
        above=_limits(raw["above"], where, "above") if "above" in raw else (),
        summary=summary, description=description,
        labels=_labels(raw.get("labels", {}), where, group_by),
    )


def parse_rules(document: Mapping[str, Any], origin: str = "rules",
                known_types: frozenset[str] | None = None) -> Rules:
    """Rules from a parsed TOML document (``{"rule": [...]}``)."""
    known = canonical_types() if known_types is None else known_types
    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key(s) {', '.join(unknown)} "
                          "(rules are [[rule]] tables)")
    raw_rules = document.get("rule")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError(f"{origin}: no rules: add at least one [[rule]] table")
    rules = [parse_rule(raw, i, known) for i, raw in enumerate(raw_rules, start=1)]
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(f"{origin}: rule name {rule.name!r} is used twice")
        seen.add(rule.name)
    return Rules(tuple(rules))


def loads_rules(text: str, origin: str = "rules",
                known_types: frozenset[str] | None = None) -> Rules:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    return parse_rules(document, origin, known_types)


def load_rules(path: str | Path) -> Rules:
    """The rules file; ConfigError if it is missing or wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"HOOKSTREAM_ALERT_RULES_FILE={path}: cannot read: "
                          f"{exc.strerror or exc}") from None
    return loads_rules(text, str(path))
