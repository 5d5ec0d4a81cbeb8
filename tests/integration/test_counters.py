"""Delivery and attempt counters survive in Redis across 'processes' (clients)."""

from __future__ import annotations

import redis

from producers.contract import Keys
from worker.core.processing import Arrival
from worker.stores.counters import RedisJobCounters


def test_open_deliveries_accumulate_until_a_delivery_completes(redis_url: str) -> None:
    first, second = RedisJobCounters(redis.Redis.from_url(redis_url)), RedisJobCounters(redis.Redis.from_url(redis_url))
    assert first.begin_delivery("job1") == 1
    assert second.begin_delivery("job1") == 2  # the first worker died without completing
    second.end_delivery("job1")
    assert first.begin_delivery("job1") == 1
    assert 0 < redis.Redis.from_url(redis_url).ttl(Keys.deliveries("job1")) <= 7 * 24 * 3600


def test_attempts_count_up_per_job(redis_url: str) -> None:
    counters = RedisJobCounters(redis.Redis.from_url(redis_url))
    assert counters.attempts("a") == 0
    assert [counters.next_attempt("a") for _ in range(3)] == [1, 2, 3]
    assert counters.next_attempt("b") == 1 and counters.attempts("a") == 3


def test_reading_open_deliveries_touches_only_ledger_jobs_and_counts_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.zadd(Keys.LEDGER_SEEN, {"queued": 1.0})  # pushed long ago (score = Redis TIME of the push)
    counters = RedisJobCounters(client)
    assert counters.open_deliveries("queued") == 0
    touched = client.zscore(Keys.LEDGER_SEEN, "queued")
    assert touched is not None and touched > 1.0  # re-scored with Redis TIME: the job has arrived
    assert counters.begin_delivery("queued") == 1 and counters.open_deliveries("queued") == 1
    assert counters.open_deliveries("not-in-the-ledger") == 0
    assert client.zscore(Keys.LEDGER_SEEN, "not-in-the-ledger") is None
    assert not client.exists(Keys.deliveries("not-in-the-ledger"))


def test_arrive_reads_the_stored_result_and_the_open_deliveries_in_one_call(redis_url: str) -> None:
    from producers.contract import JobResult, Status
    from worker.stores.results import RedisResultStore

    client = redis.Redis.from_url(redis_url)
    client.zadd(Keys.LEDGER_SEEN, {"job-arrive1": 1.0})
    counters = RedisJobCounters(client)
    assert counters.arrive("acme", "job-arrive1") == Arrival(None, 0)
    touched = client.zscore(Keys.LEDGER_SEEN, "job-arrive1")
    assert touched is not None and touched > 1.0  # the job has arrived: its ledger entry is touched
    counters.begin_delivery("job-arrive1")
    assert counters.arrive("acme", "job-arrive1") == Arrival(None, 1)
    result = JobResult(job_id="job-arrive1", tenant="acme", source="s3://b/k.jpg", status=Status.OK, score=0.5)
    RedisResultStore(client, ttl_s=60, index_max=10).put_final(result)
    assert counters.arrive("acme", "job-arrive1") == Arrival(result, 1)
    assert counters.arrive("other", "job-arrive1") == Arrival(None, 1)  # results are tenant-scoped


def test_arrive_begins_the_delivery_and_counts_the_attempt_in_the_same_call(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    counters = RedisJobCounters(client)
    first = counters.arrive("acme", "job-arrive2", max_deliveries=3, count_attempt=True)
    assert first == Arrival(None, 0, begun=1, attempt=1)
    assert counters.open_deliveries("job-arrive2") == 1 and counters.attempts("job-arrive2") == 1
    assert client.ttl(Keys.deliveries("job-arrive2")) > 0 and client.ttl(Keys.attempts("job-arrive2")) > 0
    # rate limits may defer the job: the delivery is begun, the attempt is left to the processing step
    assert counters.arrive("acme", "job-arrive2", max_deliveries=3) == Arrival(None, 1, begun=2)
    assert counters.attempts("job-arrive2") == 1
    # its last chance (prior == max - 1) runs alone: begun only after the isolation gate, not here
    assert counters.arrive("acme", "job-arrive2", max_deliveries=3, count_attempt=True) == Arrival(None, 2)
    assert counters.open_deliveries("job-arrive2") == 2 and counters.attempts("job-arrive2") == 1


def test_arrive_begins_nothing_for_a_job_that_has_its_result(redis_url: str) -> None:
    from producers.contract import JobResult, Status
    from worker.stores.results import RedisResultStore

    client = redis.Redis.from_url(redis_url)
    counters = RedisJobCounters(client)
    result = JobResult(job_id="job-arrive3", tenant="acme", source="s3://b/k.jpg", status=Status.OK, score=0.5)
    RedisResultStore(client, ttl_s=60, index_max=10).put_final(result)
    assert counters.arrive("acme", "job-arrive3", max_deliveries=3, count_attempt=True) == Arrival(result, 0)
    assert not client.exists(Keys.deliveries("job-arrive3"), Keys.attempts("job-arrive3"))
