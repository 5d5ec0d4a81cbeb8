"""The small protocols the core talks through. Adapters (HTTP, S3, torch, Redis) implement them;
tests implement them with in-memory fakes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from producers.contract import JobResult


@dataclass(frozen=True)
class Fetched:
    """Bytes of one source, plus what the fetcher learnt on the way (for evidence and logs)."""

    data: bytes
    source: str
    content_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Fetcher(Protocol):
    """Fetch the bytes of one source. Raises PermanentError / TransientError with a code."""

    def fetch(self, source: str, *, version: str | None = None) -> Fetched: ...


class Classifier(Protocol):
    """P(AI) for each preprocessed input of a batch (one float per input, same order)."""

    def predict(self, batch: Sequence[Any]) -> list[float]: ...


class ResultStore(Protocol):
    """Durable, idempotent result writes keyed by (tenant, job id)."""

    def put_final(self, result: JobResult) -> JobResult:
        """Store ``result`` unless a final result exists; return the one that is stored."""
        ...

    def get(self, tenant: str, job_id: str) -> JobResult | None: ...


class RateLimiter(Protocol):
    def reserve(self, scope: str, name: str, rate_per_s: float, burst: int, max_wait_s: float) -> tuple[float, bool]:
        """Take the next slot if it is at most ``max_wait_s`` away: ``(wait_s, True)`` (0 = now), else
        ``(wait_s, False)`` with nothing taken."""
        ...


class Clock(Protocol):
    def __call__(self) -> float: ...
