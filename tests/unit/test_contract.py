"""The wire contract: validation of job messages, JSON round trips, names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from producers.contract import ALL_QUEUES, ErrorInfo, JobMessage, JobResult, Keys, Priority, Status, queue_name
from producers.errors import ErrorCode, PermanentError, TransientError, as_fakesake_error


def test_job_round_trips_through_json() -> None:
    job = JobMessage(tenant="acme", source="s3://bucket/a.jpg", idempotency_key="k1")
    again = JobMessage.model_validate_json(job.model_dump_json())
    assert again == job
    assert len(job.job_id) == 32


@pytest.mark.parametrize(
    "fields",
    [
        {"tenant": "acme", "source": "gopher://x/y"},
        {"tenant": "acme", "source": "/etc/passwd"},
        {"tenant": "", "source": "s3://b/k"},
        {"tenant": "a b", "source": "s3://b/k"},
        {"tenant": "acme", "source": "s3://b/k", "callback_url": "file:///tmp/x"},
        {"tenant": "acme", "source": "s3://b/k", "priority": "urgent"},
        {"tenant": "acme", "source": "s3://b/k", "unexpected": 1},
        {"tenant": "acme", "source": "s3://b/k", "job_id": "../../etc"},
    ],
)
def test_bad_jobs_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        JobMessage.model_validate(fields)


def test_queue_names_and_tenant_scoped_keys() -> None:
    assert queue_name(Priority.INTERACTIVE) == "fakesake.interactive"
    assert queue_name("bulk") == "fakesake.bulk"
    assert ALL_QUEUES == ("fakesake.interactive", "fakesake.bulk")
    assert Keys.result("a", "j1") != Keys.result("b", "j1")


def test_result_ok_property() -> None:
    ok = JobResult(job_id="j", tenant="t", source="s", status=Status.OK, score=0.2)
    bad = JobResult(
        job_id="j", tenant="t", source="s", status=Status.ERROR, error=ErrorInfo(code="not-found", message="gone")
    )
    assert ok.ok and not bad.ok


def test_error_classes_decide_retry() -> None:
    assert TransientError(ErrorCode.TIMEOUT, "slow").retryable
    assert not PermanentError(ErrorCode.NOT_AN_IMAGE, "html").retryable
    internal = as_fakesake_error(ZeroDivisionError("boom"))
    assert internal.code is ErrorCode.INTERNAL and not internal.retryable
    assert internal.to_dict()["code"] == "internal"


def test_error_codes_are_kebab_case() -> None:
    for code in ErrorCode:
        assert code.value == code.value.lower() and "_" not in code.value
