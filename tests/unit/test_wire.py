"""The hand-built Celery message matches what Celery itself would publish (protocol 2, kombu Redis), and the
ledger value rebuilds the same message."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from producers import wire
from producers.contract import TASK_NAME, JobMessage, Priority, queue_name


def _job(**kw: Any) -> JobMessage:
    return JobMessage(tenant="acme", source="s3://bucket/a.jpg", **kw)


def _body(message: dict[str, Any]) -> list[Any]:
    return list(json.loads(message["body"]))


def _without_tag(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    del message["properties"]["delivery_tag"]
    return message


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
    # no content-encoding (kombu reads utf-8), no body_encoding: the body is plain JSON text
    assert set(message) == {"body", "content-type", "headers", "properties"}
    assert message["content-type"] == "application/json"
    assert isinstance(message["body"], str)
    props = message["properties"]
    assert set(props) == {"delivery_info", "delivery_tag"}  # what kombu's Redis channel requires
    assert props["delivery_info"] == {"exchange": "", "routing_key": "fakesake.interactive"}
    assert props["delivery_tag"]
    assert props["delivery_tag"] != wire.build_message(job)["properties"]["delivery_tag"]  # one per message


@pytest.mark.parametrize(
    ("extra", "absent"),
    [
        ({}, {"schema_version", "idempotency_key", "callback_url", "source_version", "fusion"}),
        (
            {"idempotency_key": "k1", "callback_url": "https://hooks.example/x"},
            {"schema_version", "source_version", "fusion"},
        ),
        (
            {"source_version": "v7", "priority": Priority.BULK},
            {"schema_version", "idempotency_key", "callback_url", "fusion"},
        ),
    ],
)
def test_body_is_protocol2_args_kwargs_embed_without_defaults(extra: dict[str, Any], absent: set[str]) -> None:
    job = _job(**extra)
    (fields,), kwargs, embed = _body(wire.build_message(job))
    assert (kwargs, embed) == ({}, {})  # Celery reads callbacks/errbacks/chain/chord with .get: None
    assert absent.isdisjoint(fields)
    assert {"job_id", "tenant", "source", "model", "priority", "submitted_at"} <= set(fields)  # always sent
    assert fields == {k: v for k, v in job.model_dump(mode="json").items() if k not in absent}
    assert JobMessage.model_validate(fields) == job  # the worker's model fills in the rest


def test_default_model_and_priority_stay_explicit() -> None:
    (fields,), _, _ = _body(wire.build_message(_job()))
    assert (fields["model"], fields["priority"]) == ("ffs-mj-5m", "interactive")


# Headers Celery's worker reads with .get() and a default equal to what send_task writes for our jobs
# (celery.worker.request.Request); we leave them out to keep queued jobs small. ``origin`` names the sending
# process for monitors only (nothing in the worker reads it).
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
    "origin",
}


def test_headers_and_body_match_celery(celery_reference: dict[str, Any]) -> None:
    job = celery_reference["job"]
    ours = wire.build_message(job)
    theirs = celery_reference["headers"]
    assert set(ours["headers"]) == set(theirs) - DEFAULTED_HEADERS
    for key in set(ours["headers"]) - {"argsrepr"}:  # argsrepr: logs only, redacted
        assert ours["headers"][key] == theirs[key], key
    assert ours["headers"]["task"] == TASK_NAME
    assert ours["headers"]["id"] == job.job_id
    (args,), kwargs, embed = _body(ours)
    (their_args,), their_kwargs, their_embed = celery_reference["body"]
    assert JobMessage.model_validate(args) == JobMessage.model_validate(their_args) == job
    assert kwargs == their_kwargs
    assert set(their_embed.values()) == {None} and embed == {}  # every key absent = None


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


def test_decode_reads_an_older_producers_base64_body() -> None:
    job = _job()
    message = wire.build_message(job)
    message["body"] = base64.b64encode(message["body"].encode()).decode()
    message["properties"]["body_encoding"] = "base64"
    assert wire.decode_message(json.dumps(message))[1] == job


# Jobs whose fields exercise JSON escaping and the optional fields.
LEDGER_JOBS = [
    {},
    {"priority": Priority.BULK, "model": "ffs-sd-5m"},
    {"idempotency_key": 'k "1"\n\\', "callback_url": "https://hooks.example/x?a=1&b=é"},
    {"source_version": "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", "idempotency_key": "ключ-😀"},
]


@pytest.mark.parametrize("extra", LEDGER_JOBS)
def test_the_ledger_value_rebuilds_the_same_message(extra: dict[str, Any]) -> None:
    job = JobMessage(tenant="acme.eu-1", source="https://img.example/a b.jpg?X-Amz-Signature=dead", **extra)
    message, stored = wire.encode(job)
    assert _without_tag(message) == _without_tag(wire.encode_message(job))
    lane, tenant, rebuilt = wire.message_from_ledger(job.job_id, stored)
    assert (lane, tenant) == (queue_name(job.priority, job.detectors), job.tenant) == (wire.lane_of(job), job.tenant)
    assert _without_tag(rebuilt) == _without_tag(message)
    assert json.loads(rebuilt)["body"] == json.loads(message)["body"]  # the job text, byte for byte
    tags = [json.loads(m)["properties"]["delivery_tag"] for m in (message, rebuilt)]
    assert tags[0] != tags[1]
    assert wire.decode_message(rebuilt)[1] == job
    assert job.job_id not in stored  # the ledger's field name already says it


def test_ledger_value_is_positional_plus_the_optional_fields() -> None:
    job = _job(idempotency_key="k1")
    _, stored = wire.encode(job)
    when = job.model_dump(mode="json")["submitted_at"]
    expected = ["acme", "s3://bucket/a.jpg", "ffs-mj-5m", "interactive", when, {"idempotency_key": "k1"}]
    assert json.loads(stored) == expected
    assert json.loads(wire.encode(_job())[1])[len(wire.LEDGER_FIELDS) :] == []


@pytest.mark.parametrize(
    "stored",
    [
        b"",
        b"not json",
        b"{}",
        b'"a string"',
        b'["acme","s3://b/k.jpg","ffs-mj-5m","interactive"]',  # a field short
        b'["acme","s3://b/k.jpg","ffs-mj-5m","interactive","2024-05-01T10:00:00Z",{},{}]',  # one too many
        b'["acme","s3://b/k.jpg","ffs-mj-5m","interactive","2024-05-01T10:00:00Z",[]]',  # rest not an object
        b'["acme",7,"ffs-mj-5m","interactive","2024-05-01T10:00:00Z"]',  # a non-string field
        b'["acme","s3://b/k.jpg","ffs-mj-5m","urgent","2024-05-01T10:00:00Z"]',  # no such lane
        b"\xff\xfe",
    ],
)
def test_a_value_that_is_not_a_jobs_fields_is_refused(stored: bytes) -> None:
    with pytest.raises(ValueError):
        wire.message_from_ledger("job12345", stored)


def test_typical_message_fits_the_redis_budget() -> None:
    # The memory budget is 1 KiB of Redis memory per queued job: the message in its lane (plus ~35 bytes of list
    # overhead) and its ledger entry (value plus ~100 bytes of hash overhead, ~150 bytes in the seen zset).
    job = JobMessage(tenant="acme", source="s3://bucket/images/2024/01/photo-000123.jpg")
    message, stored = wire.encode(job)
    assert len(message) <= 560
    assert len(stored) <= 120


def test_argsrepr_is_bounded() -> None:
    job = _job(callback_url="https://hooks.example/" + "x" * 3000)
    big = JobMessage(tenant="acme", source="https://example.com/" + "y" * 4000)
    assert len(wire.build_message(job)["headers"]["argsrepr"]) <= wire.ARGSREPR_MAXSIZE
    assert len(wire.build_message(big)["headers"]["argsrepr"]) <= wire.ARGSREPR_MAXSIZE
