"""Sarj.ai: no signature; a path secret and/or an IP allow-list is mandatory."""

from __future__ import annotations

import pytest

from hookstream.core.config import ConfigError
from hookstream.core.sources import MIN_PATH_SECRET_CHARS
from hookstream.providers.sarj import auth as sarj
from tests.support import PATH_SECRET, PATH_SECRET_OLD, H, source

BODY = b'{"call_id":"sarj-call-9","event":"call.completed"}'


def test_without_path_secret_or_allow_list_is_config_error() -> None:
    with pytest.raises(ConfigError, match="path_secret_env and/or allow_cidrs"):
        source("sarj", provider="sarj")
    with pytest.raises(ConfigError):
        source("sarj", provider="sarj", allow_cidrs=[], trusted_proxies=["10.0.0.0/8"])


def test_allow_unauthenticated_overrides() -> None:
    src = source("sarj", provider="sarj", allow_unauthenticated=True)
    assert src.path_secrets == () and src.allow_networks == ()


@pytest.mark.parametrize("length", [1, 10, MIN_PATH_SECRET_CHARS - 1])
def test_short_path_secret_is_config_error(length: int) -> None:
    with pytest.raises(ConfigError, match="at least 24"):
        source("sarj", {"P": "a" * length}, provider="sarj", path_secret_env="P")


def test_path_secret_of_exactly_min_length_accepted() -> None:
    src = source("sarj", {"P": "a" * MIN_PATH_SECRET_CHARS}, provider="sarj",
                 path_secret_env="P")
    assert src.path_secret_ok("a" * MIN_PATH_SECRET_CHARS)


def test_path_secret_with_slash_is_config_error() -> None:
    with pytest.raises(ConfigError, match="without '/'"):
        source("sarj", {"P": "a" * 30 + "/b"}, provider="sarj", path_secret_env="P")


def test_short_secret_in_rotation_list_is_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 24"):
        source("sarj", provider="sarj", path_secrets_env=["PATH_SECRET", "SHORT_PATH"])


def test_empty_path_secret_is_config_error() -> None:
    with pytest.raises(ConfigError):
        source("sarj", provider="sarj", path_secret_env="EMPTY")


def test_missing_path_secret_env_names_variable() -> None:
    with pytest.raises(ConfigError, match="SARJ_NOT_THERE"):
        source("sarj", provider="sarj", path_secret_env="SARJ_NOT_THERE")


def test_correct_path_secret_accepted_wrong_or_missing_rejected() -> None:
    src = source("sarj", provider="sarj", path_secret_env="PATH_SECRET")
    assert src.path_secret_ok(PATH_SECRET) is True
    assert src.path_secret_ok(PATH_SECRET[:-1]) is False
    assert src.path_secret_ok(PATH_SECRET + "x") is False
    assert src.path_secret_ok(PATH_SECRET.upper()) is False
    assert src.path_secret_ok("") is False
    assert src.path_secret_ok(None) is False
    assert src.url_path() == f"/v1/webhooks/sarj/{PATH_SECRET}"


def test_path_secret_rotation() -> None:
    src = source("sarj", provider="sarj", path_secrets_env=["PATH_SECRET", "PATH_SECRET_OLD"])
    assert src.path_secrets == (PATH_SECRET.encode(), PATH_SECRET_OLD.encode())
    assert src.path_secret_ok(PATH_SECRET) is True
    assert src.path_secret_ok(PATH_SECRET_OLD) is True
    assert src.path_secret_ok("z" * 40) is False
    assert src.path_secret_ok(None) is False
    # The URL handed to the provider uses the first (current) secret.
    assert src.url_path() == f"/v1/webhooks/sarj/{PATH_SECRET}"


def test_single_and_list_combine() -> None:
    src = source("sarj", provider="sarj", path_secret_env="PATH_SECRET",
                 path_secrets_env=["PATH_SECRET_OLD"])
    assert src.path_secret_ok(PATH_SECRET) and src.path_secret_ok(PATH_SECRET_OLD)


def test_allow_list_only() -> None:
    src = source("sarj", provider="sarj", allow_cidrs=["203.0.113.0/24"])
    assert src.path_secret_ok(None) is True
    assert src.path_secret_ok("anything-extra-in-the-path") is False
    assert src.url_path() == "/v1/webhooks/sarj"


def test_verifier_accepts_everything_and_signs_nothing() -> None:
    src = source("sarj", provider="sarj", path_secret_env="PATH_SECRET")
    assert src.verifier.authenticates is False
    assert src.verifier.verify(H({}), BODY, 0.0) is True
    assert src.verifier.sign(BODY, 0.0, "d") == {}
    assert src.routing_key_header is None and src.event_id_header is None


def test_natural_key_is_call_id() -> None:
    assert sarj.natural_key(BODY) == b"sarj-call-9"
    assert sarj.natural_key(b'{"call":{"call_id":"x"}}') is None
    assert sarj.natural_key(b"not json") is None
    assert sarj.natural_key(b"") is None
