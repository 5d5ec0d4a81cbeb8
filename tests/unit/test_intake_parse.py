"""``worker.core.intake.parse_delivery``: what the bulk intake reads from a queued message.

Proves it reads the producers' wire format (``producers.wire``) and the base64 body Celery itself writes, that
the rate-limit slots a retried job holds travel into the delivery, and that every message it cannot read raises
:class:`UnreadableMessage` carrying the delivery tag when (and only when) the message has a string one, so the
intake can hand it to Celery's side lane.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from producers import wire
from producers.contract import JobMessage, Priority
from worker.core.intake import Delivery, UnreadableMessage, parse_delivery

LANE = "fakesake.interactive"


def _job(**fields: Any) -> JobMessage:
    return JobMessage(tenant="acme", source="s3://bucket/key.jpg", **fields)


def _message(job: JobMessage) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(wire.encode_message(job))
    return message


def _raw(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def test_a_producer_message_gives_the_job_its_tag_and_task_id() -> None:
    job = _job(priority=Priority.BULK, callback_url="https://hooks.example/x")
    raw = wire.encode_message(job)
    delivery = parse_delivery("fakesake.bulk", raw)
    message = json.loads(raw)
    assert isinstance(delivery, Delivery)
    assert delivery.lane == "fakesake.bulk"
    assert delivery.tag == message["properties"]["delivery_tag"] and isinstance(delivery.tag, str)
    assert delivery.task_id == job.job_id
    assert delivery.payload == wire.job_fields(job)
    assert JobMessage.model_validate(delivery.payload) == job
    assert delivery.reserved == frozenset()
    assert delivery.raw == raw, "the message is kept byte for byte, to put it back"


def test_a_base64_body_as_celery_writes_it_is_decoded() -> None:
    job = _job()
    message = _message(job)
    message["body"] = base64.b64encode(message["body"].encode()).decode()
    message["properties"]["body_encoding"] = "base64"
    delivery = parse_delivery(LANE, _raw(message))
    assert delivery.task_id == job.job_id
    assert JobMessage.model_validate(delivery.payload) == job


def test_rate_reserved_in_kwargs_becomes_the_reserved_slots() -> None:
    job = _job()
    message = _message(job)
    message["body"] = json.dumps([[wire.job_fields(job)], {"rate_reserved": ["tenant:acme", "global"]}, {}])
    delivery = parse_delivery(LANE, _raw(message))
    assert delivery.reserved == frozenset({"tenant:acme", "global"})
    message["body"] = json.dumps([[wire.job_fields(job)], {"rate_reserved": None}, {}])
    assert parse_delivery(LANE, _raw(message)).reserved == frozenset()


def _broken(change: str) -> tuple[bytes, str | None]:
    """A message broken one way, and the tag its UnreadableMessage must carry."""
    message = _message(_job())
    tag: str | None = message["properties"]["delivery_tag"]
    if change == "bad body json":
        message["body"] = "[[{not json"
    elif change == "missing body":
        del message["body"]
    elif change == "args not a list":
        message["body"] = json.dumps([{"job_id": "x"}, {}, {}])
    elif change == "empty args":
        message["body"] = json.dumps([[], {}, {}])
    elif change == "missing tag":
        del message["properties"]["delivery_tag"]
        tag = None
    elif change == "tag not a string":
        message["properties"]["delivery_tag"] = 12345
        tag = None
    elif change == "task id not a string":
        message["headers"]["id"] = 7
    elif change == "missing task id":
        del message["headers"]["id"]
    elif change == "rate_reserved not a list":
        message["body"] = json.dumps([[{"job_id": "x"}], {"rate_reserved": "tenant:acme"}, {}])
    elif change == "bad base64":
        message["properties"]["body_encoding"] = "base64"
        message["body"] = "!!! not base64 !!!"
    return _raw(message), tag


@pytest.mark.parametrize(
    "change",
    [
        "bad body json",
        "missing body",
        "args not a list",
        "empty args",
        "missing tag",
        "tag not a string",
        "task id not a string",
        "missing task id",
        "rate_reserved not a list",
        "bad base64",
    ],
)
def test_an_unreadable_message_raises_with_its_tag(change: str) -> None:
    raw, tag = _broken(change)
    with pytest.raises(UnreadableMessage) as info:
        parse_delivery(LANE, raw)
    assert info.value.tag == tag
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe", b"{}"])
def test_a_message_that_is_not_an_envelope_raises_without_a_tag(raw: bytes) -> None:
    with pytest.raises(UnreadableMessage) as info:
        parse_delivery(LANE, raw)
    assert info.value.tag is None


def test_a_tag_survives_a_message_whose_envelope_is_otherwise_broken() -> None:
    raw = json.dumps({"properties": {"delivery_tag": "tag-1"}, "headers": "not a dict", "body": 5}).encode()
    with pytest.raises(UnreadableMessage) as info:
        parse_delivery(LANE, raw)
    assert info.value.tag == "tag-1"
