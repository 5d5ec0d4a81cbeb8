"""The producer API: enqueue image references, read and wait for their results. No torch, no Celery app.

Every enqueue goes through one Lua script per lane and chunk (:data:`_ENQUEUE_LUA`), which — atomically,
inside Redis — checks the idempotency key, checks the lane's depth against ``queue.max_depth`` and
``LPUSH``es the Celery message (:mod:`producers.wire`). Because the idempotency ``SET`` and the ``LPUSH``
happen in the same script, a producer that crashes mid-call leaves either both or neither: never a key
that points at a job that was never queued, nor a queued job whose key was lost.

The same script records each pushed job in the ledger (``Keys.LEDGER``: job id -> the job's fields as
compact JSON, :func:`producers.wire.encode`, from which the same message is rebuilt; ``Keys.LEDGER_SEEN``:
Redis TIME of the push). The result store removes the entry with the final result, and ``worker.stores.ledger``
re-pushes entries that are neither queued, nor being processed, nor finished — the message a SIGKILLed worker
had popped with BRPOP before kombu recorded it (docs/RELIABILITY.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import redis
from pydantic import ValidationError

from producers import serving, wire
from producers.connections import redis_errors, redis_from_settings, text
from producers.contract import (
    ALL_QUEUES,
    LUA_NOW,
    FeedbackRecord,
    JobMessage,
    JobResult,
    Keys,
    Label,
    Priority,
    lane_priority,
)
from producers.errors import ErrorCode, PermanentError, TransientError
from producers.feedback import FeedbackStore
from producers.ids import check_ids, validation_messages
from producers.settings import ProducerSettings

log = logging.getLogger(__name__)

CHUNK = 500  # jobs per script call: ~1 ms of Redis time, so consumers are never blocked for long
_FULL_RETRY_S = 0.2

# KEYS[1] = lane list, KEYS[2] = ledger hash, KEYS[3] = ledger seen zset, KEYS[4..] = idempotency keys.
# ARGV = max_depth (-1: unchecked), ttl_s, then per job (index into KEYS of its idempotency key or 0, job id,
# message, ledger value). Returns per job: status, job id. A known idempotency key wins over a full queue:
# resubmitting an accepted job is never refused.
_ENQUEUE_LUA = (
    LUA_NOW
    + """
