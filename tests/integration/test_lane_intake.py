"""``worker.stores.intake.LaneIntake`` against a real redis-server, and kombu's own recovery of what it takes.

Proves: ``take`` serves lanes in the order given and at most ``n`` messages; each runnable message it returns
is recorded exactly as kombu's ``QoS.append`` records one (the unacked hash holds ``[message, exchange,
routing_key]``, the index is scored with the consumer's clock); messages the intake must not run (a retry with
an ``eta``, a webhook, a message that is not JSON, one without a delivery tag) go to the side lane in their
order and are not returned; ``ack`` forgets both records; ``release`` requeues once and only once; kombu's
restore sweep (``QoS.restore_visible``, which every worker's Celery consumer runs) puts a taken message back
on its lane after the visibility timeout; ``wait`` leaves the message it saw at the head of its lane.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from producers import wire
from producers.contract import JobMessage, JobResult, Priority, Status, side_lane
from worker.stores.intake import UNACKED, UNACKED_INDEX, LaneIntake

INTERACTIVE, BULK = wire.queue_key(Priority.INTERACTIVE), wire.queue_key(Priority.BULK)
LANES = (INTERACTIVE, BULK)
LONG_AGO = 1_000.0  # a consumer clock far in the past: kombu's restore sees the records as timed out


def job_message(priority: Priority = Priority.INTERACTIVE, n: int = 0) -> tuple[JobMessage, bytes]:
    job = JobMessage(tenant="acme", source=f"s3://bucket/{n}.jpg", priority=priority)
    return job, wire.encode_message(job)


def with_changes(raw: bytes, **headers: Any) -> bytes:
    message = json.loads(raw)
    message["headers"].update(headers)
    return json.dumps(message).encode()


def tag_of(raw: bytes) -> str:
    tag: str = json.loads(raw)["properties"]["delivery_tag"]
    return tag


def push(client: redis.Redis, lane: str, *raws: bytes) -> None:
    """As kombu's ``_put`` (and the producers) do: LPUSH, so the oldest is at the right, where BRPOP/RPOP take."""
    for raw in raws:
        client.lpush(lane, raw)


def drain(client: redis.Redis, lane: str) -> list[bytes]:
    """A list's messages, oldest first."""
    out: list[bytes] = []
    while (raw := client.rpop(lane)) is not None:
        assert isinstance(raw, bytes)
        out.append(raw)
    return out


@pytest.fixture()
def intake(client: redis.Redis) -> LaneIntake:
    return LaneIntake(client, clock=lambda: LONG_AGO)


def test_take_serves_lanes_in_order_and_at_most_n(client: redis.Redis, intake: LaneIntake) -> None:
    interactive = [job_message(Priority.INTERACTIVE, i)[1] for i in range(2)]
    bulk = [job_message(Priority.BULK, 10 + i)[1] for i in range(3)]
    push(client, BULK, *bulk)
    push(client, INTERACTIVE, *interactive)
    taken = intake.take(LANES, 3)
    assert taken == [(INTERACTIVE, interactive[0]), (INTERACTIVE, interactive[1]), (BULK, bulk[0])]
    assert drain(client, BULK) == bulk[1:] and client.llen(INTERACTIVE) == 0
    assert intake.take(LANES, 5) == [], "nothing left"


def test_take_records_each_message_as_kombu_does(client: redis.Redis, intake: LaneIntake) -> None:
    raws = [job_message(Priority.BULK, i)[1] for i in range(3)]
    push(client, BULK, *raws)
    assert [raw for _lane, raw in intake.take(LANES, 10)] == raws
    assert client.hlen(UNACKED) == client.zcard(UNACKED_INDEX) == 3
    for raw in raws:
        record = client.hget(UNACKED, tag_of(raw))
        assert record is not None
        assert json.loads(record) == [json.loads(raw), "", BULK]
        assert client.zscore(UNACKED_INDEX, tag_of(raw)) == LONG_AGO


def test_a_message_without_delivery_info_is_recorded_under_its_lane(client: redis.Redis, intake: LaneIntake) -> None:
    _job, raw = job_message()
    message = json.loads(raw)
    del message["properties"]["delivery_info"]
    raw = json.dumps(message).encode()
    push(client, INTERACTIVE, raw)
    assert intake.take(LANES, 1) == [(INTERACTIVE, raw)]
    record = client.hget(UNACKED, tag_of(raw))
    assert record is not None and json.loads(record) == [message, "", INTERACTIVE]


def test_messages_it_must_not_run_go_to_the_side_lane_in_order(client: redis.Redis, intake: LaneIntake) -> None:
    _job, runnable = job_message(n=1)
    retry = with_changes(job_message(n=2)[1], eta="2030-01-01T00:00:00+00:00")  # a retry with a countdown
    result = JobResult(job_id="a" * 32, tenant="acme", source="s3://bucket/x.jpg", status=Status.OK, score=0.5)
    _lane, webhook = wire.encode_webhook_message(result, "https://hooks.example/x", "hook-1")
    not_json = b"{this is not json"
    no_tag = json.loads(job_message(n=3)[1])
    del no_tag["properties"]["delivery_tag"]
    other_type = json.loads(job_message(n=4)[1])
    other_type["content-type"] = "application/x-python-serialize"
    others = [retry, webhook, not_json, json.dumps(no_tag).encode(), json.dumps(other_type).encode()]
    push(client, INTERACTIVE, others[0], others[1], runnable, *others[2:])
    taken = intake.take(LANES, 10)
    assert taken == [(INTERACTIVE, runnable)]
    assert drain(client, side_lane(INTERACTIVE)) == others, "every other message, byte for byte, oldest first"
    assert client.llen(INTERACTIVE) == 0
    assert client.hkeys(UNACKED) == [tag_of(runnable).encode()] and client.zcard(UNACKED_INDEX) == 1


