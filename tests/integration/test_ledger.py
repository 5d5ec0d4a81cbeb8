"""The ledger of accepted jobs on a real redis-server: written with the push, touched by deliveries, removed
with the final result, and swept: finished jobs cleaned, queued jobs kept, lost jobs pushed again once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import redis

from producers import wire
from producers.client import Producer, QueueFullError
from producers.contract import ErrorInfo, JobMessage, JobResult, Keys, Priority, Status
from producers.dlq import DeadLetters
from producers.settings import ProducerSettings, QueueSettings, RedisSettings
from worker.stores.counters import RedisJobCounters
from worker.stores.ledger import LedgerEntry, LedgerSweeper, SweepReport, SweepThread, Toucher, redis_clock
from worker.stores.results import RedisResultStore

GRACE_S = 0.3  # real time: every ledger score comes from the Redis clock
LANE = wire.queue_key(Priority.INTERACTIVE)


@pytest.fixture()
def producer(redis_url: str) -> Iterator[Producer]:
    p = Producer(ProducerSettings(redis=RedisSettings(url=redis_url), queue=QueueSettings(max_depth=3)))
    yield p
    p.close()


@pytest.fixture()
def sweeper(client: redis.Redis) -> LedgerSweeper:
    return LedgerSweeper(client, grace_s=GRACE_S)


def _wait_grace(times: float = 1.0) -> None:
    time.sleep(GRACE_S * times + 0.05)


def _job(n: int = 0, **kw: object) -> JobMessage:
    return JobMessage(tenant="acme", source=f"s3://b/{n}.jpg", **kw)


def _seen(client: redis.Redis, job_id: str) -> float | None:
    return client.zscore(Keys.LEDGER_SEEN, job_id)


def _ok(job: JobMessage) -> JobResult:
    return JobResult(
        job_id=job.job_id, tenant=job.tenant, source=job.source, status=Status.OK, score=0.9, label="ai",
        band="ai", model="ffs-mj-5m@1.0", finished_at=datetime.now(UTC),
    )  # fmt: skip


def _pop(client: redis.Redis) -> bytes:
    """What kombu's BRPOP takes: the lane's oldest message. Not recording it anywhere = losing it."""
    raw = client.rpop(LANE)
    assert isinstance(raw, bytes)
    return raw


def _lane(client: redis.Redis) -> list[bytes]:
    """The lane's messages, newest first (the next one to be consumed is the last)."""
    return cast(list[bytes], client.lrange(LANE, 0, -1))


def _same(a: bytes, b: bytes) -> bool:
    """The same message but for the delivery tag (a re-queued message gets a fresh one)."""
    first, second = json.loads(a), json.loads(b)
    tags = first["properties"].pop("delivery_tag"), second["properties"].pop("delivery_tag")
    return all(tags) and first == second


# -- writing, touching, removing -------------------------------------------------------------------------
def test_enqueue_writes_the_ledger_with_the_push(producer: Producer, client: redis.Redis) -> None:
    t0 = redis_clock(client)()
    jobs = [_job(1), _job(2, idempotency_key="k")]
    first, second = producer.enqueue(jobs)
    queued = _lane(client)  # newest first
    for job, job_id, message in zip(reversed(jobs), (second, first), queued, strict=True):
        stored = client.hget(Keys.LEDGER, job_id)
        assert stored == wire.encode(job)[1].encode()  # the job's fields only, not a second message
        entry = LedgerEntry.parse(job_id, stored)
        assert entry is not None and (entry.lane, entry.tenant) == (LANE, "acme")
        assert _same(entry.message, message)
        seen = _seen(client, job_id)
        assert seen is not None and t0 <= seen <= redis_clock(client)()
    # a resubmission under a known idempotency key pushes nothing and adds nothing to the ledger
    assert producer.enqueue([_job(3, idempotency_key="k")]) == [second]
    assert (client.hlen(Keys.LEDGER), client.zcard(Keys.LEDGER_SEEN), client.llen(LANE)) == (2, 2, 2)


def test_a_refused_job_leaves_no_ledger_entry(producer: Producer, client: redis.Redis) -> None:
    producer.enqueue([_job(n) for n in range(3)])
    refused = _job(9)
    with pytest.raises(QueueFullError):
        producer.enqueue([refused])
    assert not client.hexists(Keys.LEDGER, refused.job_id) and _seen(client, refused.job_id) is None
    assert (client.hlen(Keys.LEDGER), client.llen(LANE)) == (3, 3)


