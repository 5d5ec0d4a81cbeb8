"""Feedback: the label a tenant gives a finished job (a reviewer's verdict, a chargeback), kept with the score.

Each entry holds the job's source reference, the model and score it was given, and the true label, so feedback
becomes labelled data: ``fakesake feedback export`` writes it as a manifest of ``source,label[,dataset]`` rows
that ``fakesake eval --manifest`` (and fine-tuning) read.

Per tenant, two keys (:class:`producers.contract.Keys`): a hash job id -> record JSON and a sorted set of job
ids scored by when the label was given. One Lua script writes both, drops entries older than
``feedback.ttl_s`` and then the oldest past ``feedback.max_per_tenant``: the store is bounded by count and age
whatever the traffic. Labelling a job again replaces its entry (the latest label wins).

Sources: results store sources redacted (:func:`producers.redaction.redact_url`: an http(s) URL loses its query,
where presigned URLs carry credentials; an ``s3://`` URI keeps its ``?`` and ``#``, which belong to the key or
its ``?versionId=V`` suffix). The result also keeps the version that was read (``source_version``), so the
manifest names ``s3://b/k?versionId=V``: exactly the scored object, even after the key was overwritten. Results
stored before S3 URIs were kept whole hold ``s3://b/k?<redacted>``: with a version the object is still named,
without one it is lost. An http(s) source whose query was redacted cannot be fetched again; the export skips it
and counts it.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, cast

from producers import wire
from producers.connections import redis_errors, text
from producers.contract import FeedbackRecord, JobResult, Keys, Label, split_s3_version
from producers.errors import ErrorCode, PermanentError, TransientError
from producers.ids import check_ids
from producers.redaction import REDACTED
from producers.settings import FeedbackSettings

#: The ``dataset`` of exported rows (``fakesake eval`` reports metrics per dataset).
DATASET = "feedback"
MANIFEST_COLUMNS = ("source", "label", "dataset", "job_id", "model", "score", "note")
_PAGE = 500
MAX_NOTE_CHARS = 1000

# KEYS[1] = hash, KEYS[2] = index. ARGV = job id, record JSON, now (epoch s), ttl_s, max entries.
_GIVE_LUA = """
local now, ttl, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))
for _, id in ipairs(old) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))
local excess = redis.call('ZCARD', KEYS[2]) - cap
if excess > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], excess)
  for i = 1, #popped, 2 do redis.call('HDEL', KEYS[1], popped[i]) end
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return excess
"""


def manifest_source(record: FeedbackRecord) -> str | None:
    """The reference ``fakesake eval`` fetches for ``record`` (see the module doc), or None if none can be."""
    source = record.source
    redacted = source.endswith("?" + REDACTED)
    if source[:5].lower() == "s3://":
        if redacted and record.source_version is None:
            return None  # stored by an older version, which redacted S3 queries: which object it named is lost
        base, submitted_version = split_s3_version(source.removesuffix("?" + REDACTED))
        version = record.source_version or submitted_version
        return base if version is None else f"{base}?versionId={version}"
    return None if redacted else source


def manifest_row(record: FeedbackRecord, dataset: str = DATASET) -> dict[str, Any] | None:
    """One manifest row (``source,label,dataset`` first: what eval reads; the rest for people), or None."""
    source = manifest_source(record)
    if source is None:
        return None
    return {
        "source": source,
        "label": record.label.value,
        "dataset": dataset,
        "job_id": record.job_id,
        "model": record.model,
        "score": record.score,
        "note": record.note,
    }


def write_manifest(rows: Iterable[dict[str, Any]], out: IO[str], fmt: str) -> None:
    """``jsonl`` (one object a line) or ``csv`` (a header of :data:`MANIFEST_COLUMNS`)."""
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        return
    for row in rows:
        out.write(json.dumps(row) + "\n")


def find_result(client: Any, tenant: str, job_id: str) -> JobResult | None:
    """The job's final result; None while it is pending; ``not-found`` if the tenant has no such job (unknown,
    another tenant's, or expired)."""
    check_ids(tenant, job_id, bad_job=ErrorCode.NOT_FOUND)
    # One MULTI: the result store removes the ledger entry and writes the result atomically, so the snapshot
    # has one of the two for every accepted, unexpired job.
    with redis_errors("get job"), client.pipeline(transaction=True) as pipe:
        pipe.get(Keys.result(tenant, job_id))
        pipe.hget(Keys.LEDGER, job_id)
        raw, ledger = pipe.execute()
    if raw is not None:
        return JobResult.model_validate_json(raw)
    if ledger is not None and wire.message_from_ledger(job_id, ledger)[1] == tenant:
        return None
    raise PermanentError(ErrorCode.NOT_FOUND, f"no job {job_id!r} for tenant {tenant!r} (unknown or expired)")


