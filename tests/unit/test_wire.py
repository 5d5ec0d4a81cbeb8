"""The hand-built Celery message matches what Celery itself would publish (protocol 2, kombu Redis)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from producers import wire
from producers.contract import TASK_NAME, JobMessage, Priority, queue_name


def _job(**kw: Any) -> JobMessage:
    return JobMessage(tenant="acme", source="s3://bucket/a.jpg", **kw)


@pytest.fixture(scope="module")
def celery_reference() -> dict[str, Any]:
    """Headers/properties/body Celery's own AMQP layer builds for the same call (no broker needed)."""
    from celery import Celery

    app = Celery("ref", broker="memory://", set_as_current=False)
    job = _job(priority=Priority.BULK)
    msg = app.amqp.as_task_v2(job.job_id, TASK_NAME, args=[job.model_dump(mode="json")])
    return {"job": job, "headers": msg.headers, "properties": msg.properties, "body": msg.body}


def test_envelope_has_kombu_redis_shape() -> None:
    job = _job()
    message = wire.build_message(job)
    assert set(message) == {"body", "content-encoding", "content-type", "headers", "properties"}
    assert message["content-type"] == "application/json"
    assert message["content-encoding"] == "utf-8"
    props = message["properties"]
    assert set(props) == {"body_encoding", "priority", "delivery_info", "delivery_tag"}  # what kombu reads
    assert props["body_encoding"] == "base64"
    assert props["priority"] == 0
    assert props["delivery_info"] == {"exchange": "", "routing_key": "fakesake.interactive"}
    assert props["delivery_tag"]
    assert props["delivery_tag"] != wire.build_message(job)["properties"]["delivery_tag"]  # unique per message


def test_body_is_protocol2_args_kwargs_embed() -> None:
    job = _job(idempotency_key="k1", callback_url="https://hooks.example/x")
    body = json.loads(base64.b64decode(wire.build_message(job)["body"]))
    assert body == [
        [job.model_dump(mode="json")],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


# Headers Celery's worker reads with .get() and a default equal to what send_task writes for our jobs
# (celery.worker.request.Request); we leave them out to keep queued jobs small.
DEFAULTED_HEADERS = {
    "lang",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "kwargsrepr",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
}


def test_headers_match_celery(celery_reference: dict[str, Any]) -> None:
    job = celery_reference["job"]
    ours = wire.build_message(job)
    theirs = celery_reference["headers"]
    assert set(ours["headers"]) == set(theirs) - DEFAULTED_HEADERS
    for key in set(ours["headers"]) - {"origin", "argsrepr"}:  # origin names the process; argsrepr: logs only
        assert ours["headers"][key] == theirs[key], key
    assert ours["headers"]["task"] == TASK_NAME
    assert ours["headers"]["id"] == job.job_id
    args, kwargs, embed = celery_reference["body"]
    assert json.loads(base64.b64decode(ours["body"])) == [list(args), kwargs, embed]


@pytest.mark.parametrize("priority", list(Priority))
def test_lane_is_the_plain_queue_list(priority: Priority) -> None:
    job = _job(priority=priority)
    assert wire.queue_key(priority) == queue_name(priority)
    assert wire.build_message(job)["properties"]["delivery_info"]["routing_key"] == queue_name(priority)
    assert "\x06\x16" not in wire.queue_key(priority)  # kombu's per-priority list suffix: never used


def test_roundtrip_and_push() -> None:
    pushed: list[tuple[str, bytes]] = []

    class FakeList:
        def lpush(self, name: str, *values: Any) -> int:
            pushed.extend((name, v) for v in values)
            return len(values)

    jobs = [_job(), _job(priority=Priority.BULK)]
    assert wire.push(FakeList(), jobs) == 2
    assert [name for name, _ in pushed] == ["fakesake.interactive", "fakesake.bulk"]
    for (_, raw), job in zip(pushed, jobs, strict=True):
        envelope, decoded = wire.decode_message(raw)
        assert decoded == job
        assert envelope["headers"]["id"] == job.job_id


def test_typical_message_fits_in_a_kibibyte_of_redis() -> None:
    # Redis adds ~35 bytes per list entry; issue 6 budgets 1 KiB of Redis memory per queued job.
    job = JobMessage(tenant="acme", source="s3://bucket/images/2024/01/photo-000123.jpg")
    assert len(wire.encode_message(job)) <= 900


def test_argsrepr_is_bounded() -> None:
    job = _job(callback_url="https://hooks.example/" + "x" * 3000)
    big = JobMessage(tenant="acme", source="https://example.com/" + "y" * 4000)
    assert len(wire.build_message(job)["headers"]["argsrepr"]) <= wire.ARGSREPR_MAXSIZE
    assert len(wire.build_message(big)["headers"]["argsrepr"]) <= wire.ARGSREPR_MAXSIZE
