"""Result stores: Redis (the default, authoritative) and an optional S3 sink (a JSON copy per job).

:class:`RedisResultStore` writes each final result once, atomically, in one Lua script: ``SET NX EX`` of
``Keys.result(tenant, job_id)`` (the first final result wins — a redelivered job cannot replace it), the
tenant's recent-results index (a sorted set scored by ``finished_at``, trimmed to ``index_max`` and to the
TTL), a ``PUBLISH`` of the job id on ``Keys.notify(tenant)`` for producers waiting on it, and the removal of
the job from the ledger of unfinished jobs (``Keys.LEDGER``/``LEDGER_SEEN``, see :mod:`worker.stores.ledger`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from producers.connections import redis_errors
from producers.contract import JobResult, Keys, parse_s3_uri

log = logging.getLogger(__name__)

# KEYS: result, tenant index, ledger hash, ledger seen zset[, delivery counter]. ARGV: result JSON, ttl_s, score
# (finished_at, epoch s), index_max, job id, channel. Returns nil when this result was stored, else the result
# already stored. Either way the job leaves the ledger: it has its final result (worker/stores/ledger.py); and,
# given its delivery counter (worker/stores/counters.py), its delivery is closed in the same write.
_PUT_FINAL_LUA = """
local ttl = tonumber(ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
if KEYS[5] then
  redis.call('DEL', KEYS[5])
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ttl) then
  return redis.call('GET', KEYS[1])
end
local score = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], score, ARGV[5])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[4]) - 1)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (score - ttl))
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('PUBLISH', ARGV[6], ARGV[5])
return false
"""


class RedisResultStore:
    """Implements ``worker.core.ports.ResultStore`` on Redis. Thread-safe."""

    def __init__(
        self, client: Any, ttl_s: int, index_max: int, *, closes_deliveries: bool = False, trips: Any = None
    ) -> None:
        if ttl_s < 1 or index_max < 1:
            raise ValueError("ttl_s and index_max must be >= 1")
        self.client = client
        self.ttl_s = ttl_s
        self.index_max = index_max
        # Also delete the job's delivery counter (``RedisJobCounters.end_delivery``) in the write: a round trip
        # less per job (``JobProcessor.store_closes_deliveries``).
        self.closes_deliveries = closes_deliveries
        self._put = client.register_script(_PUT_FINAL_LUA)
        # shared_trips.SharedRoundTrips: writes of job threads that finish together share a round trip
        self._trips = trips

    def put_final(self, result: JobResult) -> JobResult:
        """Store ``result`` unless a final result for its job exists; return the one that is stored.

        Raises ``TransientError(unavailable)`` if Redis cannot be reached: the caller must not ack the job.
        """
        keys = [
            Keys.result(result.tenant, result.job_id),
            Keys.tenant_index(result.tenant),
            Keys.LEDGER,
            Keys.LEDGER_SEEN,
            *([Keys.deliveries(result.job_id)] if self.closes_deliveries else []),
        ]
        args = [
            result.model_dump_json(),
            self.ttl_s,
            f"{result.finished_at.timestamp():.6f}",
            self.index_max,
            result.job_id,
            Keys.notify(result.tenant),
        ]
        with redis_errors("result store"):
            if self._trips is not None:
                existing = self._trips.call(self._put, keys, args)
            else:
                existing = self._put(keys=keys, args=args)
        if existing is None:
            return result
        stored = JobResult.model_validate_json(existing)
        if stored != result:
            log.info("job %s already has a final result (%s); keeping it", result.job_id, stored.status.value)
        return stored

    def get(self, tenant: str, job_id: str) -> JobResult | None:
        raw = self.client.get(Keys.result(tenant, job_id))
        return None if raw is None else JobResult.model_validate_json(raw)


class S3ResultSink:
    """Writes each final result as JSON to ``s3://bucket/prefix/<tenant>/<job_id>.json``.

    Best effort: a failed write is logged and counted (``failures``) and never raised, so it can never
    cost the result already stored in Redis.
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.bucket, key_prefix = parse_s3_uri(prefix)
        self.key_prefix = key_prefix.strip("/")
        self.written = 0
        self.failures = 0
        self._lock = threading.Lock()

    def key(self, result: JobResult) -> str:
        name = f"{result.tenant}/{result.job_id}.json"
        return f"{self.key_prefix}/{name}" if self.key_prefix else name

    def put(self, result: JobResult) -> bool:
        """True if written; False (logged, counted) on any failure."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(result),
                Body=result.model_dump_json().encode(),
                ContentType="application/json",
            )
        except Exception:  # any botocore/network failure: the Redis copy is the authoritative one
            with self._lock:
                self.failures += 1
            log.warning(
                "job %s: result sink write to s3://%s/%s failed",
                result.job_id,
                self.bucket,
                self.key(result),
                exc_info=True,
            )
            return False
        with self._lock:
            self.written += 1
        return True


class SinkingResultStore:
    """A ResultStore that stores in ``store`` first, then copies what is stored to ``sink``."""

    def __init__(self, store: RedisResultStore, sink: S3ResultSink) -> None:
        self.store = store
        self.sink = sink

    def put_final(self, result: JobResult) -> JobResult:
        stored = self.store.put_final(result)
        self.sink.put(stored)  # rewriting the same object on redelivery is harmless
        return stored

    def get(self, tenant: str, job_id: str) -> JobResult | None:
        return self.store.get(tenant, job_id)
