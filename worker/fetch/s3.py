"""S3 sources: bucket allow-list, size checked by HEAD before download and enforced while reading,
versioned reads. Pure boto3 (no torch), also used by producers and scan.

Clients: boto3 clients are thread-safe, sessions are not, and neither survives ``fork`` safely (their
connection pool would be shared between processes). Create clients in the process that uses them, after
fork (``worker_process_init``), or let :meth:`S3Fetcher.lazy` create one on first use.

Versions: ``s3://bucket/key?versionId=V`` (the form S3 consoles print) reads version V, as does a job's
``source_version``; only a trailing ``?versionId=V`` is a version, any other ``?`` belongs to the key
(:func:`producers.contract.split_s3_version`). ``Fetched.meta`` names the version id and ETag that were read.

Codes: bucket not on the allow-list -> ``forbidden``; NoSuchKey/NoSuchVersion/NoSuchBucket/404 ->
``not-found``; AccessDenied/403 -> ``forbidden``; bad version id / other 400 -> ``invalid-source``;
object larger than ``max_bytes`` -> ``too-large`` (no download); SlowDown/503/5xx/throttling/connection
errors -> transient ``fetch-failed`` (timeouts -> transient ``timeout``). How often a failed request is
retried is the client's business (one attempt in workers, whose jobs retry: ``worker.service.builder``).
Messages name bucket and key only; credentials are never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from producers.contract import parse_s3_object
from producers.errors import ConfigError, ErrorCode, FakesakeError, PermanentError, TransientError
from producers.s3 import S3Client, s3_error
from worker.core.ports import Fetched
from worker.fetch.limits import read_capped
from worker.fetch.policy import FetchPolicy

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class S3Fetcher:
    """The :class:`~worker.core.ports.Fetcher` for ``s3://bucket/key`` sources."""

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
        """HEAD (size check), then GET the object at ``version``, or at the version the source names
        (``s3://bucket/key?versionId=V``), or the latest. Both given and different: ``invalid-source``."""
        try:
            bucket, key, named = parse_s3_object(source)
        except ValueError as exc:
            raise PermanentError(ErrorCode.INVALID_SOURCE, str(exc)) from exc
        what = f"s3://{bucket}/{key}"
        if version and named and version != named:
            raise PermanentError(
                ErrorCode.INVALID_SOURCE, f"{what} names version {named!r} but the job asks for {version!r}"
            )
        version = version or named
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
            meta={"bucket": bucket, "key": key, "version_id": obj.get("VersionId"), "etag": _unquoted(obj.get("ETag"))},
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


def _unquoted(etag: str | None) -> str | None:
    """S3 sends the ETag as a quoted HTTP entity tag; records keep the bare value, as S3 Inventory lists it."""
    return etag.strip('"') if etag else None
