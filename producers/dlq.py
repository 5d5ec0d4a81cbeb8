"""Dead letters: jobs that got a final error after their last attempt or delivery, kept for an operator.

Storage: one HASH ``Keys.DLQ`` (job id -> JSON record) holding exactly the records waiting for a decision,
and a sorted set ``Keys.DLQ_INDEX`` of the same ids scored by when they died (so ``HLEN``/``ZCARD`` is the
backlog an alert can watch). ``add`` is idempotent per job id (the first record is kept), so a redelivered
poison job cannot add a second one. A message that is not even a valid job is kept too (``add_raw``),
under its ``job_id`` if it has a usable one, else under a hash of its payload.

Re-driving never reuses the job id: the job already has a final (error) result, and a final result is
never overwritten by a different one. The original payload is enqueued under a *new* job id; the record
moves out of the backlog to ``Keys.dlq_redriven(old_id)`` (with ``redriven_to``; kept for the result TTL),
and ``Keys.redriven_from(new_id)`` remembers the link so that, should the new job die too, its record
says ``redriven_from``. The push and the record move happen in one MULTI/EXEC under WATCH: a crash
cannot re-drive a job twice or lose it, and re-driving the same id again returns the same new id.

Tenant scope: ``list``, ``get``, ``remove`` and ``redrive`` take ``tenant``; given one, a record of another
tenant is as good as absent (``not-found``). The layout has no per-tenant index (records written before
scoping existed stay readable as they are), so a scoped listing pages through ``Keys.DLQ_INDEX`` and keeps
the records whose job belongs to the tenant. A message that was not a valid job has no tenant we can trust
(its claimed one failed validation), so it only shows unscoped, to an operator who asked for every tenant.

Webhooks that failed for good (permanent error, attempts exhausted, or no signing secret) are dead letters
of their own kind (:class:`WebhookDeadLetter`), in a hash and index of their own (:data:`WEBHOOK_DLQ`,
:data:`WEBHOOK_DLQ_INDEX`, same shape as the jobs' pair, so the job backlog, its gauge and its invariants are
unchanged). A record keeps the result it was sending, so it can be re-sent after the stored result expired
(results are never overwritten, so the copy is the stored result), and the callback URL whole, because the
query often carries the receiver's token; it is shown only redacted. ``resend_webhook`` queues the delivery
task again (a fresh task id, so a full set of attempts) and drops the record in one MULTI/EXEC: should the
re-sent webhook fail for good again, the worker records it anew.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import redis
from pydantic import BaseModel, ConfigDict, Field

from producers import wire
from producers.connections import text
from producers.contract import KEY_PREFIX, ErrorInfo, JobMessage, JobResult, Keys, Priority
from producers.errors import ErrorCode, PermanentError
from producers.redaction import redact_url

if TYPE_CHECKING:
    from producers.client import Producer

log = logging.getLogger(__name__)

_WATCH_TRIES = 50
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_PAGE = 500  # index entries read per round trip by a tenant-scoped listing

#: job id -> :class:`WebhookDeadLetter` JSON of every webhook that failed for good and waits for a decision
WEBHOOK_DLQ = f"{KEY_PREFIX}:dlq:webhook"
#: the same job ids scored by when their webhook died
WEBHOOK_DLQ_INDEX = f"{KEY_PREFIX}:dlq:webhook:index"
#: lane whose side lane a re-sent webhook goes to: polled first, and a webhook costs one POST, not an inference
WEBHOOK_LANE = Priority.INTERACTIVE


def _now() -> datetime:
    return datetime.now(UTC)


class DeadLetter(BaseModel):
    """One dead-lettered job: its payload, why it died, and what became of it."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    job: JobMessage | None = Field(default=None, description="The job; None for a message that was not one")
    payload: Any = Field(default=None, description="The raw message body when it was not a valid job")
    error: ErrorInfo
    attempts: int = Field(default=0, ge=0, description="Processing attempts (retries of transient failures)")
    deliveries: int = Field(default=0, ge=0, description="Broker deliveries (worker crashes count here)")
    first_seen: datetime = Field(default_factory=_now)
    last_seen: datetime = Field(default_factory=_now)
    dead_at: datetime = Field(default_factory=_now)
    redriven_from: str | None = Field(default=None, description="Job id this job re-drove")
    redriven_to: str | None = Field(default=None, description="Job id this record was re-driven as")
    redriven_at: datetime | None = None

    @property
    def kind(self) -> Literal["job"]:
        return "job"

    @property
    def tenant(self) -> str | None:
        """The job's tenant; None for a message that was not a valid job (its claimed tenant is not trusted)."""
        return None if self.job is None else self.job.tenant


