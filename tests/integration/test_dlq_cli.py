"""``fakesake dlq`` on a real redis-server with two tenants' dead jobs and dead webhooks: ``--tenant`` scopes
what is listed and what is retried; ``--kind`` tells dead jobs from dead webhooks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producers import cli, wire
from producers.contract import WEBHOOK_TASK_NAME, ErrorInfo, JobMessage, JobResult, Priority, Status, side_lane
from producers.dlq import DeadLetters

POISON = ErrorInfo(code="poison", message="crashed its worker")
GONE = ErrorInfo(code="fetch-failed", message="HTTP 410")
LANE = wire.queue_key(Priority.INTERACTIVE)


@pytest.fixture(autouse=True)
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKESAKE_REDIS__URL", redis_url)
    monkeypatch.setenv("FAKESAKE_TENANT", "acme")  # a submitter's default: dlq must not read it as a scope


@pytest.fixture()
def dead(client: redis.Redis) -> Iterator[dict[str, list[str]]]:
    """Two dead jobs and one dead webhook per tenant (interleaved), plus one invalid message."""
    dlq = DeadLetters(client)
    ids: dict[str, list[str]] = {"acme": [], "beta": [], "acme-hooks": [], "beta-hooks": []}
    for i in range(2):
        for tenant in ("acme", "beta"):
            job = JobMessage(tenant=tenant, source=f"s3://b/{tenant}-{i}.jpg")
            dlq.add(job, POISON, attempts=1, deliveries=3)
            ids[tenant].append(job.job_id)
    for tenant in ("acme", "beta"):
        result = JobResult(job_id=uuid.uuid4().hex, tenant=tenant, source="s3://b/k.jpg", status=Status.OK, score=0.5)
        dlq.add_webhook(result, f"https://hooks.example/{tenant}?token=s3cret", GONE, attempts=1)
        ids[f"{tenant}-hooks"].append(result.job_id)
    ids["raw"] = [dlq.add_raw({"job_id": "abcdef123456", "tenant": "acme"}, code="invalid-job", message="bad")]
    yield ids


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = cli.main(list(argv))
    out, _ = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()]


def test_list_with_tenant_shows_only_that_tenant(
    dead: dict[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, records = run(capsys, "dlq", "list", "--tenant", "beta")
    assert code == 0
    assert {r["tenant"] for r in records} == {"beta"}
    assert [r["job_id"] for r in records if r["kind"] == "job"] == dead["beta"]
    assert [r["job_id"] for r in records if r["kind"] == "webhook"] == dead["beta-hooks"]

    code, records = run(capsys, "dlq", "list", "--tenant", "acme", "--kind", "webhook")
    (hook,) = records
    assert hook["job_id"] == dead["acme-hooks"][0] and hook["error"] == {"code": "fetch-failed", "message": "HTTP 410"}
    assert hook["callback_url"] == "https://hooks.example/acme?<redacted>"  # the token is never shown

    code, records = run(capsys, "dlq", "list", "--kind", "job")  # no --tenant: every tenant's, raw included
    assert {r["job_id"] for r in records} == {*dead["acme"], *dead["beta"], *dead["raw"]}
    assert {r["kind"] for r in records} == {"job"}
    code, records = run(capsys, "dlq", "list", "--limit", "3")
    assert len(records) == 3


def test_retry_all_with_tenant_touches_only_that_tenant(
    dead: dict[str, list[str]], client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    dlq = DeadLetters(client)
    code, records = run(capsys, "dlq", "retry", "--all", "--tenant", "beta")
    assert code == 0
    assert [(r["kind"], r["job_id"]) for r in records] == [
        *(("job", j) for j in dead["beta"]),
        ("webhook", dead["beta-hooks"][0]),
    ]
    queued = [json.loads(raw) for raw in client.lrange(LANE, 0, -1) + client.lrange(side_lane(LANE), 0, -1)]
    jobs = [wire.decode_message(json.dumps(m))[1] for m in queued if m["headers"]["task"] != WEBHOOK_TASK_NAME]
    hooks = [m for m in queued if m["headers"]["task"] == WEBHOOK_TASK_NAME]
    assert len(jobs) == 2 and {j.tenant for j in jobs} == {"beta"} and len(hooks) == 1
    assert client.llen(side_lane(LANE)) == 1  # the webhook, a follow-up, waits on the side lane
    assert json.loads(hooks[0]["body"])[0][0]["tenant"] == "beta"
    # acme's dead letters, and the raw one, are untouched
    assert {x.job_id for x in dlq.list(None)} == {*dead["acme"], *dead["raw"]}
    assert [x.job_id for x in dlq.webhooks(None)] == dead["acme-hooks"]


def test_retry_by_id_is_scoped_and_kinded(
    dead: dict[str, list[str]], client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, records = run(capsys, "dlq", "retry", dead["beta"][0], dead["raw"][0], "--tenant", "acme")
    assert code == 3 and [r["error"]["code"] for r in records] == ["not-found", "not-found"]
    assert client.llen(LANE) == 0 and DeadLetters(client).get(dead["beta"][0]) is not None

    code, records = run(capsys, "dlq", "retry", dead["acme-hooks"][0], "--kind", "job")
    assert code == 3 and records[0]["error"]["code"] == "not-found"  # it is a dead webhook, not a dead job
    code, records = run(capsys, "dlq", "retry", dead["acme"][0], "--kind", "webhook")
    assert code == 3 and records[0]["error"]["code"] == "not-found"  # and that one a dead job
    assert client.llen(LANE) == 0

    code, records = run(capsys, "dlq", "retry", dead["acme-hooks"][0], "--tenant", "acme")
    assert code == 0 and records[0]["kind"] == "webhook" and records[0]["status"] == "requeued"
    (raw,) = client.lrange(side_lane(LANE), 0, -1)
    assert json.loads(raw)["headers"]["id"] == records[0]["task_id"]
