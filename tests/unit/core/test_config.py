"""hookstream.core.config: typed environment parsing and the generated reference."""

from __future__ import annotations

import dataclasses

import pytest

from hookstream.core.config import (
    ConfigError,
    KafkaSettings,
    LogSettings,
    describe,
    env,
    help_epilog,
    load,
    markdown_table,
)
from hookstream.ingest.settings import IngestSettings


@dataclasses.dataclass(frozen=True)
class Sample:
    count: int = env("T_COUNT", 3, "a count")
    ratio: float = env("T_RATIO", 0.5, "a ratio")
    flag: bool = env("T_FLAG", False, "a flag")
    names: tuple[str, ...] = env("T_NAMES", ["a", "b"], "some names")
    text: str = env("T_TEXT", "hello", "some text")
    maybe: int | None = env("T_MAYBE", None, "an optional int")


def test_defaults_without_env() -> None:
    s = load(Sample, {})
    assert s == Sample()
    assert s.names == ("a", "b")  # list default becomes a tuple
    assert s.maybe is None


def test_parses_each_type() -> None:
    s = load(Sample, {
        "T_COUNT": "42", "T_RATIO": "2.25", "T_FLAG": "yes",
        "T_NAMES": " x, y ,,z ", "T_TEXT": "world", "T_MAYBE": "7",
    })
    assert s.count == 42 and isinstance(s.count, int)
    assert s.ratio == 2.25 and isinstance(s.ratio, float)
    assert s.flag is True
    assert s.names == ("x", "y", "z")
    assert s.text == "world"
    assert s.maybe == 7


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("on", True), (" Yes ", True),
    ("0", False), ("false", False), ("no", False), ("off", False), ("", False),
])
def test_bool_values(raw: str, expected: bool) -> None:
    assert load(Sample, {"T_FLAG": raw}).flag is expected


def test_optional_empty_is_none() -> None:
    assert load(Sample, {"T_MAYBE": ""}).maybe is None


def test_overrides_win() -> None:
    s = load(Sample, {"T_COUNT": "42", "T_TEXT": "env"}, count=9, text="override")
    assert s.count == 9 and s.text == "override"


def test_unrelated_variables_ignored() -> None:
    assert load(Sample, {"OTHER": "x", "t_count": "5"}) == Sample()


@pytest.mark.parametrize(("var", "raw", "field"), [
    ("T_COUNT", "forty", "integer"),
    ("T_COUNT", "1.5", "integer"),
    ("T_RATIO", "half", "number"),
    ("T_FLAG", "maybe", "true/false"),
    ("T_MAYBE", "x", "integer"),
])
def test_bad_values_name_the_variable(var: str, raw: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(Sample, {var: raw})
    assert var in str(info.value)
    assert repr(raw) in str(info.value)
    assert field in str(info.value)


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_ingest_settings_from_env() -> None:
    s = load(IngestSettings, {
        "HOOKSTREAM_INGEST_PORT": "9090",
        "HOOKSTREAM_INGEST_ACK_TIMEOUT_S": "1.5",
        "HOOKSTREAM_INGEST_MAX_IN_FLIGHT": "10",
    })
    assert (s.port, s.ack_timeout_s, s.max_in_flight) == (9090, 1.5, 10)
    assert s.host == IngestSettings().host
    with pytest.raises(ConfigError, match="HOOKSTREAM_INGEST_PORT"):
        load(IngestSettings, {"HOOKSTREAM_INGEST_PORT": "http"})


def test_kafka_settings_from_env() -> None:
    k = load(KafkaSettings, {"HOOKSTREAM_RAW_TOPIC": "raw.x",
                             "HOOKSTREAM_KAFKA_REQUEST_TIMEOUT_MS": "500"})
    assert k.raw_topic == "raw.x" and k.request_timeout_ms == 500
    assert k.bootstrap == KafkaSettings().bootstrap


@pytest.mark.parametrize("cls", [IngestSettings, KafkaSettings, LogSettings])
def test_describe_lists_every_field_with_a_doc(cls: type) -> None:
    rows = describe(cls)
    fields = dataclasses.fields(cls)
    assert len(rows) == len(fields)
    by_var = {var: (default, doc) for var, default, doc in rows}
    for field in fields:
        var = field.metadata["env"]
        assert var in by_var, field.name
        _default, doc = by_var[var]
        assert doc.strip(), f"{var} has no doc"
        assert var.startswith("HOOKSTREAM_")


def test_describe_both_classes_in_order_and_unique() -> None:
    rows = describe(IngestSettings, KafkaSettings)
    names = [r[0] for r in rows]
    assert len(names) == len(set(names))
    expected = ([f.metadata["env"] for f in dataclasses.fields(IngestSettings)]
                + [f.metadata["env"] for f in dataclasses.fields(KafkaSettings)])
    assert names == expected


def test_describe_renders_defaults() -> None:
    rows = {var: default for var, default, _ in describe(Sample)}
    assert rows == {"T_COUNT": "3", "T_RATIO": "0.5", "T_FLAG": "false", "T_NAMES": "a,b",
                    "T_TEXT": "hello", "T_MAYBE": ""}
    table = markdown_table(Sample)
    assert "| `T_COUNT` | `3` | a count |" in table
    epilog = help_epilog(Sample)
    assert "T_NAMES" in epilog and "[a,b]" in epilog
