"""Signed webhooks: POST a job's final result to its ``callback_url``.

Signature (Stripe-style, documented for receivers)::

    X-Fakesake-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + raw body)>

A receiver recomputes the HMAC over the *raw* request body with the timestamp from the header, compares in
constant time, and rejects timestamps outside a replay window — :func:`verify` does all three::

    from producers.webhook import SIGNATURE_HEADER, verify
    if not verify(request.body, request.headers[SIGNATURE_HEADER], secret):
        return 400

Delivery is one attempt through an injected ``post`` callable (the SSRF-safe HTTP client); retries with
backoff belong to the caller (a Celery task), using :func:`producers.errors.is_retryable_status`. A webhook
failure never touches the stored result.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from producers.contract import JobResult

SIGNATURE_HEADER = "X-Fakesake-Signature"
JOB_ID_HEADER = "X-Fakesake-Job-Id"
SCHEME = "v1"

Poster = Callable[[str, bytes, dict[str, str]], int]
"""``post(url, body, headers) -> HTTP status``; raises on network failure."""


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}."`` + body under ``secret``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(body: bytes, secret: str, timestamp: int) -> str:
    """The value of :data:`SIGNATURE_HEADER`: ``t=<timestamp>,v1=<hex>``."""
    return f"t={timestamp},{SCHEME}={sign(body, secret, timestamp)}"


def verify(body: bytes, header: str, secret: str, tolerance_s: int = 300, now: float | None = None) -> bool:
    """True if ``header`` is a valid signature of ``body`` made within ``tolerance_s`` of ``now``.

    Accepts several ``v1=`` entries (a sender rotating secrets); any malformed header is False.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == SCHEME:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(body, secret, timestamp)
    # compare_digest on every candidate (no early exit) keeps the timing independent of which matched
    return sum(hmac.compare_digest(expected, c) for c in candidates) > 0


def deliver(result: JobResult, url: str, secret: str, post: Poster, *, now: float | None = None) -> int:
    """POST ``result`` as JSON to ``url``, signed with ``secret``; return the HTTP status.

    The body is ``result.model_dump_json()`` exactly as signed: receivers must verify the raw bytes.
    """
    body = result.model_dump_json().encode()
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature_header(body, secret, timestamp),
        JOB_ID_HEADER: result.job_id,
    }
    return post(url, body, headers)
