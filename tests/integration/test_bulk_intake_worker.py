"""A real ``fakesake worker`` with ``batch.intake = bulk``, end to end: producers -> Redis -> bulk intake.

Real redis-server, moto S3 server, local HTTP server and real worker processes. Proves that with the bulk
intake: jobs submitted by the producer all finish with stored results and leave no lane, side lane or kombu
unacked record behind; a message that is not a valid job is dead-lettered (and one whose body cannot be read is
handed to Celery, which drops it) without stopping the worker; webhooks are delivered, signed; jobs deferred by
the tenant rate limit finish through the side lane (Celery's consumer logs receiving them; the bulk intake does
not log per job); and jobs taken by a worker that is SIGKILLed come back, after the visibility timeout, to a
second bulk worker, which finishes every one of them.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from producers import wire
from producers.contract import ALL_QUEUES, JobMessage, Priority, Status, side_lane
from producers.dlq import DeadLetters
from producers.errors import ErrorCode
from producers.webhook import verify
from tests.integration.conftest import WEBHOOK_SECRET, Stack, new_stack, start_workers
from tests.support.images import encode, photo
from tests.support.receivers import Receiver, eventually, reply
from tests.support.servers import HttpServer, RedisServer, Route, S3Server
from tests.support.workers import WorkerProcess

BULK_INTAKE = {"FAKESAKE_BATCH__INTAKE": "bulk"}
#: Every list a worker of the default detector consumes: the lanes (the bulk intake's) and their side lanes.
LISTS = (*ALL_QUEUES, *(side_lane(lane) for lane in ALL_QUEUES))
RATE_PER_S = 20  # the module worker's tenant limit (burst 1): jobs submitted together are deferred


def image(i: int) -> bytes:
    return encode(photo(64 + i % 5 * 16, 64 + i % 3 * 16, seed=20_000 + i), "JPEG", quality=85)


def assert_drained(stack: Stack) -> None:
    """Nothing queued, nothing taken and unacked (acks are batched: they may lag the results a little)."""
    with stack.client() as client:
        eventually(lambda: client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0, 10, "every ack")
        assert {lane: client.llen(lane) for lane in LISTS} == dict.fromkeys(LISTS, 0)


def celery_received(worker: WorkerProcess, job_ids: list[str]) -> set[str]:
    """The jobs Celery's consumer received (from a side lane: the bulk intake logs no per-job line)."""
    log = worker.log_path.read_text(errors="replace")
    return {j for j in job_ids if f"[{j}] received" in log}


@pytest.fixture(scope="module")
def bulk_stack(redis_srv: RedisServer, s3_srv: S3Server, queue_http: HttpServer, checkpoint: Path) -> Stack:
    return new_stack(redis_srv, s3_srv, queue_http, checkpoint)


@pytest.fixture(scope="module")
def bulk_worker(bulk_stack: Stack) -> Iterator[WorkerProcess]:
    env = bulk_stack.env(
        {**BULK_INTAKE, "FAKESAKE_RATE_LIMIT__TENANT_PER_S": str(RATE_PER_S), "FAKESAKE_RATE_LIMIT__TENANT_BURST": "1"}
    )
    with start_workers([env], ["bulk"]) as (worker,):
        yield worker


def test_submitted_jobs_all_finish_and_leave_nothing_queued_or_unacked(
    bulk_stack: Stack, bulk_worker: WorkerProcess
) -> None:
    producer = bulk_stack.producer("many")
    urls = [bulk_stack.http.add(f"/many/{i}.jpg", Route(body=image(i))) for i in range(8)]
    items = [{"source": urls[i % 8], "priority": Priority.BULK if i % 2 else Priority.INTERACTIVE} for i in range(40)]
    ids = producer.submit_many(items)
    results = producer.wait(ids, timeout_s=60)
    assert len(results) == 40
    for job_id, item in zip(ids, items, strict=True):
        result = results[job_id]
        assert result.status is Status.OK, result.error
        assert (result.job_id, result.tenant, result.source) == (job_id, "many", item["source"])
        assert result.score is not None and result.attempts == 1
    assert len({r.score for r in results.values()}) == 8, "one score per image"
    assert_drained(bulk_stack)
    assert bulk_worker.alive()


def test_jobs_deferred_by_the_rate_limit_finish_through_the_side_lane(
    bulk_stack: Stack, bulk_worker: WorkerProcess
) -> None:
    producer = bulk_stack.producer("limited")
    url = bulk_stack.http.add("/limited/a.jpg", Route(body=image(1)))
    ids = producer.submit_many([url] * 10)
    results = producer.wait(ids, timeout_s=30)
    assert len(results) == 10 and all(r.ok for r in results.values())
    assert all(r.attempts == 1 for r in results.values()), "a deferral is not a failed attempt"
    deferred = celery_received(bulk_worker, ids)
    assert 0 < len(deferred) < 10, "with burst 1, some jobs ran at once and the others were deferred"
    assert_drained(bulk_stack)


