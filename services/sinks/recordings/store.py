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
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from .settings import RecordingsSettings

log = logging.getLogger(__name__)

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
    """An S3-compatible bucket through aiobotocore (botocore's signing, retries and
    error parsing; the client is made once, in :meth:`start`, and shared by every
    upload of the process).

    A recording up to ``multipart_threshold`` bytes is one ``PutObject`` carrying its
    sha256 as ``ChecksumSHA256``, so the service verifies the bytes it received; a
    larger one is a multipart upload of ``part_bytes`` parts (botocore adds each
    part's CRC32 checksum, which the service verifies), aborted on any failure. The
    sha256 is also kept as the object's ``sha256`` metadata, which a ``HeadObject``
    compares to skip an identical upload. At most one part (or one small recording)
    is in memory per upload. Needs s3:PutObject, s3:GetObject (HEAD),
    s3:AbortMultipartUpload and s3:ListBucket (so a missing object is a 404, not a
    403).
    """

    kind = "s3"

    def __init__(self, endpoint: str, bucket: str, *, region: str, access_key_id: str,
                 secret_access_key: str, session_token: str = "", prefix: str = "",
                 spool: Path | None = None, timeout_s: float = 120.0,
                 multipart_threshold: int = 16 * 1024 * 1024,
                 part_bytes: int = 8 * 1024 * 1024, max_connections: int = 10) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix
        self._credentials = (access_key_id, secret_access_key, session_token or None)
        self._region = region
        self._spool = spool or Path(tempfile.gettempdir()) / "hookstream-recordings"
        self._timeout_s = timeout_s
        self._multipart_threshold = multipart_threshold
        self._part_bytes = part_bytes
        self._max_connections = max_connections
        self._exit = contextlib.AsyncExitStack()
        self._client: Any = None  # aiobotocore's S3 client (untyped)
        self.writes = 0
        self.multipart_uploads = 0

    def spool_dir(self) -> Path:
        return self._spool

    def object_key(self, key: str) -> str:
        return self.prefix + key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    async def start(self) -> None:
        await prepare_spool(self._spool)
        access_key_id, secret_access_key, session_token = self._credentials
        config = AioConfig(
            connect_timeout=self._timeout_s, read_timeout=self._timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},  # 5xx, throttling, resets
            max_pool_connections=self._max_connections,
            s3={"addressing_style": "path"})  # works with every S3-compatible service
        self._client = await self._exit.enter_async_context(get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self._region,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            aws_session_token=session_token, config=config))

    def _failed(self, action: str, object_key: str, exc: Exception) -> StoreError:
        where = f"{action} s3://{self.bucket}/{object_key}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return StoreError(f"{where}: HTTP {status} {error.get('Code', '')} "
                              f"{str(error.get('Message', ''))[:200]}")
        return StoreError(f"{where}: {exc!r}")

    async def _head(self, object_key: str) -> dict[str, Any] | None:
        assert self._client is not None, "start() first"
        try:
            head: dict[str, Any] = await self._client.head_object(Bucket=self.bucket,
                                                                  Key=object_key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._failed("HEAD", object_key, exc) from exc
        except BotoCoreError as exc:
            raise self._failed("HEAD", object_key, exc) from exc
        return head

    async def put(self, key: str, spooled: Spooled) -> Stored:
        object_key = self.object_key(key)
        try:
            head = await self._head(object_key)
            if (head is not None and head.get("Metadata", {}).get("sha256") == spooled.sha256
                    and head.get("ContentLength") == spooled.size):
                return Stored(self.location(key), written=False)
            content_type = spooled.content_type or "application/octet-stream"
            try:
                if spooled.size <= self._multipart_threshold:
                    await self._put_whole(object_key, spooled, content_type)
                else:
                    await self._put_parts(object_key, spooled, content_type)
            except (ClientError, BotoCoreError) as exc:
                raise self._failed("PUT", object_key, exc) from exc
            except OSError as exc:
                raise StoreError(f"reading spool file {spooled.path}: {exc!r}") from exc
        finally:
            _remove(spooled.path)
        self.writes += 1
        return Stored(self.location(key), written=True)

    async def _put_whole(self, object_key: str, spooled: Spooled, content_type: str) -> None:
        body = await asyncio.to_thread(spooled.path.read_bytes)
        await self._client.put_object(
            Bucket=self.bucket, Key=object_key, Body=body, ContentType=content_type,
            Metadata={"sha256": spooled.sha256},
            ChecksumSHA256=base64.b64encode(bytes.fromhex(spooled.sha256)).decode())

    async def _put_parts(self, object_key: str, spooled: Spooled, content_type: str) -> None:
        created = await self._client.create_multipart_upload(
            Bucket=self.bucket, Key=object_key, ContentType=content_type,
            Metadata={"sha256": spooled.sha256})
        upload_id = created["UploadId"]
        try:
            parts = []
            with spooled.path.open("rb") as f:
                number = 1
                while chunk := await asyncio.to_thread(f.read, self._part_bytes):
                    answer = await self._client.upload_part(
                        Bucket=self.bucket, Key=object_key, UploadId=upload_id,
                        PartNumber=number, Body=chunk)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    number += 1
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException:
            # Parts of an unfinished upload are billed until aborted (a bucket lifecycle
            # rule for incomplete uploads catches the ones a crash leaves).
            with contextlib.suppress(ClientError, BotoCoreError):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            raise
        self.multipart_uploads += 1

    async def exists(self, location: str, size: int) -> bool:
        prefix = f"s3://{self.bucket}/"
        if not location.startswith(prefix):
            return False  # recorded by another store: fetch again into this one
        head = await self._head(location[len(prefix):])
        return head is not None and head.get("ContentLength") == size

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None


def build_store(settings: RecordingsSettings) -> RecordingStore:
    if settings.store == "s3":
        return S3Store(settings.s3_endpoint, settings.s3_bucket, region=settings.s3_region,
                       access_key_id=settings.s3_access_key_id,
                       secret_access_key=settings.s3_secret_access_key,
                       session_token=settings.s3_session_token, prefix=settings.s3_prefix,
                       timeout_s=settings.download_timeout_s,
                       multipart_threshold=settings.s3_multipart_threshold_bytes,
                       part_bytes=settings.s3_part_bytes,
                       max_connections=settings.concurrency * 2)
    return LocalDirStore(settings.dir)
