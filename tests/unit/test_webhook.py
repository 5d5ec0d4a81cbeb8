"""Webhook signing, verification (replay window, tampering) and delivery through an injected poster."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from producers.contract import JobResult, Status
from producers.errors import is_retryable_status
from producers.webhook import (
    JOB_ID_HEADER,
    SIGNATURE_HEADER,
    deliver,
    sign,
    signature_header,
    verify,
)

SECRET = "whsec_test"
BODY = b'{"job_id": "abc", "status": "ok"}'
TS = 1_700_000_000


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET, TS) == expected
    assert signature_header(BODY, SECRET, TS) == f"t={TS},v1={expected}"


@pytest.mark.parametrize(
    ("body", "header", "secret", "now", "ok"),
    [
        (BODY, signature_header(BODY, SECRET, TS), SECRET, TS + 10, True),
        (BODY, signature_header(BODY, SECRET, TS), SECRET, TS - 299, True),  # small clock skew either way
        (BODY, signature_header(BODY, SECRET, TS), SECRET, TS + 301, False),  # replayed too late
        (BODY + b" ", signature_header(BODY, SECRET, TS), SECRET, TS, False),  # body tampered
        (BODY, signature_header(BODY, SECRET, TS), "other", TS, False),  # wrong secret
        (BODY, signature_header(BODY, SECRET, TS).replace(f"t={TS}", f"t={TS + 1}"), SECRET, TS, False),
        (BODY, f"t={TS},v1=deadbeef,v1={sign(BODY, SECRET, TS)}", SECRET, TS, True),  # rotated secrets
        (BODY, f"v1={sign(BODY, SECRET, TS)}", SECRET, TS, False),  # no timestamp
        (BODY, f"t={TS}", SECRET, TS, False),  # no signature
        (BODY, "garbage", SECRET, TS, False),
        (BODY, f"t=soon,v1={sign(BODY, SECRET, TS)}", SECRET, TS, False),
    ],
)
def test_verify(body: bytes, header: str, secret: str, now: int, ok: bool) -> None:
    assert verify(body, header, secret, tolerance_s=300, now=now) is ok


def test_deliver_posts_signed_result() -> None:
    result = JobResult(
        job_id="job12345",
        tenant="acme",
        source="s3://b/a.jpg",
        status=Status.OK,
        score=0.7,
        label="ai",
        band="ai",
        model="ffs-mj-5m@1.0",
    )
    calls: list[tuple[str, bytes, dict[str, str]]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        calls.append((url, body, headers))
        return 204

    assert deliver(result, "https://hooks.example/cb", SECRET, post, now=TS) == 204
    ((url, body, headers),) = calls
    assert url == "https://hooks.example/cb"
    assert JobResult.model_validate(json.loads(body)) == result
    assert headers["Content-Type"] == "application/json" and headers[JOB_ID_HEADER] == "job12345"
    assert verify(body, headers[SIGNATURE_HEADER], SECRET, now=TS)


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (200, False),
        (204, False),
        (400, False),
        (404, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
    ],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry
