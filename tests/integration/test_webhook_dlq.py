"""A webhook that fails for good, end to end: a real ``fakesake worker`` POSTs to a local receiver that answers
410, the webhook lands in ``fakesake dlq list --kind webhook``, and ``fakesake dlq retry`` has the worker send
it again (the receiver gets the same signed result)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producers import cli
from producers.contract import JobResult
from producers.dlq import DeadLetters
from producers.webhook import verify
from tests.integration.conftest import WEBHOOK_SECRET, Stack
from tests.support.images import encode, photo
from tests.support.receivers import Receiver, eventually
from tests.support.servers import Route
from tests.support.workers import WorkerProcess


def run(capsys: pytest.CaptureFixture[str], stack: Stack, *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = cli.main([*argv, "--redis-url", stack.redis_url])
    out, _ = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()]


def test_a_gone_webhook_is_dead_lettered_and_resent(
    stack: Stack, queue_worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = "hooks-dlq"
    producer = stack.producer(tenant)
    source = stack.http.add("/dlq-hooks/a.jpg", Route(body=encode(photo(96, 80, seed=5), "JPEG", quality=85)))
    receiver = Receiver([410, 204])  # gone at first, back by the time an operator re-sends
    callback = stack.http.add("/dlq-hooks/cb", Route(handler=receiver)) + "?token=receiver-token"
    job_id = producer.submit(source, callback_url=callback)
    stored = producer.wait([job_id], timeout_s=60)[job_id]
    dlq = DeadLetters(stack.client())
    eventually(lambda: dlq.get_webhook(job_id) is not None, 30, "the dead webhook")

    code, records = run(capsys, stack, "dlq", "list", "--kind", "webhook", "--tenant", tenant)
    assert code == 0, queue_worker.tail()
    (record,) = records
    assert (record["kind"], record["job_id"], record["tenant"], record["attempts"]) == ("webhook", job_id, tenant, 1)
    assert record["error"] == {"code": "fetch-failed", "message": "HTTP 410"}
    assert record["callback_url"] == stack.http.url("/dlq-hooks/cb") + "?<redacted>"
    assert run(capsys, stack, "dlq", "list", "--kind", "job", "--tenant", tenant)[1] == []  # the job itself is fine
    assert receiver.count() == 1  # 410 is permanent: no retries

    code, records = run(capsys, stack, "dlq", "retry", job_id, "--tenant", tenant)
    assert code == 0 and [(r["kind"], r["status"]) for r in records] == [("webhook", "requeued")]
    eventually(lambda: receiver.count() == 2, 30, "the re-sent webhook")
    header, body = receiver.calls[1]
    assert verify(body, header, WEBHOOK_SECRET)
    assert body == receiver.calls[0][1] and JobResult.model_validate_json(body) == stored
    assert dlq.get_webhook(job_id) is None and run(capsys, stack, "dlq", "list", "--tenant", tenant)[1] == []
