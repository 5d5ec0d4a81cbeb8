"""RedisRateLimiter: GCRA semantics on a real redis-server, and a limit that holds across two processes."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator

import pytest
import redis

from producers.contract import Keys
from worker.stores.ratelimit import RedisRateLimiter


@pytest.fixture()
def limiter(redis_url: str) -> Iterator[RedisRateLimiter]:
    client = redis.Redis.from_url(redis_url)
    yield RedisRateLimiter(client)
    client.close()


def test_burst_then_spacing(limiter: RedisRateLimiter) -> None:
    assert [limiter.acquire("tenant", "acme", 2.0, 5) for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire("tenant", "acme", 2.0, 5)
    assert 0.4 < wait <= 0.5  # one token per 0.5 s
    assert limiter.acquire("tenant", "acme", 2.0, 5) == pytest.approx(wait, abs=0.05)  # refusals take nothing
    time.sleep(wait + 0.02)
    assert limiter.acquire("tenant", "acme", 2.0, 5) == 0.0


def test_names_and_scopes_are_independent(limiter: RedisRateLimiter) -> None:
    assert limiter.acquire("tenant", "acme", 1.0, 1) == 0.0
    assert limiter.acquire("tenant", "acme", 1.0, 1) > 0
    assert limiter.acquire("tenant", "beta", 1.0, 1) == 0.0
    assert limiter.acquire("host", "acme", 1.0, 1) == 0.0


def test_zero_rate_is_unlimited_and_bad_burst_rejected(limiter: RedisRateLimiter) -> None:
    assert all(limiter.acquire("tenant", "x", 0.0, 1) == 0.0 for _ in range(100))
    with pytest.raises(ValueError, match="burst"):
        limiter.acquire("tenant", "x", 1.0, 0)


def test_bucket_key_expires_when_full_again(limiter: RedisRateLimiter) -> None:
    limiter.acquire("host", "example.com", 10.0, 3)
    pttl = limiter.client.pttl(Keys.rate("host", "example.com"))
    assert 0 < pttl <= 101  # one interval (100 ms) of debt, then the key is gone


def _hammer(url: str, start_at: float, duration_s: float, rate: float, burst: int, out: mp.Queue) -> None:
    limiter = RedisRateLimiter(redis.Redis.from_url(url))
    time.sleep(max(0.0, start_at - time.time()))
    granted = 0
    end = start_at + duration_s
    while time.time() < end:
        wait = limiter.acquire("tenant", "shared", rate, burst)
        if wait == 0:
            granted += 1
        else:
            time.sleep(min(wait, max(0.0, end - time.time())))
    out.put(granted)


@pytest.mark.timeout(60)
def test_limit_holds_across_two_processes(redis_url: str) -> None:
    rate, burst, duration = 40.0, 4, 3.0
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 2.0  # both processes imported and connected before the clock starts
    procs = [ctx.Process(target=_hammer, args=(redis_url, start_at, duration, rate, burst, out)) for _ in range(2)]
    for p in procs:
        p.start()
    counts = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    measured = (sum(counts) - burst) / duration
    print(f"two processes: {counts} grants in {duration}s -> {measured:.1f}/s (limit {rate}/s)")
    assert abs(measured - rate) <= 0.15 * rate, f"measured {measured:.1f}/s for a {rate}/s limit ({counts})"
    assert min(counts) > 0.2 * sum(counts), counts  # both processes really competed


def test_reserve_hands_each_waiting_job_its_own_future_slot(redis_url: str) -> None:
    import itertools

    import redis as redis_lib

    from worker.stores.ratelimit import RedisRateLimiter

    limiter = RedisRateLimiter(redis_lib.Redis.from_url(redis_url))
    grants = [limiter.reserve("tenant", "resv", 10.0, 1, max_wait_s=0.35) for _ in range(6)]
    # burst 1 at 10/s: now, then slots 0.1 s apart; beyond 0.35 s nothing is taken
    assert [held for _, held in grants] == [True, True, True, True, False, False]
    waits = [w for w, _ in grants]
    assert waits[0] == 0.0
    for earlier, later in itertools.pairwise(waits[:4]):
        assert 0.08 <= later - earlier <= 0.12
    assert waits[4] > 0.35 and abs(waits[5] - waits[4]) < 0.02  # refusals did not move the schedule