local max_depth = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local depth = redis.call('LLEN', KEYS[1])
local out = {}
for i = 3, #ARGV, 4 do
  local k = tonumber(ARGV[i])
  local job_id = ARGV[i + 1]
  local existing = false
  if k > 0 then existing = redis.call('GET', KEYS[k]) end
  if existing then
    out[#out + 1] = 'dup'; out[#out + 1] = existing
  elseif max_depth >= 0 and depth >= max_depth then
    out[#out + 1] = 'full'; out[#out + 1] = job_id
  else
    if k > 0 then redis.call('SET', KEYS[k], job_id, 'EX', ttl) end
    redis.call('LPUSH', KEYS[1], ARGV[i + 2])
    redis.call('HSET', KEYS[2], job_id, ARGV[i + 3])
    redis.call('ZADD', KEYS[3], now, job_id)
    depth = depth + 1
    out[#out + 1] = 'new'; out[#out + 1] = job_id
  end
end
return out
"""
)


class QueueFullError(TransientError):
    """A lane is at ``queue.max_depth``. ``accepted`` holds the ids of jobs of the call that did get in
    (by input index), so a bulk caller can resume with the rest."""

    def __init__(self, message: str, accepted: dict[int, str], retry_after_s: float = 1.0) -> None:
        super().__init__(ErrorCode.QUEUE_FULL, message, retry_after_s=retry_after_s)
        self.accepted = accepted


class Producer:
    """Enqueue jobs onto the Redis lanes the Celery workers consume, and read their results.

    Thread-safe (redis-py clients are). ``redis_client`` overrides the connection built from settings.
    """

    def __init__(self, settings: ProducerSettings | None = None, *, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings or ProducerSettings()
        self.redis = redis_client if redis_client is not None else redis_from_settings(self.settings.redis)
        self._enqueue = self.redis.register_script(_ENQUEUE_LUA)
        self._adverts: tuple[float, list[serving.Advert]] | None = None  # (monotonic read time, live adverts)
        self.feedback_store = FeedbackStore(self.redis, self.settings.feedback)

    # -- building -----------------------------------------------------------------------------------
    def build_job(
        self,
        source: str,
        *,
        tenant: str | None = None,
        model: str | Sequence[str] | None = None,
        priority: Priority | str = Priority.INTERACTIVE,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        source_version: str | None = None,
    ) -> JobMessage:
        """Validate one job; raise ``PermanentError`` (``invalid-source`` / ``invalid-job``) if it is bad.
        ``model``: a detector name, or several (a list, or comma-separated) for an ensemble."""
        try:
            return JobMessage(
                tenant=tenant or self.settings.tenant,
                source=source,
                model=(model if isinstance(model, str) else ",".join(model)) if model else self.settings.default_model,
                priority=priority,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                source_version=source_version,
            )
        except ValidationError as exc:
            code = (
                ErrorCode.INVALID_SOURCE
                if any(e["loc"][:1] == ("source",) for e in exc.errors())
                else ErrorCode.INVALID_JOB
            )
            raise PermanentError(code, f"{source!r}: {validation_messages(exc)}") from exc

    def build_jobs(self, items: Iterable[str | Mapping[str, Any]], **defaults: Any) -> list[JobMessage]:
        """Items are sources or dicts of :meth:`build_job` arguments (which override ``defaults``)."""
        jobs = []
        for item in items:
            fields = {**defaults, **(item if isinstance(item, Mapping) else {"source": item})}
            if not isinstance(fields.get("source"), str):
                raise PermanentError(ErrorCode.INVALID_SOURCE, f"item without a source: {item!r}")
            jobs.append(self.build_job(fields.pop("source"), **fields))
        return jobs

    # -- enqueueing ---------------------------------------------------------------------------------
    def submit(
        self,
        source: str,
        *,
        tenant: str | None = None,
        model: str | None = None,
        priority: Priority | str = Priority.INTERACTIVE,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        source_version: str | None = None,
        wait_if_full_s: float = 0,
        queue_anyway: bool = False,
    ) -> str:
        """Enqueue one image reference; return its job id (the earlier one for a known idempotency key).

        Raises ``PermanentError`` for a bad input and ``QueueFullError`` (a ``TransientError`` with code
        ``queue-full``) when the lane stays at ``queue.max_depth`` for ``wait_if_full_s`` seconds, and
        ``PermanentError`` ``unserved-model`` when no live worker serves the job's detectors (unless
        ``queue_anyway``; see :meth:`check_served`).
        """
        job = self.build_job(
            source,
            tenant=tenant,
            model=model,
            priority=priority,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            source_version=source_version,
        )
        return self.enqueue([job], wait_if_full_s=wait_if_full_s, queue_anyway=queue_anyway)[0]

    def submit_many(
        self,
        items: Iterable[str | Mapping[str, Any]],
        *,
        tenant: str | None = None,
        model: str | None = None,
        priority: Priority | str = Priority.INTERACTIVE,
        callback_url: str | None = None,
        wait_if_full_s: float = 0,
        queue_anyway: bool = False,
    ) -> list[str]:
        """Validate all items first (nothing is queued if one is bad), then enqueue them pipelined.

        Returns job ids in input order. Items are sources or dicts with ``source`` and any of
        ``tenant, model, priority, idempotency_key, callback_url, source_version``.
        """
        jobs = self.build_jobs(items, tenant=tenant, model=model, priority=priority, callback_url=callback_url)
        return self.enqueue(jobs, wait_if_full_s=wait_if_full_s, queue_anyway=queue_anyway)

    def enqueue(
        self, jobs: Sequence[JobMessage], *, wait_if_full_s: float = 0, queue_anyway: bool = False
    ) -> list[str]:
        """Push validated jobs (one script call per lane and chunk, all in one round trip); refuse them all first
        if one's detectors are served by no live worker, unless ``queue_anyway``."""
        if not queue_anyway:
            self.check_served(jobs)
        ids: dict[int, str] = {}
        todo = list(range(len(jobs)))
        deadline = time.monotonic() + wait_if_full_s
        while True:
            with redis_errors("enqueue"):
                todo = self._enqueue_once(jobs, todo, ids)
            if not todo:
                return [ids[i] for i in range(len(jobs))]
            lanes = sorted({wire.lane_of(jobs[i]) for i in todo})
            if time.monotonic() >= deadline:
                raise QueueFullError(
                    f"queue {', '.join(lanes)} is at its limit of "
                    f"{self.settings.queue.max_depth} jobs (queue.max_depth): {len(todo)} of {len(jobs)} "
                    "jobs not queued; retry later, or pass wait_if_full_s to wait for room",
                    accepted=dict(ids),
                )
            log.debug("lane(s) %s full; %d jobs waiting for room", lanes, len(todo))
            time.sleep(min(_FULL_RETRY_S, max(0.0, deadline - time.monotonic())))

    def stage(
        self,
        pipe: Any,
        lane: Priority,
        jobs: Sequence[JobMessage],
        *,
        max_depth: int | None = None,
        ttl_s: int | None = None,
    ) -> None:
        """Queue one enqueue-script call for ``jobs`` (all of priority ``lane`` and one detector set) on ``pipe``.

        The script pushes each job and writes its ledger entry atomically (see the module doc); its reply
        is one ``(status, job id)`` pair per job. ``max_depth`` None pushes regardless of the lane's depth
        (for a caller that checked capacity itself, e.g. a re-drive inside a MULTI that must not be refused).
        """
        keys = [wire.lane_of(jobs[0]) if jobs else wire.queue_key(lane), Keys.LEDGER, Keys.LEDGER_SEEN]
        args: list[Any] = [-1 if max_depth is None else max_depth, ttl_s or self.settings.queue.result_ttl_s]
        for job in jobs:
            key_index = 0
            if job.idempotency_key is not None:
                keys.append(Keys.idempotency(job.tenant, job.idempotency_key))
                key_index = len(keys)
            message, stored = wire.encode(job)
            args += [key_index, job.job_id, message, stored]
        self._enqueue(keys=keys, args=args, client=pipe)

    def _enqueue_once(self, jobs: Sequence[JobMessage], todo: list[int], ids: dict[int, str]) -> list[int]:
        ttl = self.settings.queue.result_ttl_s
        max_depth = self.settings.queue.max_depth
        calls: list[list[int]] = []
        lanes: dict[str, list[int]] = {}
        for i in todo:
            lanes.setdefault(wire.lane_of(jobs[i]), []).append(i)
        with self.redis.pipeline(transaction=False) as pipe:
            for lane_jobs in lanes.values():
                for start in range(0, len(lane_jobs), CHUNK):
                    chunk = lane_jobs[start : start + CHUNK]
                    lane = jobs[chunk[0]].priority
                    self.stage(pipe, lane, [jobs[i] for i in chunk], max_depth=max_depth, ttl_s=ttl)
                    calls.append(chunk)
            replies = pipe.execute()
        rejected = []
        for chunk, reply in zip(calls, replies, strict=True):
            for n, i in enumerate(chunk):
                status, job_id = text(reply[2 * n]), text(reply[2 * n + 1])
                if status == "full":
                    rejected.append(i)
                else:
                    ids[i] = job_id
        return rejected

    def check_served(self, jobs: Iterable[JobMessage]) -> None:
        """Raise ``PermanentError`` ``unserved-model`` if no live worker serves all the detectors of one of ``jobs``.

        Workers advertise what they serve (:mod:`producers.serving`). With no live worker at all the jobs are
        accepted: the queue is the buffer while a fleet restarts or scales up from zero (KEDA), and workers older
        than the adverts advertise nothing. A read is reused for a second, and read again before refusing or before
        accepting because nobody advertised.
        """
        self.check_detectors([job.detectors for job in jobs])

    def check_detectors(self, wanted: Sequence[tuple[str, ...]]) -> None:
        """:meth:`check_served` for detector sets (one tuple of names per job)."""
        max_age = self.settings.queue.served_max_age_s
        if max_age <= 0 or not wanted:
            return
        for fresh in (False, True):
            now = time.monotonic()
            if fresh or self._adverts is None or now - self._adverts[0] > 1.0:
                with redis_errors("read worker adverts"):
                    self._adverts = (now, serving.live(self.redis, max_age))
            adverts = self._adverts[1]
            if not adverts:
                if fresh:
                    return  # no live worker at all: accept (see above)
                continue  # a cached "nobody" may predate a worker's first advert: read again before accepting
            missing = serving.unserved(wanted, adverts)
            if not missing:
                return
        offered = sorted({",".join(sorted(a.detectors)) for a in adverts})
        raise PermanentError(
            ErrorCode.UNSERVED_MODEL,
            f"no live worker serves {' nor '.join(','.join(m) for m in missing)} (live workers serve: "
            f"{'; '.join(offered)}); start workers with FAKESAKE_MODEL__NAMES naming them, or queue it anyway "
            "(queue_anyway=True, CLI --queue-anyway, API queue_anyway) for workers yet to start",
        )

    def live_detectors(self) -> set[str]:
        """The detectors some live worker serves (empty when no worker advertises)."""
        with redis_errors("read worker adverts"):
            adverts = serving.live(self.redis, self.settings.queue.served_max_age_s or 30.0)
        return set().union(*(a.detectors for a in adverts))

    def check_capacity(self, priority: Priority | str) -> None:
        """Raise ``QueueFullError`` if the lane is at ``queue.max_depth`` (a non-atomic pre-check)."""
        lane = wire.queue_key(priority)
        with redis_errors("queue depth"):
            depth = int(self.redis.llen(lane))
        if depth >= self.settings.queue.max_depth:
            raise QueueFullError(
                f"queue {lane} holds {depth} jobs, at its limit of "
                f"{self.settings.queue.max_depth} (queue.max_depth); retry later",
                accepted={},
            )

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting per priority (not counting those a worker has taken): the default detector's lanes plus
        those of every detector set a live worker serves."""
        with redis_errors("queue depths"):
            adverts = serving.live(self.redis, self.settings.queue.served_max_age_s or 30.0)
        lanes = sorted({*ALL_QUEUES, *serving.served_lanes(adverts)})  # a stray advert adds no lane, no error
        with redis_errors("queue depths"), self.redis.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.llen(lane)
            depths = dict(zip(lanes, pipe.execute(), strict=True))
        return {p.value: sum(int(n) for lane, n in depths.items() if lane_priority(lane) == p.value) for p in Priority}

    # -- results ------------------------------------------------------------------------------------
    def get_result(self, job_id: str, tenant: str | None = None) -> JobResult | None:
        """The final result, or None while the job is pending (or unknown to this tenant, or expired)."""
        tenant = tenant or self.settings.tenant
        check_ids(tenant, job_id)
        with redis_errors("get result"):
            raw = self.redis.get(Keys.result(tenant, job_id))
        return None if raw is None else JobResult.model_validate_json(raw)

    def feedback(
        self, job_id: str, label: Label | str, *, tenant: str | None = None, note: str | None = None
    ) -> FeedbackRecord:
        """Store what a finished job's image really is (``label`` ai or human) with its source, model and score
        in the tenant's feedback store (:mod:`producers.feedback`). Raises ``PermanentError`` ``not-found`` (no
        such job for this tenant) or ``invalid-job`` (the job failed), ``TransientError`` ``not-finished``."""
        return self.feedback_store.give(tenant or self.settings.tenant, job_id, label, note)

    def _fetch(self, tenant: str, job_ids: Sequence[str]) -> dict[str, JobResult]:
        found: dict[str, JobResult] = {}
        for start in range(0, len(job_ids), 1000):
            chunk = job_ids[start : start + 1000]
            for job_id, raw in zip(chunk, self.redis.mget([Keys.result(tenant, j) for j in chunk]), strict=True):
                if raw is not None:
                    found[job_id] = JobResult.model_validate_json(raw)
        return found

    def wait(
        self,
        job_ids: Sequence[str],
        tenant: str | None = None,
        timeout_s: float = 60.0,
        poll_s: float = 1.0,
        on_result: Callable[[JobResult], None] | None = None,
    ) -> dict[str, JobResult]:
        """Wait until every job has a final result or ``timeout_s`` passes; return those that finished.

        Woken by the result store's per-tenant notifications (``Keys.notify``), which fetch only the
        announced jobs; every ``poll_s`` a pipelined MGET sweep of all pending jobs covers anything a
        notification missed (a reconnect, a result written before we subscribed).
        """
        tenant = tenant or self.settings.tenant
        for job_id in job_ids:
            check_ids(tenant, job_id)
        pending = dict.fromkeys(job_ids)
        done: dict[str, JobResult] = {}

        def take(found: dict[str, JobResult]) -> None:
            for job_id, result in found.items():
                if job_id in pending:
                    del pending[job_id]
                    done[job_id] = result
                    if on_result is not None:
                        on_result(result)

        deadline = time.monotonic() + timeout_s
        with redis_errors("wait"):
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(Keys.notify(tenant))
                take(self._fetch(tenant, list(pending)))  # after subscribing: nothing falls in between
                next_sweep = time.monotonic() + poll_s
                while pending and (now := time.monotonic()) < deadline:
                    announced: list[str] = []
                    message = pubsub.get_message(timeout=max(0.0, min(next_sweep, deadline) - now))
                    while message is not None:
                        if message.get("type") == "message":
                            announced.append(text(message["data"]))
                        message = pubsub.get_message(timeout=0)
                    if wanted := [j for j in announced if j in pending]:
                        take(self._fetch(tenant, wanted))
                    if time.monotonic() >= next_sweep:
                        take(self._fetch(tenant, list(pending)))
                        next_sweep = time.monotonic() + poll_s
            finally:
                pubsub.close()
        return done

    def list_results(self, tenant: str | None = None, limit: int = 100) -> list[JobResult]:
        """The tenant's most recent final results, newest first (expired ones skipped)."""
        tenant = tenant or self.settings.tenant
        check_ids(tenant)
        with redis_errors("list results"):
            newest = self.redis.zrevrange(Keys.tenant_index(tenant), 0, max(0, limit - 1))
            ids = [text(j) for j in cast(list[bytes], newest)]
            found = self._fetch(tenant, ids)
        return [found[j] for j in ids if j in found]

    def close(self) -> None:
        self.redis.close()
