"""The retry policy: every decision to try a job or a webhook again is made here, from the error's class.

Fetchers make exactly one attempt (boto3's own retries are off for sources, see ``worker.service.builder``);
the job's retries are the only retries, so a flaky S3 object costs at most ``max_attempts`` GETs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from producers.errors import FakesakeError, TransientError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_deliveries: int = 3

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_deliveries < 1:
            raise ValueError("max_attempts and max_deliveries must be >= 1")
        if self.backoff_base_s <= 0 or self.backoff_max_s <= 0:
            raise ValueError("backoff_base_s and backoff_max_s must be > 0")

    def backoff_s(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, capped."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempt - 1))
        return float(ceiling / 2 + ceiling / 2 * rng())

    def retry_in(
        self,
        error: FakesakeError,
        attempt: int,
        *,
        max_attempts: int | None = None,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds until the next attempt after ``attempt`` failed with ``error``; None = give up (final).

        Permanent errors are final at once; transient ones are retried until ``max_attempts`` (this policy's
        unless given, e.g. the webhook's own limit). A server's ``Retry-After`` raises the wait, capped.
        """
        limit = self.max_attempts if max_attempts is None else max_attempts
        if not error.retryable or attempt >= limit:
            return None
        countdown = self.backoff_s(attempt, rng)
        if isinstance(error, TransientError) and error.retry_after_s:
            countdown = max(countdown, min(error.retry_after_s, self.backoff_max_s))
        return countdown
