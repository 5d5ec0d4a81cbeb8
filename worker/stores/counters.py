"""Per-job delivery and attempt counters in Redis (the JobCounters protocol).

Deliveries are counted under the job id, not the Celery message: a worker killed mid-job leaves its count
open, so the next delivery sees how many earlier ones died. (Celery requeues a task whose worker died, with
``task_reject_on_worker_lost``, as often as it dies: counting here is what lets a poison job be dead-lettered
after N.) A delivery that reaches a decision closes its count.

Reading the open deliveries when a job arrives (before it may wait at the isolation gate) and beginning a
delivery both touch the job's ledger entry (``Keys.LEDGER_SEEN``, Redis TIME, only if the job is still in the
ledger), so the ledger sweeper (:mod:`worker.stores.ledger`) knows the job is alive. Each is one script, one round
trip: the touch rides along instead of costing a Redis call of its own per job.
"""

from __future__ import annotations

from typing import Any

import redis

from producers.contract import LUA_NOW, JobResult, Keys
from worker.core.processing import Arrival

_TTL_S = 7 * 24 * 3600

# KEYS: deliveries counter, ledger seen zset. ARGV: ttl_s, job id. Returns the open delivery count.
_BEGIN_DELIVERY_LUA = (
    LUA_NOW
    + """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', now, ARGV[2])
return n
"""
)

# KEYS: deliveries counter, ledger seen zset. ARGV: job id. Returns the open delivery count (nothing counted).
_ARRIVE_LUA = (
    LUA_NOW
    + """
redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
return tonumber(redis.call('GET', KEYS[1]) or '0')
"""
)


# KEYS: result, deliveries counter, ledger seen zset, attempts counter. ARGV: job id, ttl_s, max deliveries
# (0: begin nothing), count an attempt (1|0). Touches the job's ledger entry; returns {stored result or false,
# open deliveries before this one, this delivery's open count or false, this attempt's number or false}:
# a delivery's first reads and counts in one round trip. A stored result, or the job's last chance (run only
# after the isolation gate), begins nothing here.
_ARRIVE_LUA_WITH_RESULT = (
    LUA_NOW
    + """
redis.call('ZADD', KEYS[3], 'XX', now, ARGV[1])
local result = redis.call('GET', KEYS[1])
local prior = tonumber(redis.call('GET', KEYS[2]) or '0')
local max = tonumber(ARGV[3])
if result or max == 0 or (prior > 0 and prior == max - 1) then
  return {result, prior, false, false}
end
local begun = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local attempt = false
if ARGV[4] == '1' then
  attempt = redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return {result, prior, begun, attempt}
"""
)


class RedisJobCounters:
    def __init__(self, client: redis.Redis, trips: Any = None) -> None:
        self._r = client
        # shared_trips.SharedRoundTrips: arrivals of jobs taken together share a round trip
        self._trips = trips
        self._begin = client.register_script(_BEGIN_DELIVERY_LUA)
        self._arrive = client.register_script(_ARRIVE_LUA)
        self._arrive_with_result = client.register_script(_ARRIVE_LUA_WITH_RESULT)

    def _incr(self, key: str) -> int:
        pipe = self._r.pipeline()
        pipe.incr(key)
        pipe.expire(key, _TTL_S)
        count, _ = pipe.execute()
        return int(count)

    def begin_delivery(self, job_id: str) -> int:
        return int(self._begin(keys=[Keys.deliveries(job_id), Keys.LEDGER_SEEN], args=[_TTL_S, job_id]))

    def end_delivery(self, job_id: str) -> None:
        self._r.delete(Keys.deliveries(job_id))

    def open_deliveries(self, job_id: str) -> int:
        """Deliveries begun and not completed; also touches the job's ledger entry (it has arrived here)."""
        return int(self._arrive(keys=[Keys.deliveries(job_id), Keys.LEDGER_SEEN], args=[job_id]))

    def arrive(self, tenant: str, job_id: str, *, max_deliveries: int = 0, count_attempt: bool = False) -> Arrival:
        """``processing.Arrivals``: the job's stored result (``Keys.result``) and its open deliveries, touching
        its ledger entry, and (``max_deliveries``) this delivery begun and its attempt counted, in one script."""
        keys = [Keys.result(tenant, job_id), Keys.deliveries(job_id), Keys.LEDGER_SEEN, Keys.attempts(job_id)]
        args: list[Any] = [job_id, _TTL_S, max_deliveries, int(count_attempt)]
        if self._trips is not None:
            raw, prior, begun, attempt = self._trips.call(self._arrive_with_result, keys, args)
        else:
            raw, prior, begun, attempt = self._arrive_with_result(keys=keys, args=args)
        return Arrival(
            JobResult.model_validate_json(raw) if raw else None,
            int(prior),
            int(begun) if begun else None,  # Lua false arrives as None
            int(attempt) if attempt else None,
        )

    def next_attempt(self, job_id: str) -> int:
        return self._incr(Keys.attempts(job_id))

    def attempts(self, job_id: str) -> int:
        value = self._r.get(Keys.attempts(job_id))
        return int(value) if value else 0
