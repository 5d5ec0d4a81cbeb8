"""What the API does, apart from HTTP: authenticate, submit (validated and limited), read, list.

Framework-free and synchronous (redis-py): the FastAPI adapter (:mod:`api.app`) runs these calls in its
thread pool and maps ``FakesakeError`` to HTTP answers (:mod:`api.errors`). Submitting reuses
``Producer.build_jobs``/``enqueue``: the API accepts exactly what the Python producer accepts, with the same
idempotency and backpressure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from api.keys import StoredKey
from api.keystore import KeyStore
from api.models import IDEMPOTENCY_KEY, Detector, Feedback, FeedbackRecord, JobsRequest
from api.pagination import Position, encode_cursor, start
from api.settings import ApiSettings
from producers import wire
from producers.client import Producer, check_ids
from producers.connections import redis_errors, redis_from_settings, text
from producers.contract import KEY_PREFIX, JobResult, Keys, Status
from producers.errors import ErrorCode, FakesakeError, PermanentError, TransientError
from producers.ratelimit import RedisRateLimiter
from worker.core import registry

log = logging.getLogger(__name__)

#: The rate-limit scope of HTTP ingress (``Keys.rate("ingress", tenant)``); workers use ``tenant`` and ``host``.
INGRESS_SCOPE = "ingress"
#: Sources a caller over HTTP may name (the worker fetches them with its SSRF checks).
REMOTE_SCHEMES = ("s3", "https", "http")


def feedback_key(tenant: str) -> str:
    """Redis hash of a tenant's feedback: job id -> ``FeedbackRecord`` JSON."""
    return f"{KEY_PREFIX}:feedback:{tenant}"


@dataclass(frozen=True)
class Lookup:
    """``GET /v1/jobs/{id}``: the final result, or pending (``result`` None)."""

    job_id: str
    result: JobResult | None


