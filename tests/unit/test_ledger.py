"""The ledger sweeper's pure parts: the keep/requeue/clean decision and the parsing of what it reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producers import wire
from producers.contract import JobMessage, Priority
from worker.stores.ledger import Action, LedgerEntry, decide, message_id

SEEN = 1000.0


def _without_tag(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    del message["properties"]["delivery_tag"]
    return message


@pytest.mark.parametrize(
    ("finished", "lane_empty", "head_seen", "expected"),
    [
        (True, False, None, Action.CLEAN),  # a result wins over everything
        (True, True, None, Action.CLEAN),
        (False, False, SEEN - 5, Action.KEEP),  # head older than our last touch: we may be behind it
        (False, False, SEEN, Action.KEEP),  # the head is our own job
        (False, False, None, Action.KEEP),  # head is not a ledger job (a webhook, a Celery retry's twin)
        (False, False, SEEN + 0.001, Action.REQUEUE),  # head newer than our last touch: we are not queued
        (False, True, None, Action.REQUEUE),  # empty lane: nobody holds it
    ],
)
def test_decide(finished: bool, lane_empty: bool, head_seen: float | None, expected: Action) -> None:
    assert decide(finished=finished, seen=SEEN, lane_empty=lane_empty, head_seen=head_seen) is expected


def test_entry_parse_rebuilds_the_message_from_the_jobs_fields() -> None:
    job = JobMessage(tenant="acme", source="s3://b/k.jpg", priority=Priority.BULK, idempotency_key="k")
    message, stored = wire.encode(job)
    entry = LedgerEntry.parse(job.job_id, stored.encode())
    assert entry is not None and (entry.lane, entry.tenant) == ("fakesake.bulk", "acme")
    assert _without_tag(entry.message) == _without_tag(message)


def test_entry_parse_reads_the_earlier_format_verbatim() -> None:
    # written by a producer of the previous release: "lane\ntenant\n<exact message>", during a rolling deploy
    message = b'{"body":"W1t7fV0se30","headers":{"id":"abc123def"},"properties":{"body_encoding":"base64"}}'
    entry = LedgerEntry.parse("abc123def", b"fakesake.bulk\nacme\n" + message)
    assert entry == LedgerEntry("fakesake.bulk", "acme", message)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"fakesake.bulk",
        b"fakesake.bulk\nacme",
        b"fakesake.bulk\n\xff\nmessage",  # not UTF-8
        b'["acme","s3://b/k.jpg"]',  # today's format, cut short
        b'["acme","s3://b/k.jpg","ffs-mj-5m","nowhere","2024-05-01T10:00:00Z"]',  # no such lane
    ],
)
def test_entry_parse_rejects_unreadable_values(raw: bytes) -> None:
    assert LedgerEntry.parse("abc123def", raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b'{"headers":{"id":"abc123def"}}', "abc123def"),
        (b'{"headers":{"id":7}}', None),
        (b'{"headers":{}}', None),
        (b'{"body":"x"}', None),
        (b"[1, 2]", None),
        (b"not json", None),
    ],
)
def test_message_id(raw: bytes | None, expected: str | None) -> None:
    assert message_id(raw) == expected


def test_message_id_of_a_producer_message_is_the_job_id() -> None:
    job = JobMessage(tenant="acme", source="s3://b/k.jpg")
    assert message_id(wire.encode_message(job)) == job.job_id