class WebhookDeadLetter(BaseModel):
    """One webhook that failed for good: whose, where to, why, and the result it carried."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["webhook"] = "webhook"
    job_id: str
    tenant: str
    callback_url: str = Field(description="Where it was POSTed, whole (to re-send it); show it redacted")
    error: ErrorInfo = Field(description="The last attempt's error")
    attempts: int = Field(default=1, ge=0, description="Delivery attempts made")
    dead_at: datetime = Field(default_factory=_now)
    result: JobResult = Field(description="The payload: the job's stored final result")

    @property
    def callback_redacted(self) -> str:
        return redact_url(self.callback_url)


class _Scoped(Protocol):
    @property
    def tenant(self) -> str | None: ...


_R = TypeVar("_R", DeadLetter, WebhookDeadLetter)


def _in_scope(record: _Scoped | None, tenant: str | None) -> bool:
    return record is not None and (tenant is None or record.tenant == tenant)


class DeadLetters:
    """The dead-letter queue on Redis (``client`` is a redis-py client): jobs, and webhooks of finished jobs."""

    def __init__(self, client: Any) -> None:
        self.client = client

    # -- jobs ---------------------------------------------------------------------------------------------

    def add(
        self,
        job: JobMessage,
        error: ErrorInfo,
        attempts: int = 0,
        deliveries: int = 0,
        first_seen: datetime | None = None,
        last_seen: datetime | None = None,
    ) -> bool:
        """Record a dead job; True if new, False if the job already had a record (kept unchanged)."""
        record = DeadLetter(
            job_id=job.job_id,
            job=job,
            error=error,
            attempts=attempts,
            deliveries=deliveries,
            first_seen=first_seen or _now(),
            last_seen=last_seen or _now(),
            redriven_from=_optional_text(self.client.get(Keys.redriven_from(job.job_id))),
        )
        created = self._put(Keys.DLQ, Keys.DLQ_INDEX, record.job_id, record.dead_at, record.model_dump_json())
        if created:
            log.warning(
                "job %s dead-lettered: %s: %s (attempts %d, deliveries %d)",
                job.job_id, error.code, error.message, attempts, deliveries,
            )  # fmt: skip
        return created

    def add_raw(self, payload: Any, *, code: str, message: str) -> str:
        """Record a message that is not a valid job (it cannot get a tenant-scoped result); return its id."""
        candidate = payload.get("job_id") if isinstance(payload, dict) else None
        if isinstance(candidate, str) and _JOB_ID.match(candidate):
            job_id = candidate
        else:
            blob = json.dumps(payload, sort_keys=True, default=str).encode()
            job_id = "raw-" + hashlib.sha256(blob).hexdigest()[:32]
        record = DeadLetter(job_id=job_id, payload=payload, error=ErrorInfo(code=code, message=message))
        if self._put(Keys.DLQ, Keys.DLQ_INDEX, job_id, record.dead_at, record.model_dump_json()):
            log.warning("invalid message dead-lettered as %s: %s: %s", job_id, code, message[:200])
        return job_id

    def _put(self, table: str, index: str, job_id: str, dead_at: datetime, value: str) -> bool:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(table, job_id, value)
            pipe.zadd(index, {job_id: dead_at.timestamp()}, nx=True)
            created, _ = pipe.execute()
        return bool(created)

    def get(self, job_id: str, tenant: str | None = None) -> DeadLetter | None:
        """The record, waiting or already re-driven (until its audit copy expires); None if not ``tenant``'s."""
        raw = self.client.hget(Keys.DLQ, job_id) or self.client.get(Keys.dlq_redriven(job_id))
        record = None if raw is None else DeadLetter.model_validate_json(raw)
        return record if _in_scope(record, tenant) else None

    def list(self, limit: int | None = 100, *, tenant: str | None = None) -> builtins.list[DeadLetter]:
        """Records waiting for a decision (not re-driven), oldest first; ``limit`` None for all of them."""
        return self._scan(Keys.DLQ_INDEX, Keys.DLQ, DeadLetter, limit, tenant)

    def _scan(
        self, index: str, table: str, model: type[_R], limit: int | None, tenant: str | None
    ) -> builtins.list[_R]:
        if limit is not None and limit <= 0:
            return []
        found: builtins.list[_R] = []
        page = _PAGE if limit is None or tenant is not None else limit
        start = 0
        while limit is None or len(found) < limit:
            ids = self.client.zrange(index, start, start + page - 1)
            if not ids:
                break
            start += len(ids)
            for raw in self.client.hmget(table, ids):
                record = None if raw is None else model.model_validate_json(raw)
                if record is not None and _in_scope(record, tenant):
                    found.append(record)
        return found if limit is None else found[:limit]

    def count(self) -> int:
        """Records waiting for a decision, every tenant's."""
        return int(self.client.zcard(Keys.DLQ_INDEX))

    def remove(self, job_id: str, tenant: str | None = None) -> bool:
        """Drop a waiting record without re-driving it; True if there was one (of ``tenant``, if given)."""
        if tenant is not None and self.get(job_id, tenant) is None:
            return False
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(Keys.DLQ, job_id)
            pipe.zrem(Keys.DLQ_INDEX, job_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def redrive(self, job_id: str, producer: Producer, tenant: str | None = None) -> str:
        """Enqueue the dead job's payload again under a new job id and return that id.

        Idempotent: a record already re-driven returns its ``redriven_to``. Raises ``PermanentError``
        (``not-found`` for an unknown id or another tenant's, ``invalid-job`` for a raw message) and
        ``QueueFullError`` when the lane is at its limit.
        """
        first = self._require(job_id, tenant=tenant)
        if first.redriven_to is not None:
            return first.redriven_to
        if first.job is None:
            raise PermanentError(ErrorCode.INVALID_JOB, f"dead letter {job_id} is not a valid job; cannot re-drive")
        producer.check_capacity(first.job.priority)
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_TRIES):
                try:
                    pipe.watch(Keys.DLQ, Keys.dlq_redriven(job_id))
                    record = self._require(job_id, pipe)
                    if record.redriven_to is not None or record.job is None:
                        pipe.unwatch()
                        return self.redrive(job_id, producer, tenant)
                    new_job = record.job.model_copy(
                        update={
                            "job_id": uuid.uuid4().hex,
                            "submitted_at": _now(),
                            # the key still names the dead job; reusing it would make a resubmission
                            # answer with the new id, which the client never asked for
                            "idempotency_key": None,
                        }
                    )
                    moved = record.model_copy(update={"redriven_to": new_job.job_id, "redriven_at": _now()})
                    pipe.multi()
                    producer.stage(pipe, new_job.priority, [new_job])  # pushed with its ledger entry
                    pipe.hdel(Keys.DLQ, job_id)
                    pipe.zrem(Keys.DLQ_INDEX, job_id)
                    ttl = producer.settings.queue.result_ttl_s
                    pipe.set(Keys.dlq_redriven(job_id), moved.model_dump_json(), ex=ttl)
                    pipe.set(Keys.redriven_from(new_job.job_id), job_id, ex=ttl)
                    pipe.execute()
                except redis.WatchError:
                    continue
                log.info("dead job %s re-driven as %s", job_id, new_job.job_id)
                return new_job.job_id
        raise redis.WatchError(f"dead letter {job_id}: too much contention to re-drive")

    def _require(self, job_id: str, client: Any = None, *, tenant: str | None = None) -> DeadLetter:
        c = client or self.client
        raw = c.hget(Keys.DLQ, job_id) or c.get(Keys.dlq_redriven(job_id))
        record = None if raw is None else DeadLetter.model_validate_json(raw)
        if record is None or not _in_scope(record, tenant):
            raise PermanentError(ErrorCode.NOT_FOUND, f"no dead letter for job {job_id}")
        return record

    # -- webhooks -----------------------------------------------------------------------------------------

    def add_webhook(self, result: JobResult, url: str, error: ErrorInfo, attempts: int) -> bool:
        """Record a webhook that failed for good; True if new, False if the job's webhook already waits."""
        record = WebhookDeadLetter(
            job_id=result.job_id, tenant=result.tenant, callback_url=url, error=error, attempts=attempts, result=result
        )
        created = self._put(WEBHOOK_DLQ, WEBHOOK_DLQ_INDEX, record.job_id, record.dead_at, record.model_dump_json())
        if created:
            log.warning(
                "webhook of job %s to %s dead-lettered: %s: %s (attempts %d)",
                result.job_id, record.callback_redacted, error.code, error.message, attempts,
            )  # fmt: skip
        return created

    def get_webhook(self, job_id: str, tenant: str | None = None) -> WebhookDeadLetter | None:
        """The waiting webhook record of ``job_id``; None if there is none (of ``tenant``, if given)."""
        raw = self.client.hget(WEBHOOK_DLQ, job_id)
        record = None if raw is None else WebhookDeadLetter.model_validate_json(raw)
        return record if _in_scope(record, tenant) else None

    def webhooks(self, limit: int | None = 100, *, tenant: str | None = None) -> builtins.list[WebhookDeadLetter]:
        """Webhook records waiting for a decision, oldest first; ``limit`` None for all of them."""
        return self._scan(WEBHOOK_DLQ_INDEX, WEBHOOK_DLQ, WebhookDeadLetter, limit, tenant)

    def count_webhooks(self) -> int:
        """Webhook records waiting for a decision, every tenant's."""
        return int(self.client.zcard(WEBHOOK_DLQ_INDEX))

    def resend_webhook(self, job_id: str, producer: Producer, tenant: str | None = None) -> str:
        """Queue the delivery task for the dead webhook again, drop its record, and return the new task id.

        Raises ``PermanentError(not-found)`` for an unknown id or another tenant's (or one re-sent meanwhile)
        and ``QueueFullError`` when the lane is at its limit.
        """
        if self.get_webhook(job_id, tenant) is None:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no dead webhook for job {job_id}")
        producer.check_capacity(WEBHOOK_LANE)
        task_id = uuid.uuid4().hex
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_TRIES):
                try:
                    pipe.watch(WEBHOOK_DLQ)
                    raw = pipe.hget(WEBHOOK_DLQ, job_id)
                    if raw is None:  # another operator re-sent it between our read and the WATCH
                        pipe.unwatch()
                        raise PermanentError(ErrorCode.NOT_FOUND, f"no dead webhook for job {job_id}")
                    record = WebhookDeadLetter.model_validate_json(raw)
                    lane, message = wire.encode_webhook_message(
                        record.result, record.callback_url, task_id, WEBHOOK_LANE
                    )
                    pipe.multi()
                    pipe.lpush(lane, message)
                    pipe.hdel(WEBHOOK_DLQ, job_id)
                    pipe.zrem(WEBHOOK_DLQ_INDEX, job_id)
                    pipe.execute()
                except redis.WatchError:
                    continue
                log.info("dead webhook of job %s to %s re-sent as task %s", job_id, record.callback_redacted, task_id)
                return task_id
        raise redis.WatchError(f"dead webhook {job_id}: too much contention to re-send")


def _optional_text(value: bytes | str | None) -> str | None:
    return None if value is None else text(value)
