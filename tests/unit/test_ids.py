"""The id check every Redis key built from a tenant or a job id goes through."""

from __future__ import annotations

import pytest

from producers.errors import ErrorCode, PermanentError
from producers.ids import check_ids


@pytest.mark.parametrize("tenant", ["acme", "team_7", "a-b"])
def test_plain_ids_pass(tenant: str) -> None:
    check_ids(tenant, "0123456789abcdef")


@pytest.mark.parametrize(
    ("tenant", "job_id", "code"),
    [
        ("ac:me", None, ErrorCode.INVALID_JOB),
        ("", None, ErrorCode.INVALID_JOB),
        ("acme", "short", ErrorCode.INVALID_JOB),
        ("acme", "job:0123456789", ErrorCode.INVALID_JOB),
    ],
)
def test_ids_that_would_leave_their_namespace_are_refused(tenant: str, job_id: str | None, code: ErrorCode) -> None:
    with pytest.raises(PermanentError) as info:
        check_ids(tenant, job_id)
    assert info.value.code is code


def test_a_lookup_calls_a_malformed_job_id_not_found() -> None:
    with pytest.raises(PermanentError) as info:
        check_ids("acme", "job:0123456789", bad_job=ErrorCode.NOT_FOUND)
    assert info.value.code is ErrorCode.NOT_FOUND and "job:0123456789" in info.value.message
