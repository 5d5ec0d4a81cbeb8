"""S3 sources: bucket allow-list, size checked by HEAD before download and enforced while reading,
versioned reads, boto3's standard retry mode. Pure boto3 (no torch), also used by producers and scan.

Clients: boto3 clients are thread-safe, sessions are not, and neither survives ``fork`` safely (their
connection pool would be shared between processes). Create clients in the process that uses them, after
fork (``worker_process_init``), or let :meth:`S3Fetcher.lazy` create one on first use.

Codes: bucket not on the allow-list -> ``forbidden``; NoSuchKey/NoSuchVersion/NoSuchBucket/404 ->
``not-found``; AccessDenied/403 -> ``forbidden``; bad version id / other 400 -> ``invalid-source``;
object larger than ``max_bytes`` -> ``too-large`` (no download); SlowDown/503/5xx/throttling/connection
errors -> transient ``fetch-failed`` (timeouts -> transient ``timeout``), after boto3's own retries.
Messages name bucket and key only; credentials are never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from producers.contract import parse_s3_uri
from producers.errors import ConfigError, ErrorCode, FakesakeError, PermanentError, TransientError
from producers.settings import S3Settings
from worker.fetch.limits import read_capped
from worker.fetch.policy import FetchPolicy
from worker.protocols import Fetched

log = logging.getLogger(__name__)

S3Client = Any  # botocore builds the client class at run time; boto3-stubs are optional
_CHUNK = 256 * 1024
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "NotFound", "404"})
_FORBIDDEN = frozenset({"AccessDenied", "Forbidden", "403", "AllAccessDisabled", "AccountProblem"})
_TRANSIENT = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "Throttling", "ThrottlingException", "RequestTimeout"}
)
_INVALID = frozenset({"InvalidArgument", "InvalidVersionId", "KeyTooLongError", "InvalidBucketName"})


def make_s3_client(
    s3: S3Settings,
    *,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 10.0,
    max_pool_connections: int = 10,
) -> S3Client:
    """A boto3 S3 client for ``s3`` (standard retry mode, bounded timeouts). Call it after fork."""
    import boto3
    from botocore.config import Config

    if (s3.access_key_id is None) != (s3.secret_access_key is None):
        raise ConfigError("set both FAKESAKE_S3__ACCESS_KEY_ID and FAKESAKE_S3__SECRET_ACCESS_KEY, or neither")
    config = Config(
        retries={"mode": "standard", "total_max_attempts": s3.max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        max_pool_connections=max_pool_connections,
    )
    key_id = secret = None  # None: boto3's default credential chain
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        key_id, secret = s3.access_key_id.get_secret_value(), s3.secret_access_key.get_secret_value()
    # A session of our own: the default session is shared module state and sessions are not thread-safe.
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=config,
        aws_access_key_id=key_id, aws_secret_access_key=secret,
    )


def s3_error(exc: BaseException, what: str) -> FakesakeError:
    """Map a botocore exception raised while working on ``what`` (``s3://bucket/key``) to our errors."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"S3 {code or status} on {what}"
        if code in _NOT_FOUND or status in (404, 410):
            return PermanentError(ErrorCode.NOT_FOUND, message)
        if code in _FORBIDDEN or status in (401, 403):
            return PermanentError(ErrorCode.FORBIDDEN, message)
        if code == "RequestTimeout":
            return TransientError(ErrorCode.TIMEOUT, message)
        if code in _TRANSIENT or status == 429 or status >= 500:
            return TransientError(ErrorCode.FETCH_FAILED, message)
        if code in _INVALID or status == 400:  # e.g. a malformed version id (HEAD answers a bare 400)
            return PermanentError(ErrorCode.INVALID_SOURCE, message)
        return PermanentError(ErrorCode.FETCH_FAILED, message)
    if isinstance(exc, NoCredentialsError):
        return ConfigError(f"no S3 credentials found (FAKESAKE_S3__ACCESS_KEY_ID or the AWS chain) for {what}")
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return TransientError(ErrorCode.TIMEOUT, f"S3 timed out on {what}")
    if isinstance(exc, BotoCoreError | OSError):
        return TransientError(ErrorCode.FETCH_FAILED, f"S3 unreachable on {what}: {type(exc).__name__}")
    return PermanentError(ErrorCode.INTERNAL, f"unexpected S3 failure on {what}: {type(exc).__name__}")


class S3Fetcher:
    """The :class:`~worker.protocols.Fetcher` for ``s3://bucket/key`` sources."""

    def __init__(self, client: S3Client | None, policy: FetchPolicy) -> None:
        self._client = client
        self._factory: Callable[[], S3Client] | None = None
        self._lock = threading.Lock()
        self.policy = policy

    @classmethod
    def lazy(cls, factory: Callable[[], S3Client], policy: FetchPolicy) -> S3Fetcher:
        """A fetcher that creates its client on first use (so in the process that uses it)."""
        fetcher = cls(None, policy)
        fetcher._factory = factory
        return fetcher

    @property
    def client(self) -> S3Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    if self._factory is None:
                        raise ConfigError("S3Fetcher has neither a client nor a client factory")
                    self._client = self._factory()
        return self._client

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        """HEAD (size check), then GET the object (``VersionId`` when ``version`` is given)."""
        try:
            bucket, key = parse_s3_uri(source)
        except ValueError as exc:
            raise PermanentError(ErrorCode.INVALID_SOURCE, str(exc)) from exc
        what = f"s3://{bucket}/{key}"
        if not key:
            raise PermanentError(ErrorCode.INVALID_SOURCE, f"no object key in {what}")
        if not self.policy.bucket_allowed(bucket):
            raise PermanentError(
                ErrorCode.FORBIDDEN,
                f"bucket {bucket!r} is not on the allow-list (FAKESAKE_S3__ALLOWED_BUCKETS)",
            )
        extra = {"VersionId": version} if version else {}
        started = time.monotonic()
        try:
            head = self.client.head_object(Bucket=bucket, Key=key, **extra)
            size = int(head.get("ContentLength", 0))
            if size > self.policy.max_bytes:
                raise PermanentError(ErrorCode.TOO_LARGE, f"{what} is {size} bytes, limit {self.policy.max_bytes}")
            obj = self.client.get_object(Bucket=bucket, Key=key, **extra)
            data = self._read_capped(obj["Body"], what, started)
        except FakesakeError:
            raise
        except Exception as exc:
            raise s3_error(exc, what) from exc
        log.debug("fetched %s (%d bytes) in %.3fs", what, len(data), time.monotonic() - started)
        return Fetched(
            data=data,
            source=source,
            content_type=obj.get("ContentType"),
            meta={"bucket": bucket, "key": key, "version_id": obj.get("VersionId"), "etag": obj.get("ETag")},
        )

    def _read_capped(self, body: Any, what: str, started: float) -> bytes:
        """Read a StreamingBody with the cap: the object may have been replaced since HEAD."""

        def in_time() -> None:
            if time.monotonic() - started > self.policy.total_timeout_s:
                raise TransientError(ErrorCode.TIMEOUT, f"{what} took longer than {self.policy.total_timeout_s:g}s")

        try:
            return read_capped(body.read, self.policy.max_bytes, what, chunk_bytes=_CHUNK, on_chunk=in_time)
        finally:
            body.close()


def list_prefix(client: S3Client, bucket: str, prefix: str = "", *, page_size: int = 1000) -> Iterator[str]:
    """Keys under ``s3://bucket/prefix``, page by page (ListObjectsV2). Folder markers (keys ending in
    ``/``) are skipped: they are never images."""
    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
    try:
        for page in pages:
            for item in page.get("Contents", ()):
                key = str(item["Key"])
                if not key.endswith("/"):
                    yield key
    except FakesakeError:
        raise
    except Exception as exc:
        raise s3_error(exc, f"s3://{bucket}/{prefix}") from exc