def test_redrive_goes_through_the_ledger(producer: Producer, client: redis.Redis) -> None:
    dlq = DeadLetters(client)
    dead = _job()
    dlq.add(dead, ErrorInfo(code="poison", message="killed its worker"))
    new_id = dlq.redrive(dead.job_id, producer)
    entry = LedgerEntry.parse(new_id, cast(bytes, client.hget(Keys.LEDGER, new_id)))
    assert entry is not None and entry.lane == LANE and _same(entry.message, _lane(client)[-1])
    assert _seen(client, new_id) is not None
    assert wire.decode_message(_lane(client)[-1])[1].job_id == new_id


def test_a_delivery_touches_only_ledger_jobs(producer: Producer, client: redis.Redis) -> None:
    (job_id,) = producer.enqueue([_job()])
    pushed = _seen(client, job_id)
    counters = RedisJobCounters(client)
    assert counters.begin_delivery(job_id) == 1
    touched = _seen(client, job_id)
    assert pushed is not None and touched is not None and touched > pushed
    assert counters.begin_delivery(job_id) == 2 and client.ttl(Keys.deliveries(job_id)) > 0
    counters.begin_delivery("not-in-the-ledger")
    assert _seen(client, "not-in-the-ledger") is None


def test_a_worker_getting_a_job_touches_only_ledger_jobs(producer: Producer, client: redis.Redis) -> None:
    (job_id,) = producer.enqueue([_job()])
    pushed, touch = _seen(client, job_id), Toucher(client)
    touch(job_id)
    touched = _seen(client, job_id)
    assert pushed is not None and touched is not None and touched > pushed
    touch("not-in-the-ledger")
    assert _seen(client, "not-in-the-ledger") is None


def test_many_touches_go_in_one_call_and_only_to_ledger_jobs(producer: Producer, client: redis.Redis) -> None:
    ids = producer.enqueue([_job(), _job()])
    pushed = [_seen(client, j) for j in ids]
    Toucher(client).many([*ids, "not-in-the-ledger"])
    touched = [_seen(client, j) for j in ids]
    assert all(p is not None and t is not None and t > p for p, t in zip(pushed, touched, strict=True))
    assert _seen(client, "not-in-the-ledger") is None


@pytest.mark.parametrize("already_stored", [False, True])
def test_put_final_removes_the_ledger_entry(producer: Producer, client: redis.Redis, already_stored: bool) -> None:
    job = _job()
    store = RedisResultStore(client, ttl_s=3600, index_max=10)
    if already_stored:  # a redelivered job whose result exists leaves the ledger too
        producer.enqueue([job])
        store.put_final(_ok(job))
    producer.enqueue([job])
    assert client.hexists(Keys.LEDGER, job.job_id)
    store.put_final(_ok(job))
    assert not client.hexists(Keys.LEDGER, job.job_id) and _seen(client, job.job_id) is None


# -- sweeping ---------------------------------------------------------------------------------------------
def test_nothing_is_checked_within_the_grace(producer: Producer, client: redis.Redis) -> None:
    producer.enqueue([_job()])
    _pop(client)
    assert LedgerSweeper(client, grace_s=60).sweep_once() == SweepReport()
    assert client.llen(LANE) == 0


def test_a_finished_job_is_cleaned(producer: Producer, client: redis.Redis, sweeper: LedgerSweeper) -> None:
    job = _job()
    producer.enqueue([job])
    _pop(client)
    client.set(Keys.result(job.tenant, job.job_id), _ok(job).model_dump_json())  # stored, ledger not updated
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=1, finished_cleaned=1)
    assert (client.hlen(Keys.LEDGER), client.zcard(Keys.LEDGER_SEEN), client.llen(LANE)) == (0, 0, 0)


def test_queued_jobs_are_kept_and_checked_a_grace_later(
    producer: Producer, client: redis.Redis, sweeper: LedgerSweeper
) -> None:
    ids = producer.enqueue([_job(1), _job(2)])  # the first is the lane's head, the second waits behind it
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=2, still_queued=2)
    assert client.llen(LANE) == 2
    assert all((_seen(client, j) or 0) > redis_clock(client)() - GRACE_S for j in ids)  # re-touched
    assert sweeper.sweep_once() == SweepReport()