def test_an_invalid_job_is_dead_lettered_and_the_worker_goes_on(bulk_stack: Stack, bulk_worker: WorkerProcess) -> None:
    producer = bulk_stack.producer("invalid")
    template = wire.build_message(JobMessage(tenant="invalid", source="s3://bucket/x.jpg"))
    bad_payload = {"job_id": "not a valid id!", "tenant": "invalid", "source": "ftp://nowhere/x.jpg"}
    invalid = json.loads(json.dumps(template))
    invalid["body"] = json.dumps([[bad_payload], {}, {}])
    unreadable = json.loads(json.dumps(template))  # a tagged classify message whose body is not JSON
    unreadable["headers"]["id"] = "unreadable-1"
    unreadable["properties"]["delivery_tag"] = "unreadable-tag-1"
    unreadable["body"] = "[[{this is not json"
    lane = wire.queue_key(Priority.INTERACTIVE)
    with bulk_stack.client() as client:
        client.lpush(lane, json.dumps(invalid), json.dumps(unreadable))
        dlq = DeadLetters(client)

        def letter_found() -> bool:
            return any(x.payload == bad_payload and x.error.code == ErrorCode.INVALID_JOB.value for x in dlq.list(1000))

        eventually(letter_found, 20, "the invalid job's dead letter")
    url = bulk_stack.http.add("/invalid/after.jpg", Route(body=image(2)))
    after = producer.submit(url)
    assert producer.wait([after], timeout_s=30)[after].ok, "the worker still runs jobs"
    assert bulk_worker.alive()
    assert_drained(bulk_stack)  # Celery read the unreadable one from the side lane and dropped it


def test_a_finished_jobs_webhook_is_delivered_signed(bulk_stack: Stack, bulk_worker: WorkerProcess) -> None:
    producer = bulk_stack.producer("hooks")
    url = bulk_stack.http.add("/hooks/a.jpg", Route(body=image(3)))
    receiver = Receiver([200])
    job_id = producer.submit(url, callback_url=bulk_stack.http.add("/hooks/receiver", Route(handler=receiver)))
    stored = producer.wait([job_id], timeout_s=30)[job_id]
    assert stored.ok
    eventually(lambda: receiver.count() == 1, 20, "the webhook delivery")
    header, body = receiver.calls[0]
    assert verify(body, header, WEBHOOK_SECRET)
    assert body and stored.model_validate_json(body) == stored
    assert_drained(bulk_stack)


def test_jobs_of_a_killed_bulk_worker_are_finished_by_another(
    redis_srv: RedisServer, s3_srv: S3Server, queue_http: HttpServer, checkpoint: Path
) -> None:
    stack = new_stack(redis_srv, s3_srv, queue_http, checkpoint)
    env = stack.env(
        {
            **BULK_INTAKE,
            "FAKESAKE_REDIS__VISIBILITY_TIMEOUT_S": "4",  # kombu's restore sweep runs every second then
            "FAKESAKE_RATE_LIMIT__MAX_DEFER_S": "2",
            "FAKESAKE_LEDGER__GRACE_S": "8",
        }
    )
    release = threading.Event()
    data = image(4)

    def stall(req: BaseHTTPRequestHandler) -> None:  # holds every fetch until the first worker is dead
        release.wait(30)
        with contextlib.suppress(OSError):  # the worker it was for is gone
            reply(req, 200, data)

    path = "/crash/a.jpg"
    url = stack.http.add(path, Route(handler=stall))
    producer = stack.producer("crash")
    n = 12
    try:
        with start_workers([env], ["victim"]) as (victim,):
            ids = producer.submit_many([url] * n)
            eventually(lambda: stack.http.hits.get(path, 0) >= 4, 20, "fetches in flight")
            with stack.client() as client:
                assert client.hlen("unacked") > 0, "the bulk intake holds taken jobs"
            victim.kill()
    finally:
        release.set()
    assert producer.wait(ids, timeout_s=0) == {}, "the victim finished nothing"
    with start_workers([env], ["survivor"]) as (survivor,):
        results = producer.wait(ids, timeout_s=45)
        assert len(results) == n, f"{n - len(results)} jobs lost"
        assert all(r.status is Status.OK for r in results.values()), [r.error for r in results.values()]
        assert_drained(stack)
        assert survivor.alive()
