"""A webhook that fails for good, end to end: a real ``fakesake worker`` POSTs to a local receiver that answers
410, the webhook lands in ``fakesake dlq list --kind webhook``, and ``fakesake dlq retry`` has the worker send
it again (the receiver gets the same signed result)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from producers import cli
from producers.contract import JobResult
from producers.dlq import DeadLetters
from producers.webhook import SIGNATURE_HEADER, verify
from tests.integration.conftest import WEBHOOK_SECRET, Stack
from tests.support.images import encode, photo
from tests.support.servers import Route
from tests.support.workers import WorkerProcess


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Wait for ``check`` (a bound on waiting, not an assertion about time)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s}s")
        time.sleep(0.05)


@dataclass
class Receiver:
    """Records each POST (signature header, raw body) and answers ``statuses`` in turn (the last one after)."""

    statuses: list[int]
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length", "0")))
        with self.lock:
            self.calls.append((req.headers.get(SIGNATURE_HEADER, ""), body))
            status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        req.send_response(status)
        req.send_header("Content-Length", "0")
        req.end_headers()

    def count(self) -> int:
        with self.lock:
            return len(self.calls)


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
    eventually(lambda: dlq.get_webhook(job_id) is not None, "the dead webhook", 30)

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
    eventually(lambda: receiver.count() == 2, "the re-sent webhook", 30)
    header, body = receiver.calls[1]
    assert verify(body, header, WEBHOOK_SECRET)
    assert body == receiver.calls[0][1] and JobResult.model_validate_json(body) == stored
    assert dlq.get_webhook(job_id) is None and run(capsys, stack, "dlq", "list", "--tenant", tenant)[1] == []