class ApiService:
    """One per API process; thread-safe (redis-py clients are)."""

    def __init__(self, settings: ApiSettings, redis_client: Any | None = None) -> None:
        self.settings = settings
        self.redis = redis_client if redis_client is not None else redis_from_settings(settings.redis)
        self.producer = Producer(settings, redis_client=self.redis)
        self.keys = KeyStore(self.redis)
        self.limiter = RedisRateLimiter(self.redis)

    # -- auth -----------------------------------------------------------------------------------------
    def authenticate(self, key: str | None) -> StoredKey:
        record = None if not key else self.keys.authenticate(key)
        if record is None:
            raise PermanentError(ErrorCode.UNAUTHORIZED, "a valid API key is required (Authorization: Bearer KEY)")
        return record

    # -- submit ---------------------------------------------------------------------------------------
    def submit(self, tenant: str, request: JobsRequest, idempotency_key: str | None) -> list[str]:
        refs = request.refs()
        limit = self.settings.api.max_jobs_per_request
        if len(refs) > limit:
            raise PermanentError(ErrorCode.TOO_LARGE, f"{len(refs)} sources in one request; at most {limit}")
        if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
            raise PermanentError(ErrorCode.INVALID_JOB, "Idempotency-Key: 1-200 printable ASCII characters")
        items: list[dict[str, Any]] = []
        for n, ref in enumerate(refs):
            if urlsplit(ref.source).scheme.lower() not in REMOTE_SCHEMES:
                # file:// is for a developer's own machine (the producer CLI), never for a caller over HTTP.
                raise PermanentError(ErrorCode.INVALID_SOURCE, f"source {n}: only s3://, https:// and http:// sources")
            item: dict[str, Any] = {"source": ref.source, "source_version": ref.source_version}
            if idempotency_key is not None:
                # One key per source: resending the same request returns the same ids, source by source.
                item["idempotency_key"] = idempotency_key if len(refs) == 1 else f"{idempotency_key}#{n}"
            items.append(item)
        jobs = self.producer.build_jobs(
            items, tenant=tenant, model=request.model, priority=request.priority, callback_url=request.callback_url
        )
        self._model_known(jobs[0].model)
        self._take_ingress(tenant, len(jobs))
        return self.producer.enqueue(jobs)

    @staticmethod
    def _model_known(name: str) -> None:
        try:
            registry.get(name.partition("@")[0])
        except FakesakeError as exc:  # the registry names the known detectors in its message
            raise PermanentError(ErrorCode.UNKNOWN_MODEL, exc.message) from exc

    def _take_ingress(self, tenant: str, n: int) -> None:
        """Take ``n`` tokens of the tenant's ingress bucket at once, or refuse the whole request."""
        rate = self.settings.api.tenant_rate_per_s
        if rate <= 0:
            return
        burst = self.settings.api.tenant_burst
        if n > burst:
            raise PermanentError(ErrorCode.TOO_LARGE, f"{n} sources exceed this tenant's burst of {burst} per request")
        with redis_errors("rate limit"):
            wait_s, _ = self.limiter.reserve(INGRESS_SCOPE, tenant, rate, burst, max_wait_s=0.0, cost=n)
        if wait_s > 0:
            raise TransientError(
                ErrorCode.RATE_LIMITED, f"tenant {tenant!r} is over its rate of {rate:g} jobs/s", retry_after_s=wait_s
            )

    # -- read -----------------------------------------------------------------------------------------
    def lookup(self, tenant: str, job_id: str) -> Lookup:
        """The job's result, pending, or ``not-found`` (unknown, another tenant's, or expired)."""
        try:
            check_ids(tenant, job_id)
        except PermanentError as exc:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no job {job_id!r}") from exc
        # One MULTI: the result store removes the ledger entry and writes the result atomically, so the
        # snapshot has one of the two for every accepted, unexpired job.
        with redis_errors("get job"), self.redis.pipeline(transaction=True) as pipe:
            pipe.get(Keys.result(tenant, job_id))
            pipe.hget(Keys.LEDGER, job_id)
            raw, ledger = pipe.execute()
        if raw is not None:
            return Lookup(job_id, JobResult.model_validate_json(raw))
        if ledger is not None and wire.message_from_ledger(job_id, ledger)[1] == tenant:
            return Lookup(job_id, None)
        raise PermanentError(ErrorCode.NOT_FOUND, f"no job {job_id!r}")

    def page(
        self, tenant: str, *, since: datetime | None, cursor: str | None, status: Status | None, limit: int
    ) -> tuple[list[JobResult], str | None, bool]:
        """Final results after ``cursor`` (else from ``since``), oldest first, at most ``limit``, filtered by
        ``status``: ``(results, cursor after the last entry looked at, whether more entries follow now)``.

        The cursor is returned even at the end, so a client polls with it for results that finish later.
        """
        check_ids(tenant)
        position = start(since, cursor)
        index = Keys.tenant_index(tenant)
        found: list[JobResult] = []
        more = False
        window = limit + 64  # entries sharing the cursor's score are skipped client-side; leave room for them
        with redis_errors("list jobs"):
            # A status filter may drop entries: a page scans a bounded number of windows (bounded work).
            for _ in range(10):
                low = "-inf" if position.score == float("-inf") else repr(position.score)
                chunk = cast(
                    list[tuple[bytes, float]],
                    self.redis.zrangebyscore(index, low, "+inf", start=0, num=window, withscores=True),
                )
                entries = [(score, text(j)) for j, score in chunk if position.after(score, text(j))]
                need = limit - len(found)
                more = len(entries) > need or len(chunk) == window
                entries = entries[:need]
                if not entries:
                    break
                ids = [j for _, j in entries]
                raws = self.redis.mget([Keys.result(tenant, j) for j in ids])
                for raw in raws:
                    if raw is not None:  # expired since it was indexed
                        result = JobResult.model_validate_json(raw)
                        if status is None or result.status is status:
                            found.append(result)
                position = Position(*entries[-1])
                if not more or len(found) >= limit:
                    break
        next_cursor = None if position.score == float("-inf") else encode_cursor(position)
        return found, next_cursor, more

    # -- feedback -------------------------------------------------------------------------------------
    def feedback(self, tenant: str, job_id: str, feedback: Feedback) -> FeedbackRecord:
        """Store the tenant's label for a finished job (the latest one wins); kept as long as results."""
        found = self.lookup(tenant, job_id)
        if found.result is None:
            raise PermanentError(ErrorCode.INVALID_JOB, f"job {job_id!r} has no final result yet")
        result = found.result
        record = FeedbackRecord(
            **feedback.model_dump(),
            job_id=job_id,
            score=result.score,
            model=result.model,
            source=result.source,
            received_at=datetime.now(UTC),
        )
        key = feedback_key(tenant)
        with redis_errors("feedback"), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, job_id, record.model_dump_json())
            pipe.expire(key, self.settings.queue.result_ttl_s)
            pipe.execute()
        return record

    # -- detectors and health -------------------------------------------------------------------------
    def detectors(self) -> list[Detector]:
        default = self.settings.default_model
        out = []
        for name in registry.names():
            spec = registry.get(name)
            out.append(
                Detector(
                    name=spec.name,
                    version=spec.version,
                    ref=spec.ref,
                    description=spec.description,
                    input_size_px=spec.preprocessing.size_px,
                    default=name == default,
                )
            )
        return out

    def ping(self) -> None:
        with redis_errors("health"):
            self.redis.ping()

    def close(self) -> None:
        self.redis.close()
