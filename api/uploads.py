"""Direct upload (``POST /v1/uploads``): image bytes sent to the API, stored in a configured S3 bucket, then
enqueued like any ``s3://`` job. For clients without storage of their own; off unless ``api.upload_bucket`` is set.

Bounded at every step: the body is counted as it arrives and refused past ``api.upload_max_bytes``
(:class:`api.limits.BodyLimit` refuses a larger declared ``Content-Length`` unread); it is spooled in memory
up to :data:`SPOOL_MEMORY_BYTES` and on disk beyond, never held whole in memory. Only image types the worker
decodes are stored: the first bytes are sniffed, whatever ``Content-Type`` claims. Object keys are namespaced
per tenant and day, ``<prefix>/<tenant>/yyyy/mm/dd/<uuid4>.<ext>``: a tenant's uploads are one prefix (for
lifecycle rules and deletion requests), and names are unguessable.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from producers.errors import ConfigError, ErrorCode, PermanentError, TransientError
from producers.s3 import s3_error

log = logging.getLogger(__name__)

SPOOL_MEMORY_BYTES = 1 << 20
#: Bytes the sniffer needs (the longest signature it checks).
SNIFF_BYTES = 16


@dataclass(frozen=True)
class ImageType:
    mime: str
    ext: str


def sniff(head: bytes) -> ImageType:
    """The image type of bytes starting with ``head`` (the formats the worker decodes), else ``not-an-image``."""
    if head.startswith(b"\xff\xd8\xff"):
        return ImageType("image/jpeg", "jpg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageType("image/png", "png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ImageType("image/gif", "gif")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ImageType("image/webp", "webp")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageType("image/tiff", "tif")
    # "BM" alone is too weak (text can start with it): the header's two reserved 16-bit fields are zero.
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":
        return ImageType("image/bmp", "bmp")
    raise PermanentError(
        ErrorCode.NOT_AN_IMAGE, "the body is not a JPEG, PNG, GIF, WebP, TIFF or BMP image (judged by its bytes)"
    )


def object_key(prefix: str, tenant: str, when: datetime, ext: str, name: str | None = None) -> str:
    """``<prefix>/<tenant>/yyyy/mm/dd/<uuid4 hex>.<ext>`` (``prefix`` without its slashes; empty: none)."""
    stem = prefix.strip("/")
    parts = [stem] if stem else []
    parts += [tenant, f"{when:%Y}", f"{when:%m}", f"{when:%d}", f"{name or uuid.uuid4().hex}.{ext}"]
    return "/".join(parts)


class Spool:
    """The upload's bytes: in memory up to :data:`SPOOL_MEMORY_BYTES`, then in a temporary file; ``too-large``
    as soon as more than ``max_bytes`` were written."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.head = b""
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PermanentError(ErrorCode.TOO_LARGE, f"upload over {self.max_bytes} bytes (api.upload_max_bytes)")
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
        self.file.write(chunk)

    def image_type(self) -> ImageType:
        if self.size == 0:
            raise PermanentError(ErrorCode.NOT_AN_IMAGE, "empty body: send the image's bytes")
        return sniff(self.head)

    def rewind(self) -> IO[bytes]:
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class UploadBucket:
    """Where uploads go: ``put`` stores a spooled image under a fresh tenant-scoped key, ``delete`` removes one
    (an upload whose job turned out to be a duplicate)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def put(self, spool: Spool, tenant: str, when: datetime) -> tuple[str, str | None]:
        """Store the image; return its ``s3://`` source and the version id (None in an unversioned bucket)."""
        kind = spool.image_type()
        key = object_key(self.prefix, tenant, when, kind.ext)
        try:
            put = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=spool.rewind(), ContentLength=spool.size, ContentType=kind.mime
            )
        except Exception as exc:  # botocore's errors, mapped by the one S3 error policy
            error = s3_error(exc, f"upload to s3://{self.bucket}/{key}")
            # The bucket is the service's, not the caller's: its trouble is ours (503 or 500), never a 404/403.
            if error.retryable:
                raise TransientError(ErrorCode.UNAVAILABLE, "upload storage unavailable; retry later") from exc
            log.error("upload storage refused an object: %s", error.message)
            raise ConfigError("upload storage refused the object (see the server log)") from exc
        return f"s3://{self.bucket}/{key}", put.get("VersionId")

    def delete(self, source: str) -> None:
        key = source.removeprefix(f"s3://{self.bucket}/")
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception:  # an orphan object costs storage, not correctness: the bucket's lifecycle rule reaps it
            log.warning("could not delete the duplicate upload %s", source, exc_info=True)
