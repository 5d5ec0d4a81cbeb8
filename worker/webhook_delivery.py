"""One webhook delivery attempt from a worker: SSRF-checked POST, signed, with a retry decision.

Kept apart from :mod:`worker.webhook` (signing, pure) and from the Celery task (retry mechanics): this is the
glue that picks the poster and the backoff.
"""

from __future__ import annotations

import logging
from typing import Any

from producers.contract import JobResult
from producers.errors import FakesakeError
from worker.fetch.http import make_poster
from worker.fetch.policy import FetchPolicy
from worker.fetch.ssrf import redact_url
from worker.processing import RetryPolicy
from worker.settings import WorkerSettings
from worker.webhook import deliver, is_retryable_status

log = logging.getLogger(__name__)


def deliver_once(settings: WorkerSettings, result: JobResult, url: str, attempt: int, telemetry: Any) -> float | None:
    """POST ``result`` to ``url``; None when finished (delivered or given up), else a retry countdown."""
    secret = settings.results.webhook_secret
    if secret is None:
        log.error("callback %s not sent: results.webhook_secret is not set (unsigned webhooks are refused)",
                  redact_url(url))
        telemetry.webhook("failed")
        return None
    post = make_poster(FetchPolicy.from_settings(settings))
    try:
        status = deliver(result, url, secret.get_secret_value(), post)
        retryable = is_retryable_status(status)
        failure = f"HTTP {status}" if status >= 300 else None
    except FakesakeError as exc:  # SSRF refusals are permanent, network trouble transient
        retryable, failure = exc.retryable, f"{exc.code.value}: {exc.message}"
    if failure is None:
        telemetry.webhook("ok")
        return None
    if retryable and attempt < settings.results.webhook_max_attempts:
        countdown = RetryPolicy(**settings.retry.model_dump()).backoff_s(attempt)
        log.warning("webhook to %s failed (%s); attempt %d, retrying in %.1fs", redact_url(url), failure,
                    attempt, countdown)
        telemetry.webhook("retry")
        return countdown
    log.error("webhook to %s failed for good after %d attempts: %s", redact_url(url), attempt, failure)
    telemetry.webhook("failed")
    return None
