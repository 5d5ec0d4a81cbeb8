"""Webhook delivery from a worker: one SSRF-checked, signed POST per call, and what to do next.

Signing is :mod:`producers.webhook` (pure); the retry decision is :class:`~worker.core.retry.RetryPolicy`'s;
the Celery task only schedules the countdown this returns. A webhook failure never touches the stored result.
A webhook that fails for good (a permanent error, its attempts spent, or no signing secret to send it with)
becomes a dead letter of its own kind through a :class:`WebhookDeadLetterSink`, so an operator can see it
(``fakesake dlq list --kind webhook``) and re-send it (``fakesake dlq retry``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from producers.contract import ErrorInfo, JobResult
from producers.errors import ErrorCode, FakesakeError, PermanentError, TransientError, is_retryable_status
from producers.redaction import redact_url
from producers.webhook import Poster, deliver
from worker.core.retry import RetryPolicy

log = logging.getLogger(__name__)


class WebhookDeadLetterSink(Protocol):
    """Where webhooks that failed for good are kept (``producers.dlq.DeadLetters`` on Redis)."""

    def add_webhook(self, result: JobResult, url: str, error: ErrorInfo, attempts: int) -> bool:
        """Record it; True if new, False if this job's webhook already waits there."""
        ...


@dataclass(frozen=True)
class WebhookSender:
    post: Poster
    secret: str | None
    max_attempts: int
    retry: RetryPolicy
    dead_letters: WebhookDeadLetterSink

    def attempt(self, result: JobResult, url: str, attempt: int, telemetry: Any) -> float | None:
        """POST ``result`` to ``url``; None when finished (delivered or given up), else a retry countdown."""
        if self.secret is None:
            log.error(
                "callback %s not sent: results.webhook_secret is not set (unsigned webhooks are refused)",
                redact_url(url),
            )
            missing = PermanentError(
                ErrorCode.CONFIG, "results.webhook_secret is not set; unsigned webhooks are refused"
            )
            self._give_up(result, url, missing, attempt, telemetry)
            return None
        error: FakesakeError | None
        try:
            status = deliver(result, url, self.secret, self.post)
            error = None if status < 300 else _status_error(status)
        except FakesakeError as exc:  # SSRF refusals are permanent, network trouble transient
            error = exc
        if error is None:
            telemetry.webhook("ok")
            return None
        countdown = self.retry.retry_in(error, attempt, max_attempts=self.max_attempts)
        if countdown is not None:
            log.warning(
                "webhook to %s failed (%s: %s); attempt %d, retrying in %.1fs",
                redact_url(url),
                error.code.value,
                error.message,
                attempt,
                countdown,
            )
            telemetry.webhook("retry")
            return countdown
        log.error(
            "webhook to %s failed for good after %d attempts: %s: %s",
            redact_url(url),
            attempt,
            error.code.value,
            error.message,
        )
        self._give_up(result, url, error, attempt, telemetry)
        return None

    def _give_up(self, result: JobResult, url: str, error: FakesakeError, attempt: int, telemetry: Any) -> None:
        telemetry.webhook("failed")
        info = ErrorInfo(code=error.code.value, message=error.message, retryable=error.retryable)
        try:
            self.dead_letters.add_webhook(result, url, info, attempts=attempt)
        except Exception:  # Redis away: the failure is logged and counted; the task must still finish
            log.exception("webhook of job %s to %s could not be dead-lettered", result.job_id, redact_url(url))


def _status_error(status: int) -> FakesakeError:
    message = f"HTTP {status}"
    if is_retryable_status(status):
        return TransientError(ErrorCode.FETCH_FAILED, message)
    return PermanentError(ErrorCode.FETCH_FAILED, message)
