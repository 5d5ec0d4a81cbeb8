"""``worker.stores.shared_trips.SharedRoundTrips`` against a real redis-server: overlapping script calls of many
threads share round trips, yet each caller gets exactly its own reply or its own error, scripts lost by the
server are loaded again, and a dead connection fails every caller of its round trip (none hangs)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import free_port
from worker.stores.shared_trips import SharedRoundTrips

# KEYS: a counter. ARGV: a tag. Increments the counter and answers with the tag and the new count.
_ECHO_LUA = "return {ARGV[1], redis.call('INCR', KEYS[1])}"
_FAIL_LUA = "return redis.error_reply('refused ' .. ARGV[1])"


def run_threads(n: int, target: Any) -> list[Any]:
    out: list[Any] = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        try:
            out[i] = target(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a caller never got its reply"
    return out


def test_each_caller_gets_its_own_reply_and_overlapping_calls_share_round_trips(client: redis.Redis) -> None:
    trips = SharedRoundTrips(client)
    echo = client.register_script(_ECHO_LUA)
    n = 64
    replies = run_threads(n, lambda i: trips.call(echo, [f"count:{i % 4}"], [f"caller-{i}"]))
    assert [r[0] for r in replies] == [f"caller-{i}".encode() for i in range(n)]
    for k in range(4):  # every call ran exactly once
        assert sorted(int(r[1]) for i, r in enumerate(replies) if i % 4 == k) == list(range(1, n // 4 + 1))
    assert trips.calls == n
    assert trips.round_trips < n, "64 threads calling at once shared no round trip"


def test_one_failing_call_fails_only_its_caller(client: redis.Redis) -> None:
    trips = SharedRoundTrips(client)
    echo, fail = client.register_script(_ECHO_LUA), client.register_script(_FAIL_LUA)
    replies = run_threads(8, lambda i: trips.call(fail if i == 3 else echo, ["count"], [str(i)]))
    assert isinstance(replies[3], redis.ResponseError) and "refused 3" in str(replies[3])
    assert all(isinstance(r, list) and r[0] == str(i).encode() for i, r in enumerate(replies) if i != 3)


def test_scripts_the_server_lost_are_loaded_again(client: redis.Redis) -> None:
    trips = SharedRoundTrips(client)
    echo = client.register_script(_ECHO_LUA)
    assert trips.call(echo, ["count"], ["a"]) == [b"a", 1]
    client.script_flush()  # a restarted server has no scripts: EVALSHA answers NOSCRIPT
    assert trips.call(echo, ["count"], ["b"]) == [b"b", 2]
    replies = run_threads(8, lambda i: trips.call(echo, ["count"], [str(i)]))
    assert sorted(int(r[1]) for r in replies) == list(range(3, 11))


def test_a_dead_connection_fails_every_caller_and_the_next_calls_work_again(client: redis.Redis) -> None:
    # nothing listens on the port; no retries, so the failure comes at once
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    trips = SharedRoundTrips(dead)
    echo = client.register_script(_ECHO_LUA)
    replies = run_threads(6, lambda i: trips.call(echo, ["count"], [str(i)]))
    assert all(isinstance(r, redis.ConnectionError) for r in replies)
    live = SharedRoundTrips(client)
    assert live.call(echo, ["count"], ["x"]) == [b"x", 1]


@pytest.mark.parametrize("n", [1, 2])
def test_a_lone_caller_leads_its_own_round_trip(client: redis.Redis, n: int) -> None:
    trips = SharedRoundTrips(client)
    echo = client.register_script(_ECHO_LUA)
    for i in range(n):
        assert trips.call(echo, ["count"], [str(i)]) == [str(i).encode(), i + 1]
    assert trips.round_trips == n and trips.calls == n