def test_a_null_eta_is_runnable(client: redis.Redis, intake: LaneIntake) -> None:
    raw = with_changes(job_message()[1], eta=None)  # what Celery writes for a message without a countdown
    push(client, INTERACTIVE, raw)
    assert intake.take(LANES, 1) == [(INTERACTIVE, raw)]


def test_ack_forgets_both_records(client: redis.Redis, intake: LaneIntake) -> None:
    raws = [job_message(n=i)[1] for i in range(3)]
    push(client, INTERACTIVE, *raws)
    intake.take(LANES, 3)
    intake.ack([tag_of(raws[0]), tag_of(raws[2])])
    assert client.hkeys(UNACKED) == [tag_of(raws[1]).encode()]
    assert client.zrange(UNACKED_INDEX, 0, -1) == [tag_of(raws[1]).encode()]
    intake.ack([tag_of(raws[1])])
    assert not client.exists(UNACKED) and not client.exists(UNACKED_INDEX)


def test_release_requeues_once(client: redis.Redis, intake: LaneIntake) -> None:
    first, second = job_message(n=1)[1], job_message(n=2)[1]
    push(client, INTERACTIVE, first, second)
    assert intake.take(LANES, 1) == [(INTERACTIVE, first)]
    assert intake.release(tag_of(first), first, INTERACTIVE) is True
    assert not client.exists(UNACKED) and not client.exists(UNACKED_INDEX)
    assert intake.release(tag_of(first), first, INTERACTIVE) is False, "not queued twice"
    assert drain(client, INTERACTIVE) == [second, first], "back of the queue, as kombu's reject with requeue"


def test_release_to_the_side_lane(client: redis.Redis, intake: LaneIntake) -> None:
    raw = job_message()[1]
    push(client, INTERACTIVE, raw)
    intake.take(LANES, 1)
    assert intake.release(tag_of(raw), raw, side_lane(INTERACTIVE)) is True
    assert drain(client, side_lane(INTERACTIVE)) == [raw] and client.llen(INTERACTIVE) == 0


@pytest.fixture()
def kombu_qos(redis_url: str) -> Iterator[Any]:
    """kombu's own Redis QoS, as a Celery consumer with a 1 s visibility timeout has it."""
    with Connection(redis_url, transport_options={"visibility_timeout": 1}) as conn:  # type: ignore[no-untyped-call]
        yield conn.default_channel.qos


def test_kombu_restores_what_take_recorded(client: redis.Redis, intake: LaneIntake, kombu_qos: Any) -> None:
    job, raw = job_message(Priority.BULK)
    newer = job_message(Priority.BULK, 1)[1]
    push(client, BULK, raw, newer)
    assert intake.take(LANES, 1) == [(BULK, raw)]
    kombu_qos.restore_visible(num=100)  # the index says LONG_AGO: past any visibility timeout
    assert not client.exists(UNACKED) and not client.exists(UNACKED_INDEX)
    restored = drain(client, BULK)
    assert restored[1] == newer and len(restored) == 2
    message, restored_job = wire.decode_message(restored[0])
    assert restored_job == job, "the same job, at the head of its lane again (kombu RPUSHes it)"
    assert message["properties"]["delivery_tag"] == tag_of(raw)
    assert message["headers"]["redelivered"] is True
    # What kombu restored is taken again like any message, and a late release of the first take is refused.
    push(client, BULK, restored[0])
    assert [lane for lane, _raw in intake.take(LANES, 5)] == [BULK]
    intake.ack([tag_of(raw)])
    assert intake.release(tag_of(raw), raw, BULK) is False and client.llen(BULK) == 0


def test_kombu_leaves_records_younger_than_the_visibility_timeout(client: redis.Redis, kombu_qos: Any) -> None:
    intake = LaneIntake(client)  # the real clock: taken just now
    raw = job_message()[1]
    push(client, INTERACTIVE, raw)
    intake.take(LANES, 1)
    kombu_qos.restore_visible(num=100)
    assert client.hlen(UNACKED) == 1 and client.llen(INTERACTIVE) == 0


def test_wait_sees_a_message_and_leaves_it_at_the_head(client: redis.Redis, intake: LaneIntake) -> None:
    first, second = job_message(Priority.BULK, 1)[1], job_message(Priority.BULK, 2)[1]
    push(client, BULK, first, second)
    assert intake.wait(LANES, 1.0) is True
    assert client.rpop(BULK) == first, "the oldest is still next"
    assert client.rpop(BULK) == second
    assert not client.exists(UNACKED)


def test_wait_on_empty_lanes_returns_false_within_its_timeout(intake: LaneIntake) -> None:
    t0 = time.monotonic()
    assert intake.wait(LANES, 1.0) is False
    assert 0.5 <= time.monotonic() - t0 < 2.0