def test_a_job_behind_a_foreign_head_is_kept(producer: Producer, client: redis.Redis, sweeper: LedgerSweeper) -> None:
    producer.enqueue([_job()])
    _pop(client)
    client.lpush(LANE, b'{"headers":{"id":"webhook-delivery-1"}}')  # not a ledger job: no order to compare
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=1, still_queued=1)
    assert client.llen(LANE) == 1


def test_a_lost_job_is_pushed_again_once_per_grace(
    producer: Producer, client: redis.Redis, sweeper: LedgerSweeper
) -> None:
    producer.enqueue([_job(1)])
    message = _pop(client)  # a worker took it with BRPOP and was killed before kombu recorded it
    (newer,) = producer.enqueue([_job(2)])  # the lane's head is now newer than the lost job's last touch
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=2, still_queued=1, requeued=1)
    assert _same(_lane(client)[-1], message)  # the same message, consumed next
    assert sweeper.sweep_once() == SweepReport()  # touched: not pushed twice within a grace
    _wait_grace(0.5)
    assert sweeper.sweep_once() == SweepReport()
    assert client.llen(LANE) == 2

    assert _same(_pop(client), message)  # lost again, by the next worker that took it...
    done = wire.decode_message(_pop(client))[1]  # ...while the lane moves on
    assert done.job_id == newer
    RedisResultStore(client, ttl_s=3600, index_max=10).put_final(_ok(done))
    producer.enqueue([_job(3)])
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=2, still_queued=1, requeued=1)  # the new head: kept
    assert _same(_lane(client)[-1], message)


def test_a_lost_job_of_an_empty_lane_is_pushed_again(
    producer: Producer, client: redis.Redis, sweeper: LedgerSweeper
) -> None:
    producer.enqueue([_job()])
    message = _pop(client)
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=1, requeued=1)
    (requeued,) = _lane(client)
    assert _same(requeued, message)


def test_an_earlier_format_entry_is_pushed_again_verbatim(client: redis.Redis, sweeper: LedgerSweeper) -> None:
    # A job queued by a producer of the previous release (its ledger held the whole message), lost in a
    # worker during the rolling deploy: the new sweeper pushes exactly what that producer wrote.
    job = _job()
    message = wire.encode_message(job)
    client.hset(Keys.LEDGER, job.job_id, f"{LANE}\n{job.tenant}\n".encode() + message)
    client.zadd(Keys.LEDGER_SEEN, {job.job_id: redis_clock(client)()})
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=1, requeued=1)
    assert _lane(client) == [message]


def test_an_unreadable_entry_is_dropped_from_the_sweep(client: redis.Redis, sweeper: LedgerSweeper) -> None:
    client.hset(Keys.LEDGER, "job-broken1", b'["acme"]')
    client.zadd(Keys.LEDGER_SEEN, {"job-broken1": redis_clock(client)()})
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=1, finished_cleaned=1)
    assert client.llen(LANE) == 0 and client.zcard(Keys.LEDGER_SEEN) == 0


def test_a_delivery_begun_after_the_judgement_stops_the_push(
    producer: Producer, client: redis.Redis, sweeper: LedgerSweeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    (job_id,) = producer.enqueue([_job()])
    _pop(client)
    probe = sweeper._probe

    def probe_then_deliver(live: dict[str, LedgerEntry]) -> Any:  # a worker starts the job mid-sweep
        found = probe(live)
        RedisJobCounters(client).begin_delivery(job_id)
        return found

    monkeypatch.setattr(sweeper, "_probe", probe_then_deliver)
    _wait_grace()
    assert sweeper.sweep_once() == SweepReport(checked=1, requeued=0)
    assert client.llen(LANE) == 0 and client.hexists(Keys.LEDGER, job_id)


def test_one_worker_sweeps_per_interval(client: redis.Redis, sweeper: LedgerSweeper) -> None:
    reports: list[SweepReport] = []
    first = SweepThread(sweeper, interval_s=30, on_report=reports.append, owner="w1")
    second = SweepThread(sweeper, interval_s=30, on_report=reports.append, owner="w2")
    assert first.tick() == SweepReport()
    assert second.tick() is None and first.tick() is None
    assert reports == [SweepReport()] and client.get(Keys.LEDGER_LOCK) == b"w1"
    assert 0 < client.pttl(Keys.LEDGER_LOCK) <= 30_000
