"""S3 clients for producers, scans and workers: one way to build a client (boto3's standard retry mode, bounded
timeouts, explicit credentials), one mapping of botocore failures to fakesake error codes, and prefix listing.

Pure boto3, no torch: ``fakesake submit s3://bucket/prefix/`` lists with it in a producer-only install.
Clients: boto3 clients are thread-safe, sessions are not, and neither survives ``fork`` safely: create clients
in the process that uses them.

Retries: exactly one layer retries a failed S3 request, so attempts never multiply. A worker's source
fetches make one attempt (``max_attempts=1``): the job's ``RetryPolicy`` is their retry layer, with backoff
across deliveries, so a failing object costs at most ``retry.max_attempts`` GETs. Everything without a
retry layer of its own (``fakesake scan`` fetches, prefix listings of ``submit`` and ``scan``, model
weights, the result sink) keeps boto3's standard mode with ``s3.max_attempts``: a scan is one pass with
no job to retry, and a listing that failed one page would otherwise fail the whole submit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from producers.errors import ConfigError, ErrorCode, FakesakeError, PermanentError, TransientError
from producers.settings import S3Settings

S3Client = Any  # botocore builds the client class at run time; boto3-stubs are optional
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
    max_attempts: int | None = None,
) -> S3Client:
    """A boto3 S3 client for ``s3`` (standard retry mode, bounded timeouts). Call it after fork.

    ``max_attempts`` overrides ``s3.max_attempts``; 1 for callers that retry themselves (see the module doc).
    The mode stays ``standard`` either way, so clients differ only in how many attempts they make."""
    import boto3
    from botocore.config import Config

    if (s3.access_key_id is None) != (s3.secret_access_key is None):
        raise ConfigError("set both FAKESAKE_S3__ACCESS_KEY_ID and FAKESAKE_S3__SECRET_ACCESS_KEY, or neither")
    if max_attempts is not None and max_attempts < 1:
        raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
    config = Config(
        retries={"mode": "standard", "total_max_attempts": s3.max_attempts if max_attempts is None else max_attempts},
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
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        config=config,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
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
