"""What the API does, apart from HTTP: authenticate, submit (validated and limited), read, list.

Framework-free and synchronous (redis-py): the FastAPI adapter (:mod:`api.app`) runs these calls in its
thread pool and maps ``FakesakeError`` to HTTP answers (:mod:`api.errors`). Submitting reuses
``Producer.build_jobs``/``enqueue``: the API accepts exactly what the Python producer accepts, with the same
idempotency and backpressure.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from api.keys import StoredKey
from api.keystore import KeyStore
from api.models import IDEMPOTENCY_KEY, Detector, DetectorList, Feedback, JobsRequest, ServedSet, UploadOptions
from api.pagination import Position, encode_cursor, start
from api.settings import ApiSettings
from api.uploads import Spool, UploadBucket
from producers import serving
from producers.client import Producer
from producers.connections import redis_errors, redis_from_settings, text
from producers.contract import FeedbackRecord, JobResult, Keys, Status, detector_set
from producers.errors import ErrorCode, PermanentError, TransientError
from producers.feedback import find_result
from producers.ids import check_ids
from producers.ratelimit import RedisRateLimiter
from producers.s3 import make_s3_client
from worker.core import registry
from worker.core.catalog import Catalog

# The one reader of detectors files: tomllib (or PyYAML) and the pure worker.core.catalog, no torch. The only
# worker.service module the API imports (pyproject.toml's API contract names this one exception).
from worker.service import detectors as detector_files

log = logging.getLogger(__name__)

#: The rate-limit scope of HTTP ingress (``Keys.rate("ingress", tenant)``); workers use ``tenant`` and ``host``.
INGRESS_SCOPE = "ingress"
#: Sources a caller over HTTP may name (the worker fetches them with its SSRF checks).
REMOTE_SCHEMES = ("s3", "https", "http")


@dataclass(frozen=True)
class Lookup:
    """``GET /v1/jobs/{id}``: the final result, or pending (``result`` None)."""

    job_id: str
    result: JobResult | None


def load_catalog(detectors_file: str | None) -> Catalog:
    """The built-in detectors and those of the workers' detectors file: the declarations only (no weights are
    read, no torch is imported). Installed packages' entry points are not loaded: a package may need torch; the
    detectors they add show up in ``GET /v1/detectors`` under ``served`` once a worker serves them."""
    return detector_files.load_catalog(detectors_file, points=[])


class ApiService:
    """One per API process; thread-safe (redis-py clients are)."""

    def __init__(self, settings: ApiSettings, redis_client: Any | None = None) -> None:
        self.settings = settings
        # Read once at start, as workers do: a bad detectors file stops the API with the file's error.
        self.catalog = load_catalog(settings.model.detectors_file)
        self.redis = redis_client if redis_client is not None else redis_from_settings(settings.redis)
        self.producer = Producer(settings, redis_client=self.redis)
        self.keys = KeyStore(self.redis)
        self.limiter = RedisRateLimiter(self.redis)
        group = settings.api
        self.uploads = (
            None
            if group.upload_bucket is None
            else UploadBucket(make_s3_client(settings.s3), group.upload_bucket, group.upload_prefix)
        )

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
        return self.producer.enqueue(jobs, queue_anyway=request.queue_anyway)

    def check_uploads(self) -> UploadBucket:
        """The upload bucket, or ``not-found`` while direct upload is off (before any byte is read)."""
        if self.uploads is None:
            raise PermanentError(ErrorCode.NOT_FOUND, "direct upload is off (FAKESAKE_API__UPLOAD_BUCKET is not set)")
        return self.uploads

    def upload(
        self, tenant: str, spool: Spool, options: UploadOptions, idempotency_key: str | None
    ) -> tuple[str, str | None]:
        """Store an uploaded image and enqueue it as an ``s3://`` job: (job id, source). A known
        ``Idempotency-Key`` returns the earlier job (source None) and stores nothing."""
        bucket = self.check_uploads()
        if idempotency_key is not None:
            if not IDEMPOTENCY_KEY.match(idempotency_key):
                raise PermanentError(ErrorCode.INVALID_JOB, "Idempotency-Key: 1-200 printable ASCII characters")
            with redis_errors("idempotency"):
                earlier = self.redis.get(Keys.idempotency(tenant, idempotency_key))
            if earlier is not None:
                return text(earlier), None
        spool.image_type()  # refuse a non-image before spending a rate token or a PUT
        model = options.model or self.settings.default_model
        self._model_known(model)
        if not options.queue_anyway:  # refused before anything is stored
            self.producer.check_detectors([detector_set(model)])
        self._take_ingress(tenant, 1)
        source, version = bucket.put(spool, tenant, datetime.now(UTC))
        job = self.producer.build_job(
            source,
            tenant=tenant,
            model=options.model,
            priority=options.priority,
            idempotency_key=idempotency_key,
            callback_url=options.callback_url,
            source_version=version,
        )
        job_id = self.producer.enqueue([job], queue_anyway=True)[0]  # checked before the upload
        if job_id != job.job_id:  # a concurrent request with the same key won: its object is the job's
            bucket.delete(source)
            return job_id, None
        return job_id, source

    def _model_known(self, model: str) -> None:
        """Each detector ``model`` names is built in, declared in the detectors file, or served by a live worker
        (a package's entry-point detectors are known to the workers that load them, not to the API)."""
        unknown = [n for n in detector_set(model) if n.partition("@")[0] not in self.catalog.names()]
        if not unknown:
            return
        served = self.producer.live_detectors()
        if missing := [n for n in unknown if n not in served]:
            known = ", ".join(sorted({*self.catalog.names(), *served}))
            raise PermanentError(ErrorCode.UNKNOWN_MODEL, f"unknown model {', '.join(missing)}; known models: {known}")

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
        return Lookup(job_id, find_result(self.redis, tenant, job_id))

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
        """Store the tenant's label for a finished job (the latest one wins) in the bounded feedback store
        (:mod:`producers.feedback`): ``not-found``, ``not-finished`` (409) or ``invalid-job`` (a failed job)."""
        return self.producer.feedback(job_id, feedback.label, tenant=tenant, note=feedback.note)

    def job_feedback(self, tenant: str, job_id: str) -> FeedbackRecord:
        """The feedback given for one job, or ``not-found``."""
        try:
            record = self.producer.feedback_store.get(tenant, job_id)
        except PermanentError as exc:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no feedback for job {job_id!r}") from exc
        if record is None:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no feedback for job {job_id!r}")
        return record

    def feedback_page(
        self, tenant: str, *, since: datetime | None, cursor: str | None, limit: int
    ) -> tuple[list[FeedbackRecord], str | None, bool]:
        """Feedback given after ``cursor`` (else from ``since``), oldest first: as :meth:`page` for results."""
        position = start(since, cursor)
        records, last, more = self.producer.feedback_store.page(tenant, (position.score, position.job_id), limit)
        after = Position(*last)
        return records, None if after.score == float("-inf") else encode_cursor(after), more

    # -- detectors and health -------------------------------------------------------------------------
    def detectors(self) -> DetectorList:
        """The catalog's detectors with how many live workers serve each, and the sets live workers advertise
        (one ``ZRANGEBYSCORE``; the adverts carry names, not weights hashes, so no identity is shown)."""
        with redis_errors("read worker adverts"):
            adverts = serving.live(self.redis, self.settings.queue.served_max_age_s or 30.0)
        per_set = Counter(tuple(sorted(a.detectors)) for a in adverts if a.detectors)
        per_name: Counter[str] = Counter()
        for names, workers in per_set.items():
            per_name.update(dict.fromkeys(names, workers))
        default = self.settings.default_model
        built_in = set(registry.names())
        listed = [
            Detector(
                name=spec.name,
                version=spec.version,
                ref=spec.ref,
                description=spec.description,
                input_size_px=spec.preprocessing.size_px,
                default=spec.name == default,
                source="built-in" if spec.name in built_in else "configured",
                served=per_name[spec.name] > 0,
                workers=per_name[spec.name],
            )
            for spec in self.catalog.specs()
        ]
        served = [
            ServedSet(detectors=list(names), workers=n)
            for names, n in sorted(per_set.items(), key=lambda item: (-len(item[0]), item[0]))
        ]
        return DetectorList(detectors=listed, served=served)

    def ping(self) -> None:
        with redis_errors("health"):
            self.redis.ping()

    def close(self) -> None:
        self.redis.close()
