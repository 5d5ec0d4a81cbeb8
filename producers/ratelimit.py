"""Global rate limits shared by workers and the HTTP API: GCRA (a token bucket in one number) in a Lua script.

Why GCRA: the whole bucket is one "theoretical arrival time" per key, so a check is one GET and at most one
SET, and the key expires by itself once the bucket is full again. Time comes from ``redis.call('TIME')``,
so workers with skewed clocks share one timeline (Redis >= 5 replicates script effects, not the script,
so reading TIME in a script is safe). Celery's own ``rate_limit`` is per worker and cannot do this.

It lives with the producers, not the worker's stores, because two processes use it: workers (per-tenant and
per-host limits, through ``worker.stores.ratelimit``) and the torch-free HTTP API (per-tenant ingress limits).
"""

from __future__ import annotations

from typing import Any

from producers.connections import text
from producers.contract import Keys

# KEYS[1] = bucket. ARGV = emission interval (s per job), burst, max_wait (s). Returns "r<wait>" when a slot
# is taken (now if wait is 0, else reserved ahead: the job must come back after <wait> and go without asking
# again) or "w<wait>" when the next free slot is further than max_wait away (nothing taken).
# Reserving keeps deferred jobs from re-asking every few milliseconds (a retry storm): each one is handed its
# own future slot. Numbers go in and out as strings: Lua would turn 0.3 into the integer 0.
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait < 0 then wait = 0 end
if wait > max_wait then
  return 'w' .. string.format('%.6f', wait)
end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1)
return 'r' .. string.format('%.6f', wait)
"""


class RedisRateLimiter:
    """Implements ``worker.core.ports.RateLimiter``: ``acquire`` takes one token or says how long to wait.

    It never sleeps: a worker that is told to wait defers the job (Celery countdown) and frees its slot.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._gcra = client.register_script(_GCRA_LUA)

    def acquire(self, scope: str, name: str, rate_per_s: float, burst: int) -> float:
        """0.0 if one job of ``scope``/``name`` may go now (and it is counted), else seconds to wait.

        ``rate_per_s <= 0`` means unlimited. ``burst`` (>= 1) jobs may go at once after a quiet period.
        """
        wait, _ = self.reserve(scope, name, rate_per_s, burst, max_wait_s=0.0)
        return wait

    def reserve(
        self, scope: str, name: str, rate_per_s: float, burst: int, max_wait_s: float, cost: int = 1
    ) -> tuple[float, bool]:
        """Take the next slot if it is at most ``max_wait_s`` away: ``(wait, True)``; else ``(wait, False)``.

        ``(0.0, True)``: go now. ``(w, True)``: a slot ``w`` seconds ahead is held for this job, which must
        start then without asking again. ``(w, False)``: nothing taken; ask again later.
        ``cost`` takes that many tokens at once, all or none (the API's multi-source requests); it may not
        exceed ``burst``.
        """
        if rate_per_s <= 0:
            return 0.0, True
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if not 1 <= cost <= burst:
            raise ValueError(f"cost must be in 1..burst ({burst}), got {cost}")
        # ``cost`` tokens are one step of ``cost`` intervals against a bucket of ``burst / cost`` such steps:
        # new_tat = tat + cost * I and wait = new_tat - burst * I - now, the script's arithmetic unchanged.
        interval = f"{cost / rate_per_s:.9f}"
        reply = self._gcra(keys=[Keys.rate(scope, name)], args=[interval, f"{burst / cost:.9f}", f"{max_wait_s:.6f}"])
        answer = text(reply)
        return float(answer[1:]), answer[0] == "r"