class FeedbackStore:
    """A tenant-scoped, bounded feedback store in Redis. Thread-safe (redis-py clients are)."""

    def __init__(
        self, client: Any, settings: FeedbackSettings | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = client
        self.settings = settings or FeedbackSettings()
        self.clock = clock
        self._give = client.register_script(_GIVE_LUA)

    def give(self, tenant: str, job_id: str, label: Label | str, note: str | None = None) -> FeedbackRecord:
        """Store ``label`` for the tenant's finished job. ``not-found``: no such job for this tenant;
        ``not-finished`` (transient): no result yet; ``invalid-job``: the job failed, so it has no score."""
        try:
            truth = Label(label)
        except ValueError:
            raise PermanentError(ErrorCode.INVALID_JOB, f"label must be ai or human, got {label!r}") from None
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise PermanentError(ErrorCode.INVALID_JOB, f"note: at most {MAX_NOTE_CHARS} characters")
        result = find_result(self.redis, tenant, job_id)
        if result is None:
            raise TransientError(ErrorCode.NOT_FINISHED, f"job {job_id!r} has no result yet; give feedback once it has")
        if not result.ok:
            code = result.error.code if result.error is not None else "error"
            raise PermanentError(ErrorCode.INVALID_JOB, f"job {job_id!r} failed ({code}): it has no score to label")
        received_at = datetime.fromtimestamp(self.clock(), UTC)
        record = FeedbackRecord(
            job_id=job_id,
            label=truth,
            note=note,
            source=result.source,
            source_version=result.source_version,
            etag=result.etag,
            model=result.model,
            score=result.score,
            band=result.band,
            received_at=received_at,
        )
        keys = [Keys.feedback(tenant), Keys.feedback_index(tenant)]
        args = [
            job_id,
            record.model_dump_json(),
            repr(received_at.timestamp()),
            self.settings.ttl_s,
            self.settings.max_per_tenant,
        ]
        with redis_errors("feedback"):
            self._give(keys=keys, args=args)
        return record

    def get(self, tenant: str, job_id: str) -> FeedbackRecord | None:
        check_ids(tenant, job_id, bad_job=ErrorCode.NOT_FOUND)
        with redis_errors("feedback"):
            raw = self.redis.hget(Keys.feedback(tenant), job_id)
        return None if raw is None else FeedbackRecord.model_validate_json(raw)

    def page(
        self, tenant: str, after: tuple[float, str], limit: int
    ) -> tuple[list[FeedbackRecord], tuple[float, str], bool]:
        """Entries strictly after ``after`` = (score, job id), oldest label first, at most ``limit``: (records,
        the position of the last entry looked at, whether more follow now). Entries older than the TTL are
        skipped even before the next write drops them."""
        check_ids(tenant)
        low = max(after[0], self.clock() - self.settings.ttl_s)
        window = limit + 64  # entries that share the position's score are skipped here; leave room for them
        with redis_errors("feedback"):
            chunk = cast(
                list[tuple[bytes, float]],
                self.redis.zrangebyscore(Keys.feedback_index(tenant), repr(low), "+inf", 0, window, withscores=True),
            )
            entries = [(score, text(j)) for j, score in chunk if (score, text(j)) > after]
            more = len(entries) > limit or len(chunk) == window
            entries = entries[:limit]
            raws = self.redis.hmget(Keys.feedback(tenant), [j for _, j in entries]) if entries else []
        records = [FeedbackRecord.model_validate_json(r) for r in raws if r is not None]
        return records, (entries[-1] if entries else after), more

    def all(self, tenant: str, since: datetime | None = None) -> Iterator[FeedbackRecord]:
        """Every entry of the tenant (given at or after ``since``), oldest label first, page by page."""
        position = (float("-inf") if since is None else since.timestamp(), "")
        while True:
            records, position, more = self.page(tenant, position, _PAGE)
            yield from records
            if not more:
                return

    def export(self, tenant: str, out: IO[str], fmt: str = "jsonl", dataset: str = DATASET) -> tuple[int, int]:
        """Write the tenant's feedback as an eval/fine-tuning manifest; returns (rows written, rows skipped
        because their source cannot be fetched again)."""
        counts = [0, 0]

        def rows() -> Iterator[dict[str, Any]]:
            for record in self.all(tenant):
                row = manifest_row(record, dataset)
                counts[row is None] += 1
                if row is not None:
                    yield row

        write_manifest(rows(), out, fmt)
        return counts[0], counts[1]
