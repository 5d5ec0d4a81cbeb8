"""Errors as HTTP answers: one status per error code, one JSON body, ``Retry-After`` for transient refusals.

Every error the API returns is ``{"error": {"code": <ErrorCode>, "message": ...}}`` with the project's
codes (:mod:`producers.errors`), so a client handles an HTTP refusal the same way as a job's error result.
"""

from __future__ import annotations

import math
from typing import Any

from producers.errors import ErrorCode, FakesakeError, TransientError

_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.NOT_AN_IMAGE: 415,  # a direct upload whose bytes are no image type the worker decodes
    ErrorCode.INVALID_SOURCE: 422,
    ErrorCode.INVALID_JOB: 422,
    ErrorCode.UNKNOWN_MODEL: 422,
    ErrorCode.UNSERVED_MODEL: 409,
    ErrorCode.NOT_FINISHED: 409,  # feedback for a job that has no result yet (with Retry-After)
    ErrorCode.RATE_LIMITED: 429,
    # A full lane is the service's capacity, not the caller's quota: 503 with Retry-After, as for Redis trouble.
    ErrorCode.QUEUE_FULL: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}
DEFAULT_RETRY_AFTER_S = 1


def status_of(error: FakesakeError) -> int:
    """The HTTP status of ``error``: unknown codes are the server's fault (500)."""
    return _STATUS.get(error.code, 500)


def body(code: ErrorCode, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code.value, "message": message, **extra}}


def headers_of(error: FakesakeError) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) for transient errors; ``WWW-Authenticate`` for 401."""
    if error.code is ErrorCode.UNAUTHORIZED:
        return {"WWW-Authenticate": 'Bearer realm="fakesake"'}
    if isinstance(error, TransientError):
        wait = error.retry_after_s if error.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
        return {"Retry-After": str(max(1, math.ceil(wait)))}
    return {}


def validation_message(errors: list[Any]) -> str:
    """pydantic/FastAPI validation errors as one line: ``loc: msg; ...`` (no input values: they may be huge)."""
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f"; and {len(errors) - 10} more" if len(errors) > 10 else ""
    return "; ".join(parts) + more
