"""AWS Signature Version 4 for the S3 store, with the standard library only.

Header-based signing of one request (``Authorization: AWS4-HMAC-SHA256 ...``)
as specified in "Authenticating Requests (AWS Signature Version 4)" of the S3
API reference; checked against the worked examples of that document
(tests/unit/test_recordings_sigv4.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_SPACES = re.compile(r"\s+")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret_key).encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def canonical_uri(path: str) -> str:
    """S3 encodes the path once: every byte but unreserved characters and ``/``."""
    return quote(path or "/", safe="/~")


def canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    encoded = sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_request(method: str, path: str, query: str, headers: Mapping[str, str],
                      payload_sha256: str) -> tuple[str, str]:
    """(canonical request, signed headers); ``path`` is the decoded path."""
    lowered = {k.lower(): _SPACES.sub(" ", v.strip()) for k, v in headers.items()}
    names = sorted(lowered)
    signed = ";".join(names)
    header_block = "".join(f"{n}:{lowered[n]}\n" for n in names)
    request = "\n".join((method.upper(), canonical_uri(path), canonical_query(query),
                         header_block, signed, payload_sha256))
    return request, signed


def authorization(method: str, path: str, query: str, headers: Mapping[str, str],
                  payload_sha256: str, *, access_key_id: str, secret_access_key: str,
                  region: str, amz_date: str, service: str = "s3") -> str:
    """The ``Authorization`` header value; ``headers`` are the ones to sign (with
    ``host`` and ``x-amz-date``, which must equal ``amz_date``)."""
    request, signed = canonical_request(method, path, query, headers, payload_sha256)
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join((ALGORITHM, amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()))
    signature = hmac.new(signing_key(secret_access_key, date, region, service),
                         to_sign.encode(), hashlib.sha256).hexdigest()
    return (f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed}, "
            f"Signature={signature}")


def amz_date(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")


def sign_headers(method: str, url: str, headers: Mapping[str, str], payload_sha256: str, *,
                 access_key_id: str, secret_access_key: str, region: str,
                 session_token: str = "", now: dt.datetime | None = None) -> dict[str, str]:
    """``headers`` plus host, x-amz-date, x-amz-content-sha256, the session token if any,
    and Authorization: every given header is signed."""
    parts = urlsplit(url)
    out = dict(headers)
    out["host"] = parts.netloc
    out["x-amz-date"] = amz_date(now)
    out["x-amz-content-sha256"] = payload_sha256
    if session_token:
        out["x-amz-security-token"] = session_token
    out["Authorization"] = authorization(
        method, unquote(parts.path), parts.query, out, payload_sha256,
        access_key_id=access_key_id, secret_access_key=secret_access_key, region=region,
        amz_date=out["x-amz-date"])
    return out
