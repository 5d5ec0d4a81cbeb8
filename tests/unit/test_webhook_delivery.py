"""One webhook attempt: delivered, retried on transient failures, given up on permanent ones or at the cap,
and every webhook given up is dead-lettered (job id, tenant, URL, last error, attempts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from producers.contract import ErrorInfo, JobResult, Status
from producers.errors import ErrorCode, PermanentError, TransientError
from producers.webhook import SIGNATURE_HEADER, verify
from worker.core.retry import RetryPolicy
from worker.service.webhook_delivery import WebhookSender

RESULT = JobResult(job_id="job1", tenant="acme", source="s3://b/k.jpg", status=Status.OK, score=0.9)
SECRET = "s3cret"
URL = "https://hooks.example/x?token=abc"


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def webhook(self, outcome: str) -> None:
        self.outcomes.append(outcome)


@dataclass
class MemorySink:
    """In-memory dead letters: first record per job kept, as on Redis."""

    records: dict[str, tuple[JobResult, str, ErrorInfo, int]] = field(default_factory=dict)
    broken: bool = False

    def add_webhook(self, result: JobResult, url: str, error: ErrorInfo, attempts: int) -> bool:
        if self.broken:
            raise ConnectionError("redis is away")
        if result.job_id in self.records:
            return False
        self.records[result.job_id] = (result, url, error, attempts)
        return True


@dataclass
class Poster:
    reply: int | Exception
    sent: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.sent.append((url, body, headers))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def _sender(poster: Poster, sink: MemorySink, secret: str | None = SECRET, max_attempts: int = 3) -> WebhookSender:
    return WebhookSender(
        post=poster,
        secret=secret,
        max_attempts=max_attempts,
        retry=RetryPolicy(backoff_base_s=1, backoff_max_s=4),
        dead_letters=sink,
    )


def test_delivered_once_and_signed() -> None:
    poster, sink, rec = Poster(204), MemorySink(), Recorder()
    assert _sender(poster, sink).attempt(RESULT, URL, 1, rec) is None
    ((url, body, headers),) = poster.sent
    assert url == URL and verify(body, headers[SIGNATURE_HEADER], SECRET)
    assert JobResult.model_validate_json(body) == RESULT
    assert rec.outcomes == ["ok"] and sink.records == {}


@pytest.mark.parametrize("reply", [503, 429, TransientError(ErrorCode.FETCH_FAILED, "connection reset")])
def test_transient_failures_are_retried_with_backoff_and_not_dead_lettered(reply: int | Exception) -> None:
    sink, rec = MemorySink(), Recorder()
    countdown = _sender(Poster(reply), sink).attempt(RESULT, URL, 2, rec)
    assert countdown is not None and 1.0 <= countdown <= 2.0
    assert rec.outcomes == ["retry"] and sink.records == {}


@pytest.mark.parametrize(
    ("reply", "attempt", "code", "message"),
    [
        (410, 1, "fetch-failed", "HTTP 410"),
        (400, 1, "fetch-failed", "HTTP 400"),
        (
            PermanentError(ErrorCode.FORBIDDEN_ADDRESS, "127.0.0.1 is private"),
            1,
            "forbidden-address",
            "127.0.0.1 is private",
        ),
        (503, 3, "fetch-failed", "HTTP 503"),  # the last attempt
        (TransientError(ErrorCode.TIMEOUT, "read timed out"), 3, "timeout", "read timed out"),
    ],
)
def test_a_webhook_given_up_is_dead_lettered(
    reply: int | Exception, attempt: int, code: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink, rec = MemorySink(), Recorder()
    assert _sender(Poster(reply), sink, max_attempts=3).attempt(RESULT, URL, attempt, rec) is None
    assert rec.outcomes == ["failed"]
    # operators grep the log for the code; the URL's query (a receiver's token) never shows
    assert (
        f"https://hooks.example/x?<redacted> failed for good after {attempt} attempts: {code}: {message}" in caplog.text
    )
    ((result, url, error, attempts),) = sink.records.values()
    assert (result, url, attempts) == (RESULT, URL, attempt)
    assert (error.code, error.message) == (code, message)


def test_no_secret_means_no_unsigned_webhook_and_a_dead_letter() -> None:
    poster, sink, rec = Poster(200), MemorySink(), Recorder()
    assert _sender(poster, sink, secret=None).attempt(RESULT, URL, 1, rec) is None
    assert poster.sent == [] and rec.outcomes == ["failed"]
    ((result, url, error, attempts),) = sink.records.values()
    assert (result, url, attempts, error.code) == (RESULT, URL, 1, "config")
    assert "webhook_secret" in error.message


def test_a_sink_that_fails_does_not_fail_the_delivery_task() -> None:
    sink, rec = MemorySink(broken=True), Recorder()
    assert _sender(Poster(410), sink).attempt(RESULT, URL, 1, rec) is None
    assert rec.outcomes == ["failed"]
