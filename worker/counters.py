"""Per-job delivery and attempt counters in Redis (the JobCounters protocol).

Deliveries are counted under the job id, not the Celery message: a worker killed mid-job leaves its count
open, so the next delivery sees how many earlier ones died (REFERENCE.md §2: count deliveries yourself and
dead-letter after N). A delivery that reaches a decision closes its count.
"""

from __future__ import annotations

import redis

from producers.contract import Keys

_TTL_S = 7 * 24 * 3600


class RedisJobCounters:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def _incr(self, key: str) -> int:
        pipe = self._r.pipeline()
        pipe.incr(key)
        pipe.expire(key, _TTL_S)
        count, _ = pipe.execute()
        return int(count)

    def begin_delivery(self, job_id: str) -> int:
        return self._incr(Keys.deliveries(job_id))

    def end_delivery(self, job_id: str) -> None:
        self._r.delete(Keys.deliveries(job_id))

    def open_deliveries(self, job_id: str) -> int:
        value = self._r.get(Keys.deliveries(job_id))
        return int(value) if value else 0

    def next_attempt(self, job_id: str) -> int:
        return self._incr(Keys.attempts(job_id))

    def attempts(self, job_id: str) -> int:
        value = self._r.get(Keys.attempts(job_id))
        return int(value) if value else 0
