"""Where recordings are kept: a local directory (default) or an S3-compatible bucket.

A download is first spooled to a file in :meth:`RecordingStore.spool_dir`
(streamed, size-capped, hashed: see fetch.py); :meth:`RecordingStore.put` then
makes it durable under its key ``<provider>/<yyyy>/<mm>/<call_id>.<ext>`` and
returns the location recorded in the warehouse (``file:///...`` or
``s3://bucket/key``). ``put`` is idempotent: an object already there with the
same size and sha256 is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import httpx

from . import sigv4
from .settings import RecordingsSettings

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
STALE_SPOOL_S = 3600.0  # spool files older than this at start are leftovers of a crash

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_EXT = re.compile(r"[a-z0-9]{1,8}")
CONTENT_TYPE_EXT = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/ogg": "ogg", "audio/opus": "opus",
    "audio/webm": "webm", "audio/mp4": "m4a", "audio/x-m4a": "m4a", "audio/aac": "aac",
    "audio/flac": "flac", "audio/x-flac": "flac",
}


class StoreError(Exception):
    """The store could not be written or read (disk, bucket, credentials): the sink
    retries the whole batch, since every recording would fail alike."""


@dataclasses.dataclass(frozen=True)
class Spooled:
    """A complete download, spooled to ``path``."""

    path: Path
    size: int
    sha256: str
    content_type: str | None


@dataclasses.dataclass(frozen=True)
class Stored:
    location: str
    written: bool  # False: an identical object was already there


def safe_part(value: str) -> str:
    """One path segment from an outside value: no separators, no leading dot. A value that
    had to change gets a short hash of the original, so two ids never share a file."""
    cleaned = _UNSAFE.sub("_", value).lstrip(".")[:120]
    if cleaned != value or not cleaned:
        cleaned = f"{cleaned}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"
    return cleaned


def extension(url: str, content_type: str | None) -> str:
    """The file extension: the URL path's (``.wav``), else the Content-Type's, else bin."""
    suffix = Path(unquote(urlsplit(url).path)).suffix.lstrip(".").lower()
    if _EXT.fullmatch(suffix):
        return suffix
    mime = (content_type or "").split(";")[0].strip().lower()
    return CONTENT_TYPE_EXT.get(mime, "bin")


def recording_key(provider: str, call_id: str, when: dt.datetime, ext: str) -> str:
    """``<provider>/<yyyy>/<mm>/<call_id>.<ext>`` (month of the call, UTC)."""
    when = when.astimezone(dt.UTC)
    return f"{safe_part(provider)}/{when:%Y}/{when:%m}/{safe_part(call_id)}.{ext}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def prepare_spool(spool: Path) -> None:
    """Create the spool directory; delete what a crash left there long ago (a download in
    flight on another replica sharing the directory is younger than that)."""
    def prepare() -> None:
        spool.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_SPOOL_S
        for leftover in spool.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    try:
        await asyncio.to_thread(prepare)
    except OSError as exc:
        raise StoreError(f"spool directory {spool}: {exc!r}") from exc


class RecordingStore(Protocol):
    kind: str

    def spool_dir(self) -> Path:
        """Where downloads are spooled (for the local store: on the same file system)."""
        ...

    async def start(self) -> None: ...

    async def put(self, key: str, spooled: Spooled) -> Stored:
        """Make ``spooled`` durable under ``key``; the spool file is gone afterwards.
        Raises :class:`StoreError`."""
        ...

    async def exists(self, location: str, size: int) -> bool:
        """Whether ``location`` holds an object of ``size`` bytes. Raises StoreError."""
        ...

    async def close(self) -> None: ...


class LocalDirStore:
    """Files under a root directory, written atomically (spool, fsync, rename)."""

    kind = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.writes = 0  # files actually (re)written

    def spool_dir(self) -> Path:
        return self.root / ".partial"

    def path_of(self, key: str) -> Path:
        return self.root / key

    def location(self, key: str) -> str:
        return self.path_of(key).as_uri()

    async def start(self) -> None:
        await prepare_spool(self.spool_dir())

    async def put(self, key: str, spooled: Spooled) -> Stored:
        final = self.path_of(key)

        def put() -> bool:
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                if (final.stat().st_size == spooled.size
                        and sha256_file(final) == spooled.sha256):
                    _remove(spooled.path)
                    return False
            except FileNotFoundError:
                pass
            fd = os.open(spooled.path, os.O_RDONLY)
            try:
                os.fsync(fd)  # the bytes are on disk before the name points at them
            finally:
                os.close(fd)
            os.replace(spooled.path, final)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # and the rename itself is durable
            finally:
                os.close(dir_fd)
            return True

        try:
            written = await asyncio.to_thread(put)
        except OSError as exc:
            _remove(spooled.path)
            raise StoreError(f"writing {final}: {exc!r}") from exc
        if written:
            self.writes += 1
        return Stored(self.location(key), written)

    async def exists(self, location: str, size: int) -> bool:
        if not location.startswith("file://"):
            return False  # recorded by another store: fetch again into this one
        path = Path(unquote(urlsplit(location).path))
        try:
            return (await asyncio.to_thread(path.stat)).st_size == size
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"checking {path}: {exc!r}") from exc

    async def close(self) -> None:
        return None


class S3Store:
    """An S3-compatible bucket over HTTPS (path-style URLs), signed with SigV4.

    One ``PUT`` per recording (hence the 5 GiB limit) with the payload's sha256 as
    ``x-amz-content-sha256``, so the service verifies the bytes it received; the hash
    is also kept as ``x-amz-meta-sha256``, which a ``HEAD`` compares to skip an
    identical upload. Needs s3:PutObject, s3:GetObject (HEAD) and s3:ListBucket (so a
    missing object is a 404, not a 403).
    """

    kind = "s3"

    def __init__(self, endpoint: str, bucket: str, *, region: str, access_key_id: str,
                 secret_access_key: str, session_token: str = "", prefix: str = "",
                 spool: Path | None = None, timeout_s: float = 120.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._session_token = session_token
        self._region = region
        self._spool = spool or Path(tempfile.gettempdir()) / "hookstream-recordings"
        self._timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.writes = 0

    def spool_dir(self) -> Path:
        return self._spool

    def object_key(self, key: str) -> str:
        return self.prefix + key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def _url(self, object_key: str) -> str:
        return f"{self.endpoint}/{quote(self.bucket, safe='')}/{quote(object_key, safe='/~')}"

    async def start(self) -> None:
        await prepare_spool(self._spool)
        self._client = httpx.AsyncClient(transport=self._transport,
                                         timeout=httpx.Timeout(self._timeout_s))

    async def _request(self, method: str, object_key: str, headers: dict[str, str],
                       payload_sha256: str, content: AsyncIterator[bytes] | None = None
                       ) -> httpx.Response:
        assert self._client is not None, "start() first"
        url = self._url(object_key)
        signed = sigv4.sign_headers(
            method, url, headers, payload_sha256, access_key_id=self._access_key_id,
            secret_access_key=self._secret_access_key, region=self._region,
            session_token=self._session_token)
        try:
            return await self._client.request(method, url, headers=signed, content=content)
        except httpx.HTTPError as exc:
            raise StoreError(f"{method} s3://{self.bucket}/{object_key}: {exc!r}") from exc

    async def _head(self, object_key: str) -> httpx.Response | None:
        response = await self._request("HEAD", object_key, {}, sigv4.EMPTY_SHA256)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise StoreError(f"HEAD s3://{self.bucket}/{object_key}: HTTP "
                             f"{response.status_code}")
        return response

    async def put(self, key: str, spooled: Spooled) -> Stored:
        object_key = self.object_key(key)
        try:
            head = await self._head(object_key)
            if (head is not None and head.headers.get("x-amz-meta-sha256") == spooled.sha256
                    and head.headers.get("content-length") == str(spooled.size)):
                return Stored(self.location(key), written=False)
            headers = {"content-length": str(spooled.size),
                       "content-type": spooled.content_type or "application/octet-stream",
                       "x-amz-meta-sha256": spooled.sha256}
            response = await self._request("PUT", object_key, headers, spooled.sha256,
                                           content=_file_chunks(spooled.path))
            if response.status_code // 100 != 2:
                raise StoreError(f"PUT s3://{self.bucket}/{object_key}: HTTP "
                                 f"{response.status_code} {response.text[:300]}")
        finally:
            _remove(spooled.path)
        self.writes += 1
        return Stored(self.location(key), written=True)

    async def exists(self, location: str, size: int) -> bool:
        prefix = f"s3://{self.bucket}/"
        if not location.startswith(prefix):
            return False  # recorded by another store: fetch again into this one
        head = await self._head(location[len(prefix):])
        return head is not None and head.headers.get("content-length") == str(size)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


def build_store(settings: RecordingsSettings,
                transport: httpx.AsyncBaseTransport | None = None) -> RecordingStore:
    if settings.store == "s3":
        return S3Store(settings.s3_endpoint, settings.s3_bucket, region=settings.s3_region,
                       access_key_id=settings.s3_access_key_id,
                       secret_access_key=settings.s3_secret_access_key,
                       session_token=settings.s3_session_token, prefix=settings.s3_prefix,
                       timeout_s=settings.download_timeout_s, transport=transport)
    return LocalDirStore(settings.dir)
