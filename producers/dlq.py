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
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from producers.contract import ErrorInfo, JobMessage, Keys
from producers.errors import ErrorCode, PermanentError

if TYPE_CHECKING:
    from producers.client import Producer

log = logging.getLogger(__name__)

_WATCH_TRIES = 50
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


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


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class DeadLetters:
    """The dead-letter queue on Redis (``client`` is a redis-py client)."""

    def __init__(self, client: Any) -> None:
        self.client = client

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
            redriven_from=_text(self.client.get(Keys.redriven_from(job.job_id))),
        )
        created = self._put(record)
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
        if self._put(DeadLetter(job_id=job_id, payload=payload, error=ErrorInfo(code=code, message=message))):
            log.warning("invalid message dead-lettered as %s: %s: %s", job_id, code, message[:200])
        return job_id

    def _put(self, record: DeadLetter) -> bool:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(Keys.DLQ, record.job_id, record.model_dump_json())
            pipe.zadd(Keys.DLQ_INDEX, {record.job_id: record.dead_at.timestamp()}, nx=True)
            created, _ = pipe.execute()
        return bool(created)

    def get(self, job_id: str) -> DeadLetter | None:
        """The record, waiting or already re-driven (until its audit copy expires)."""
        raw = self.client.hget(Keys.DLQ, job_id) or self.client.get(Keys.dlq_redriven(job_id))
        return None if raw is None else DeadLetter.model_validate_json(raw)

    def list(self, limit: int = 100) -> builtins.list[DeadLetter]:
        """Records waiting for a decision (not re-driven), oldest first."""
        ids = self.client.zrange(Keys.DLQ_INDEX, 0, max(0, limit - 1))
        if not ids:
            return []
        raws = self.client.hmget(Keys.DLQ, ids)
        return [DeadLetter.model_validate_json(raw) for raw in raws if raw is not None]

    def count(self) -> int:
        """Records waiting for a decision."""
        return int(self.client.zcard(Keys.DLQ_INDEX))

    def remove(self, job_id: str) -> bool:
        """Drop a waiting record without re-driving it; True if there was one."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(Keys.DLQ, job_id)
            pipe.zrem(Keys.DLQ_INDEX, job_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def redrive(self, job_id: str, producer: Producer) -> str:
        """Enqueue the dead job's payload again under a new job id and return that id.

        Idempotent: a record already re-driven returns its ``redriven_to``. Raises ``PermanentError``
        (``not-found`` for an unknown id, ``invalid-job`` for a raw message) and ``QueueFullError`` when
        the lane is at its limit.
        """
        first = self._require(job_id)
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
                        return self.redrive(job_id, producer)
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

    def _require(self, job_id: str, client: Any = None) -> DeadLetter:
        c = client or self.client
        raw = c.hget(Keys.DLQ, job_id) or c.get(Keys.dlq_redriven(job_id))
        if raw is None:
            raise PermanentError(ErrorCode.NOT_FOUND, f"no dead letter for job {job_id}")
        return DeadLetter.model_validate_json(raw)
