"""Settings of Sarj.ai's call API client, read once at start from the environment.

The document names the endpoint (``GET /calls/{call_id}``) but neither its host nor
how the key is sent: both are settings, and their defaults are documented choices
(docs/providers.md, "Sarj.ai call API"). The key itself is per source, named by the
source's ``api_key_env`` in the sources file (docs/sources.md).
"""

from __future__ import annotations

import dataclasses

from ...core.config import ConfigError, env


@dataclasses.dataclass(frozen=True)
class SarjApiSettings:
    url: str = env("HOOKSTREAM_SARJ_API_URL", "",
                   "Sarj.ai call API base URL (GET <url>/calls/{call_id}); the document names "
                   "no host. Empty: the API is not used (an expired recording URL is "
                   "dead-lettered; hookstream backfill refuses to run)")
    auth_header: str = env("HOOKSTREAM_SARJ_API_AUTH_HEADER", "Authorization",
                           "header carrying the source's API key: Authorization sends "
                           "`Bearer <key>`; any other name (e.g. X-API-Key) sends the key "
                           "as it is")
    timeout_s: float = env("HOOKSTREAM_SARJ_API_TIMEOUT_S", 10.0,
                           "one API request's connect, read and overall limit")
    retries: int = env("HOOKSTREAM_SARJ_API_RETRIES", 3,
                       "further tries of a GET after a 429, a 5xx, a timeout or a connection "
                       "error (a GET changes nothing: retrying is safe)")
    backoff_s: float = env("HOOKSTREAM_SARJ_API_BACKOFF_S", 0.5,
                           "wait before the first retry, doubled for each further one (a "
                           "Retry-After answer is honoured, up to the maximum below)")
    backoff_max_s: float = env("HOOKSTREAM_SARJ_API_BACKOFF_MAX_S", 10.0,
                               "longest wait between two tries")
    sources_file: str = env("HOOKSTREAM_SARJ_API_SOURCES_FILE", "",
                            "the recordings sink: the sources file whose Sarj.ai sources' "
                            "api_key_env name each source's API key (only that setting is "
                            "read). Empty: no source has a key, expired URLs are "
                            "dead-lettered")

    def validate(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"HOOKSTREAM_SARJ_API_URL={self.url!r}: expected an http(s) URL")
        if not self.auth_header or not self.auth_header.replace("-", "").isalnum():
            raise ConfigError(f"HOOKSTREAM_SARJ_API_AUTH_HEADER={self.auth_header!r}: expected "
                              "an HTTP header name")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ConfigError("HOOKSTREAM_SARJ_API_TIMEOUT_S must be positive and the "
                              "backoffs not negative")
        if self.retries < 0:
            raise ConfigError("HOOKSTREAM_SARJ_API_RETRIES must be >= 0")
