"""The HTTP API's pure parts: keys, error mapping, cursors, request models; its imports; its OpenAPI file."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from api import errors, keys
from api.models import JobsRequest, SourceRef
from api.pagination import Position, decode_cursor, encode_cursor, start
from producers.errors import ErrorCode, PermanentError, TransientError
from tests.support.workers import REPO_ROOT


def test_a_new_key_is_well_formed_and_stored_only_as_its_hash() -> None:
    key, key_id = keys.new_key()
    assert keys.well_formed(key) and key.startswith(f"fsk_{key_id}_")
    assert keys.key_hash(key) == keys.key_hash(key) and len(keys.key_hash(key)) == 64
    assert key not in keys.record_key(keys.key_hash(key))
    assert keys.new_key()[0] != key


@pytest.mark.parametrize(
    "bad", ["", "fsk_", "Bearer x", "fsk_zzzzzzzzzzzz_" + "a" * 43, "fsk_0123456789ab_" + "a" * 42]
)
def test_malformed_keys_are_refused_before_any_lookup(bad: str) -> None:
    assert not keys.well_formed(bad)


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (PermanentError(ErrorCode.UNAUTHORIZED, "no key"), 401, None),
        (PermanentError(ErrorCode.NOT_FOUND, "no job"), 404, None),
        (PermanentError(ErrorCode.INVALID_SOURCE, "bad"), 422, None),
        (PermanentError(ErrorCode.TOO_LARGE, "big"), 413, None),
        (TransientError(ErrorCode.RATE_LIMITED, "slow down", retry_after_s=2.2), 429, "3"),
        (TransientError(ErrorCode.QUEUE_FULL, "full", retry_after_s=0.1), 503, "1"),
        (TransientError(ErrorCode.UNAVAILABLE, "redis"), 503, "1"),
        (PermanentError(ErrorCode.INTERNAL, "bug"), 500, None),
    ],
)
def test_errors_map_to_one_status_and_retry_after(error: PermanentError, status: int, retry_after: str | None) -> None:
    assert errors.status_of(error) == status
    assert errors.headers_of(error).get("Retry-After") == retry_after
    assert errors.body(error.code, error.message) == {"error": {"code": error.code.value, "message": error.message}}


def test_cursors_round_trip_and_order_ties_by_job_id() -> None:
    position = Position(1764460000.123456, "job-b")
    assert decode_cursor(encode_cursor(position)) == position
    assert position.after(1764460000.123456, "job-c") and not position.after(1764460000.123456, "job-a")
    assert start(datetime(2026, 1, 1, tzinfo=UTC), None).score == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert start(None, None).score == float("-inf")


@pytest.mark.parametrize("cursor", ["%%%", "bm90IGEgY3Vyc29y", encode_cursor(Position(1.0, "x")).replace("M", "*")])
def test_foreign_cursors_are_invalid_job(cursor: str) -> None:
    with pytest.raises(PermanentError) as caught:
        decode_cursor(cursor)
    assert caught.value.code is ErrorCode.INVALID_JOB


def test_a_request_names_one_source_or_a_list() -> None:
    one = JobsRequest(source="s3://b/k", source_version="v1")
    assert one.refs() == [SourceRef(source="s3://b/k", source_version="v1")]
    many = JobsRequest.model_validate({"sources": ["https://x/a.jpg", {"source": "s3://b/k", "source_version": "2"}]})
    assert [r.source_version for r in many.refs()] == [None, "2"]
    bads: list[dict[str, object]] = [
        {},
        {"source": "s3://b/k", "sources": ["s3://b/k"]},
        {"sources": []},
        {"source": "s3://b/k", "x": 1},
    ]
    for bad in bads:
        with pytest.raises(ValidationError):
            JobsRequest.model_validate(bad)


def test_importing_api_imports_no_server_and_no_torch() -> None:
    code = (
        "import sys, api, api.cli, api.service, producers\n"
        "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'torch', 'PIL', 'celery') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_committed_openapi_document_is_current() -> None:
    pytest.importorskip("fastapi")
    from api.openapi import PATH, document

    assert json.loads(PATH.read_text()) == document(), "run `python3 -m api.openapi` and commit docs/openapi.json"
