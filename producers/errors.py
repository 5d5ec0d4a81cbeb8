"""The one error vocabulary of fakesake.

Every failure that reaches a user carries a machine-readable :class:`ErrorCode` and a human message.
Whether to retry is decided here, by the class of the error, never by matching message text:
:class:`PermanentError` means "this input will never succeed", :class:`TransientError` means "try again
later". Anything else that escapes is turned into ``internal`` by :func:`as_fakesake_error`.

Imports only the standard library: producers use it without torch.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable kebab-case codes. Adding a code is fine; renaming one breaks clients."""

    # Input problems (permanent)
    NOT_FOUND = "not-found"
    NOT_AN_IMAGE = "not-an-image"
    UNSUPPORTED_FORMAT = "unsupported-format"
    CORRUPT_IMAGE = "corrupt-image"
    TOO_LARGE = "too-large"
    TOO_MANY_PIXELS = "too-many-pixels"
    FORBIDDEN_ADDRESS = "forbidden-address"
    FORBIDDEN = "forbidden"
    UNAUTHORIZED = "unauthorized"  # the HTTP API: no API key, an unknown one, or a revoked one
    INVALID_SOURCE = "invalid-source"
    INVALID_JOB = "invalid-job"
    UNKNOWN_MODEL = "unknown-model"
    UNSERVED_MODEL = "unserved-model"  # at submit: no live worker serves the job's detectors
    POISON = "poison"
    # Evidence entries only: the image is still classified, one metadata signal could not be read
    METADATA_UNREADABLE = "metadata-unreadable"
    METADATA_TOO_LARGE = "metadata-too-large"
    METADATA_UNSAFE = "metadata-unsafe"  # XML with a DTD or entities: refused, never expanded
    REMOTE_MANIFEST = "remote-manifest"  # a C2PA manifest kept at a URL: never fetched
    # Conditions of the moment (transient)
    FETCH_FAILED = "fetch-failed"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate-limited"
    UNAVAILABLE = "unavailable"
    QUEUE_FULL = "queue-full"
    NOT_FINISHED = "not-finished"  # asked about a job's result (feedback) before it has one
    # Our fault
    INTERNAL = "internal"
    CONFIG = "config"


class FakesakeError(Exception):
    """Root error: a code, a human message and whether trying again can help."""

    retryable: bool = False

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code.value, "message": self.message, "retryable": self.retryable}


class PermanentError(FakesakeError):
    """The input itself is bad; retrying yields the same answer."""

    retryable = False


class TransientError(FakesakeError):
    """A condition of the moment (network, 5xx, overload); retrying may succeed."""

    retryable = True

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after_s = retry_after_s


class ConfigError(FakesakeError):
    """Misconfiguration (unknown model, missing weights): the process cannot serve at all."""

    retryable = False

    def __init__(self, message: str, code: ErrorCode = ErrorCode.CONFIG) -> None:
        super().__init__(code, message)


def as_fakesake_error(exc: BaseException) -> FakesakeError:
    """Map any exception to a FakesakeError; unknown ones become ``internal`` (not retried)."""
    if isinstance(exc, FakesakeError):
        return exc
    return PermanentError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP answer is worth another try (timeout, too early, throttled, server error), for fetches
    and webhook deliveries alike."""
    return status in (408, 425, 429) or status >= 500
