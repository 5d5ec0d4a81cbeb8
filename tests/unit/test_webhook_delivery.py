"""One webhook attempt: delivered, retried on transient failures, given up on permanent ones or at the cap."""

from __future__ import annotations

import pytest

from producers.contract import JobResult, Status
from producers.errors import ErrorCode, PermanentError, TransientError
from producers.webhook import SIGNATURE_HEADER, verify
from worker import webhook_delivery
from worker.service.settings import WorkerSettings

RESULT = JobResult(job_id="job1", tenant="acme", source="s3://b/k.jpg", status=Status.OK, score=0.9)
SECRET = "s3cret"


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def webhook(self, outcome: str) -> None:
        self.outcomes.append(outcome)


def _settings(secret: str | None = SECRET, max_attempts: int = 3) -> WorkerSettings:
    return WorkerSettings.model_validate(
        {
            "results": {"webhook_secret": secret, "webhook_max_attempts": max_attempts},
            "retry": {"backoff_base_s": 1, "backoff_max_s": 4},
        }
    )


def _poster(monkeypatch: pytest.MonkeyPatch, reply: int | Exception) -> list[tuple[str, bytes, dict[str, str]]]:
    sent: list[tuple[str, bytes, dict[str, str]]] = []

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        sent.append((url, body, headers))
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(webhook_delivery, "make_poster", lambda policy: post)
    return sent


def test_delivered_once_and_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, rec = _poster(monkeypatch, 204), Recorder()
    assert webhook_delivery.deliver_once(_settings(), RESULT, "https://hooks.example/x", 1, rec) is None
    ((url, body, headers),) = sent
    assert url == "https://hooks.example/x" and verify(body, headers[SIGNATURE_HEADER], SECRET)
    assert rec.outcomes == ["ok"]


@pytest.mark.parametrize("reply", [503, 429, TransientError(ErrorCode.FETCH_FAILED, "connection reset")])
def test_transient_failures_are_retried_with_backoff(monkeypatch: pytest.MonkeyPatch, reply: int | Exception) -> None:
    _poster(monkeypatch, reply)
    rec = Recorder()
    countdown = webhook_delivery.deliver_once(_settings(), RESULT, "https://hooks.example/x", 2, rec)
    assert countdown is not None and 1.0 <= countdown <= 2.0
    assert rec.outcomes == ["retry"]


@pytest.mark.parametrize(
    ("reply", "attempt"),
    [(400, 1), (PermanentError(ErrorCode.FORBIDDEN_ADDRESS, "127.0.0.1"), 1), (503, 3)],
)
def test_permanent_failures_and_the_last_attempt_give_up(
    monkeypatch: pytest.MonkeyPatch, reply: int | Exception, attempt: int
) -> None:
    _poster(monkeypatch, reply)
    rec = Recorder()
    assert webhook_delivery.deliver_once(_settings(max_attempts=3), RESULT, "https://h/x", attempt, rec) is None
    assert rec.outcomes == ["failed"]


def test_no_secret_means_no_unsigned_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, rec = _poster(monkeypatch, 200), Recorder()
    assert webhook_delivery.deliver_once(_settings(secret=None), RESULT, "https://h/x", 1, rec) is None
    assert sent == [] and rec.outcomes == ["failed"]
