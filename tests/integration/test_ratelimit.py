"""RedisRateLimiter: GCRA semantics on a real redis-server, and a limit that holds across two processes."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producers.contract import Keys
from worker.stores.ratelimit import RedisRateLimiter


@pytest.fixture()
def limiter(redis_url: str) -> Iterator[RedisRateLimiter]:
    client = redis.Redis.from_url(redis_url)
    yield RedisRateLimiter(client)
    client.close()


def _server_now(limiter: RedisRateLimiter) -> float:
    """Redis's clock, the one the limiter's script reads."""
    seconds, micros = limiter.client.time()
    return float(seconds) + float(micros) / 1e6


def test_burst_then_spacing(limiter: RedisRateLimiter) -> None:
    interval = 0.5  # 2/s
    started = _server_now(limiter)
    assert [limiter.acquire("tenant", "acme", 2.0, 5) for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire("tenant", "acme", 2.0, 5)
    elapsed = _server_now(limiter) - started
    # The sixth token comes one interval after the first grant: that is, less whatever time has passed since.
    assert max(0.0, interval - elapsed) - 1e-6 <= wait <= interval
    if wait > 0:
        # A refusal takes nothing: asking again is not pushed a further interval back.
        assert limiter.acquire("tenant", "acme", 2.0, 5) <= wait + 1e-6
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
    # One interval (100 ms) of debt, then the key is gone (-2: gone already; -1 would be a key kept forever).
    assert pttl == -2 or 0 < pttl <= 101


def _hammer(url: str, me: int, taken: Any, each: int, rate: float, burst: int, out: mp.Queue[Any]) -> None:
    """Take tokens until both processes hold ``each``; put (me, [(asked_at, answered_at) per grant])."""
    limiter = RedisRateLimiter(redis.Redis.from_url(url))
    grants: list[tuple[float, float]] = []
    while min(taken[:]) < each:  # keep competing until the other process has its share too
        asked = time.time()
        wait = limiter.acquire("tenant", "shared", rate, burst)
        if wait == 0:
            grants.append((asked, time.time()))
            taken[me] += 1
        else:
            time.sleep(min(wait, 0.05))
    out.put((me, grants))


def most_in_any_window(grants: list[tuple[float, float]], rate: float, burst: int) -> list[str]:
    """Windows holding more grants than ``rate * length + burst``, the limiter's promise.

    Each grant happened somewhere in its (asked, answered) interval, so a grant certainly lies in a window
    when its whole interval does; windows run from one grant's ``asked`` to another's ``answered``. A slow
    machine only widens the intervals, which can hide an excess but never invent one.
    """
    slack_s = len(grants) * 1e-6  # the script stores its schedule rounded to the microsecond
    excess = []
    for start, _ in grants:
        ends = sorted(answered for asked, answered in grants if asked >= start)
        for count, end in enumerate(ends, 1):
            if count > rate * (end - start + slack_s) + burst:
                excess.append(f"{count} grants in {end - start:.3f}s from {start:.3f}")
    return excess


@pytest.mark.timeout(60)
def test_limit_holds_across_two_processes(redis_url: str) -> None:
    rate, burst, each = 40.0, 4, 30
    ctx = mp.get_context("spawn")
    out: mp.Queue[Any] = ctx.Queue()
    taken = ctx.Array("i", 2)
    procs = [ctx.Process(target=_hammer, args=(redis_url, me, taken, each, rate, burst, out)) for me in range(2)]
    for p in procs:
        p.start()
    per_process = dict(out.get(timeout=50) for _ in procs)
    for p in procs:
        p.join(timeout=10)
    grants = per_process[0] + per_process[1]
    # Each process kept asking until the other also held its share, so they competed for the same tokens.
    assert min(len(g) for g in per_process.values()) >= each
    assert len(grants) > 2 * burst  # well past the burst: the rate itself was under test
    assert most_in_any_window(grants, rate, burst) == []


def test_window_check_sees_an_excess() -> None:
    # Five grants inside 0.05 s at 40/s with burst 2: at most 2 + 2 may fall in that window.
    grants = [(10.0 + i * 0.01, 10.0 + i * 0.01 + 0.001) for i in range(5)]
    assert most_in_any_window(grants, 40.0, 2)
    assert most_in_any_window(grants, 40.0, 4) == []


def test_reserve_hands_each_waiting_job_its_own_future_slot(redis_url: str) -> None:
    import redis as redis_lib

    from worker.stores.ratelimit import RedisRateLimiter

    limiter = RedisRateLimiter(redis_lib.Redis.from_url(redis_url))
    interval, max_wait = 1.0, 2.5  # burst 1 at 1/s: now, then slots 1 s apart; beyond 2.5 s nothing is taken
    started = _server_now(limiter)
    grants = [limiter.reserve("tenant", "resv", 1.0, 1, max_wait_s=max_wait) for _ in range(6)]
    elapsed = _server_now(limiter) - started
    slot = 0  # the slot the next call must be offered: a refusal takes none, so it does not move the schedule
    for wait, held in grants:
        # Slot k lies k intervals after the first call; each wait is that, less the time passed since.
        assert slot * interval - elapsed - 1e-6 <= wait <= slot * interval + 1e-6, (slot, grants)
        assert held == (wait <= max_wait)
        slot += held
    assert grants[0] == (0.0, True)
    assert slot >= 3  # slots 0, 1 and 2 s ahead are within max_wait however long the calls took
