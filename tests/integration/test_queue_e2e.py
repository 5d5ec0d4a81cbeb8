"""The queue pipeline end to end: producers -> Redis -> real ``fakesake worker`` processes -> result store.

Real redis-server, moto S3 server, local HTTP server and real worker processes ("Tests with real
parts"). One worker (module-scoped, see ``conftest.py``) serves most tests; the rate-limit and crash tests
share a pair of rate-limited workers on their own Redis database. Measured figures are printed (``-s``)
and attached to the report with ``record_property``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from producers.client import QueueFullError
from producers.contract import JobResult, Keys, Priority, Status
from producers.dlq import DeadLetters
from producers.errors import ErrorCode
from producers.webhook import verify
from tests.integration.conftest import WEBHOOK_SECRET, Stack, new_stack, start_workers
from tests.support.images import encode, hostile, photo
from tests.support.receivers import Receiver, eventually, reply
from tests.support.servers import HttpServer, RedisServer, Route, S3Server
from tests.support.workers import REPO_ROOT, WorkerProcess

MODEL_REF = "ffs-mj-5m@1.0"
SCORE_TOLERANCE = 1e-5
Property = Callable[[str, object], None]


# --- helpers ------------------------------------------------------------------------------------------


def flaky(body: bytes, failures: int) -> Callable[[BaseHTTPRequestHandler], None]:
    """A route handler that answers 503 to its first ``failures`` hits, then serves ``body``."""
    lock = threading.Lock()
    hits = [0]

    def handle(req: BaseHTTPRequestHandler) -> None:
        with lock:
            hits[0] += 1
            n = hits[0]
        if n <= failures:
            reply(req, 503, b"busy, try again", "text/plain")
        else:
            reply(req, 200, body)

    return handle


def result_keys(stack: Stack, tenant: str) -> list[bytes]:
    with stack.client() as client:
        return list(client.scan_iter(match=Keys.result(tenant, "*"), count=1000))


def scan_scores(paths: list[Path], weights: Path, out: Path) -> dict[str, dict[str, Any]]:
    """``fakesake scan`` in this process (same code path as the CLI, minus its logging setup)."""
    from worker.service.cli import build_parser

    args = build_parser().parse_args(
        [
            "scan",
            *map(str, paths),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--format",
            "jsonl",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert args.run(args) == 0
    return {r["source"]: r for r in map(json.loads, out.read_text().splitlines())}


def put_s3(stack: Stack, key: str, data: bytes) -> str:
    client = stack.s3.client()  # type: ignore[no-untyped-call]
    client.put_object(Bucket=stack.bucket, Key=key, Body=data)
    return f"s3://{stack.bucket}/{key}"


def good_image(i: int) -> tuple[bytes, str]:
    """Varied small photos in the formats clients send (JPEG, PNG, WebP), deterministic per ``i``."""
    img = photo(64 + (i * 37) % 200, 64 + (i * 53) % 160, seed=10_000 + i)
    fmt, suffix = [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")][i % 3]
    return encode(img, fmt, **({"quality": 70 + i % 25} if fmt != "PNG" else {})), suffix


# --- 1. a mixed set of jobs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    kind: str  # good | transient | error
    code: str | None = None
    local: Path | None = None  # the image bytes, for the scan comparison
    path: str | None = None  # HTTP path, to count hits


def _mixed_jobs(stack: Stack, tmp_path: Path) -> dict[str, Expect]:
    """source -> expectation: ~200 jobs over S3 and HTTP, good, bad, missing and flaky."""
    http = stack.http
    bad = hostile()
    html, _ = bad["html-named-jpg"]
    trunc, _ = bad["truncated-jpeg"]
    table: dict[str, Expect] = {}
    for i in range(140):  # good images, half over S3, half over HTTP
        data, suffix = good_image(i)
        local = tmp_path / f"good-{i:03d}{suffix}"
        local.write_bytes(data)
        if i % 2:
            table[put_s3(stack, f"mixed/good-{i:03d}{suffix}", data)] = Expect("good", local=local)
        else:
            path = f"/mixed/good-{i:03d}{suffix}"
            table[http.add(path, Route(body=data, content_type="image/jpeg"))] = Expect("good", local=local, path=path)
    for i in range(16):  # transient 503s (twice) that succeed on the third attempt
        data, suffix = good_image(1000 + i)
        local = tmp_path / f"flaky-{i:03d}{suffix}"
        local.write_bytes(data)
        path = f"/mixed/flaky-{i:03d}{suffix}"
        table[http.add(path, Route(handler=flaky(data, failures=2)))] = Expect("transient", local=local, path=path)
    for i in range(12):  # an HTML error page served as an image, and truncated JPEGs
        for name, data, code in (("html", html(), "not-an-image"), ("trunc", trunc(), "corrupt-image")):
            if i % 2:
                table[put_s3(stack, f"mixed/{name}-{i}.jpg", data)] = Expect("error", code)
            else:
                path = f"/mixed/{name}-{i}.jpg"
                table[http.add(path, Route(body=data, content_type="image/jpeg"))] = Expect("error", code, path=path)
    for i in range(10):  # 404s: nothing at the HTTP path, no such S3 key
        table[http.url(f"/mixed/missing-{i}.jpg")] = Expect("error", "not-found", path=f"/mixed/missing-{i}.jpg")
        table[f"s3://{stack.bucket}/mixed/missing-{i}.jpg"] = Expect("error", "not-found")
    return table


def test_mixed_jobs_each_get_one_correct_final_result(
    stack: Stack, queue_worker: WorkerProcess, tmp_path: Path, record_property: Property
) -> None:
    tenant = "mixed"
    table = _mixed_jobs(stack, tmp_path)
    assert len(table) >= 200
    producer = stack.producer(tenant)
    sources = list(table)
    t0 = time.monotonic()
    ids = producer.submit_many(
        [
            {"source": s, "priority": Priority.BULK if n % 3 == 0 else Priority.INTERACTIVE}
            for n, s in enumerate(sources)
        ]
    )
    results = producer.wait(ids, timeout_s=120)
    elapsed = time.monotonic() - t0
    assert len(set(ids)) == len(sources) and len(results) == len(ids), "every job has a final result"

    scan_out = tmp_path / "scan.jsonl"
    locals_: list[Path] = [e.local for e in table.values() if e.local is not None]
    scanned = scan_scores(locals_, stack.weights, scan_out)
    worst = 0.0
    for job_id, source in zip(ids, sources, strict=True):
        result, expect = results[job_id], table[source]
        assert (result.job_id, result.tenant, result.source) == (job_id, tenant, source)
        if expect.kind == "error":
            assert result.status is Status.ERROR and result.error is not None, source
            assert (result.error.code, result.error.retryable, result.attempts) == (expect.code, False, 1), source
            continue
        assert result.status is Status.OK, (source, result.error)
        reference = scanned[str(expect.local)]
        assert result.score is not None
        worst = max(worst, abs(result.score - reference["score"]))
        assert (result.label, result.band, result.model) == (reference["label"], reference["band"], reference["model"])
        assert result.model.startswith(f"{MODEL_REF}+")  # name@version + the loaded weights' sha256
        assert result.attempts == (3 if expect.kind == "transient" else 1), source
        t = result.timings
        assert None not in (t.queued_ms, t.fetch_ms, t.decode_ms, t.inference_ms, t.total_ms), source
        if expect.path is not None:
            assert stack.http.hits[expect.path] == result.attempts, source  # one fetch per attempt
    assert worst <= SCORE_TOLERANCE

    # Exactly one final result per job: one record each, one index entry each, nothing left open or unacked.
    assert len(result_keys(stack, tenant)) == len(ids)
    with stack.client() as client:
        assert client.zcard(Keys.tenant_index(tenant)) == len(ids)
        assert not any(client.exists(Keys.deliveries(j)) for j in ids)
        eventually(lambda: client.hlen("unacked") == 0, 10, "every message acked")
        assert client.llen("fakesake.interactive") == client.llen("fakesake.bulk") == 0
        letters = {x.job_id: x for x in DeadLetters(client).list(1000) if x.job and x.job.tenant == tenant}
    failed = {j for j, s in zip(ids, sources, strict=True) if table[s].kind == "error"}
    assert set(letters) == failed, "every permanent failure, and nothing else, is dead-lettered"
    for job_id in failed:
        assert letters[job_id].error == results[job_id].error
    print(f"\nmixed: {len(ids)} jobs in {elapsed:.1f}s; max |score - scan| = {worst:.2e}")
    record_property("mixed_jobs", len(ids))
    record_property("mixed_seconds", round(elapsed, 2))
    record_property("max_score_delta", worst)


# --- 2. idempotency -----------------------------------------------------------------------------------


def test_idempotency_key_resubmission_is_one_job(stack: Stack, queue_worker: WorkerProcess) -> None:
    tenant = "idem"
    producer = stack.producer(tenant)
    data, _ = good_image(7)
    url = stack.http.add("/idem/a.jpg", Route(body=data))
    first = producer.submit(url, idempotency_key="order-42")
    again = producer.submit(url, idempotency_key="order-42")
    assert again == first
    assert producer.wait([first], timeout_s=30)[first].ok
    assert producer.submit(url, idempotency_key="order-42") == first  # also after it finished
    time.sleep(1.0)  # a second job, had one been queued, would have finished by now
    assert len(result_keys(stack, tenant)) == 1
    assert stack.http.hits["/idem/a.jpg"] == 1
    other = producer.submit(url, idempotency_key="order-43")
    assert other != first and producer.wait([other], timeout_s=30)[other].ok


# --- 3. dead letters ----------------------------------------------------------------------------------


def test_permanent_and_poison_jobs_are_dead_lettered_and_can_be_redriven(
    stack: Stack, queue_worker: WorkerProcess
) -> None:
    tenant = "dlq"
    producer = stack.producer(tenant)
    data, _ = good_image(8)
    permanent = producer.submit(stack.http.url("/dlq/missing.jpg"))
    poison_url = stack.http.add("/dlq/poison.jpg", Route(body=data))
    poison_job = producer.build_job(poison_url, tenant=tenant)
    with stack.client() as client:
        # What three dead workers leave behind: three deliveries opened and never closed.
        client.set(Keys.deliveries(poison_job.job_id), 3)
        producer.enqueue([poison_job])
        results = producer.wait([permanent, poison_job.job_id], timeout_s=30)
        dlq = DeadLetters(client)
        # The DLQ record follows the stored result (see JobProcessor._fail), so it may lag it a little.
        eventually(
            lambda: dlq.get(permanent) is not None and dlq.get(poison_job.job_id) is not None, 10, "dead-letter records"
        )
        perm, poison = dlq.get(permanent), dlq.get(poison_job.job_id)

    perm_error, poison_error = results[permanent].error, results[poison_job.job_id].error
    assert perm_error is not None and perm_error.code == "not-found"
    assert poison_error is not None and poison_error.code == ErrorCode.POISON.value
    assert perm is not None and perm.job is not None and perm.job.source == stack.http.url("/dlq/missing.jpg")
    assert (perm.error.code, perm.attempts, perm.deliveries) == ("not-found", 1, 1)
    assert poison is not None and poison.job == poison_job
    assert (poison.error.code, poison.deliveries) == ("poison", 4)
    assert stack.http.hits.get("/dlq/poison.jpg", 0) == 0, "a poison job is not run again"

    new_id = DeadLetters(producer.redis).redrive(poison_job.job_id, producer)
    redriven = producer.wait([new_id], timeout_s=30)[new_id]
    assert new_id != poison_job.job_id and redriven.ok and redriven.source == poison_url
    assert producer.get_result(poison_job.job_id) == results[poison_job.job_id], "the old result stands"


# --- 5. lanes -------------------------------------------------------------------------------------------


def test_interactive_lane_is_served_while_bulk_is_full(
    stack: Stack, queue_worker: WorkerProcess, record_property: Property
) -> None:
    producer = stack.producer("lanes")
    data, _ = good_image(9)
    url = stack.http.add("/lanes/a.jpg", Route(body=data))
    bulk_n = 240
    t0 = time.monotonic()
    bulk = producer.submit_many([url] * bulk_n, priority=Priority.BULK)
    time.sleep(0.5)  # the worker is busy with bulk
    t1 = time.monotonic()
    interactive = [producer.submit(url, priority=Priority.INTERACTIVE) for _ in range(4)]
    fast = producer.wait(interactive, timeout_s=30)
    latency = time.monotonic() - t1
    bulk_left = bulk_n - len(producer.wait(bulk, timeout_s=0))
    assert len(fast) == 4 and all(r.ok for r in fast.values())
    done = producer.wait(bulk, timeout_s=90)
    drain = time.monotonic() - t0
    assert len(done) == bulk_n and all(r.ok for r in done.values())
    print(
        f"\nlanes: interactive x4 done {latency:.2f}s after submit with {bulk_left}/{bulk_n} bulk unfinished; "
        f"bulk drained in {drain:.1f}s"
    )
    record_property("interactive_latency_s", round(latency, 2))
    record_property("bulk_drain_s", round(drain, 2))
    assert bulk_left >= bulk_n // 3, "interactive jobs finished well before the bulk backlog drained"
    assert latency < drain / 3


# --- 6. backpressure ------------------------------------------------------------------------------------


def test_backpressure_refuses_at_the_cap_and_waits_for_room(stack: Stack, queue_worker: WorkerProcess) -> None:
    cap = 30
    producer = stack.producer("pressure", max_depth=cap)
    data, _ = good_image(10)
    url = stack.http.add("/pressure/a.jpg", Route(body=data))
    assert producer.queue_depths()["bulk"] == 0
    with pytest.raises(QueueFullError) as refused:
        producer.submit_many([url] * 50, priority=Priority.BULK)  # one atomic script call: 30 in, 20 refused
    assert refused.value.code is ErrorCode.QUEUE_FULL and "max_depth" in refused.value.message
    accepted = list(refused.value.accepted.values())
    assert len(accepted) == cap

    depths: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            depths.append(producer.queue_depths()["bulk"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        more = producer.submit_many([url] * 80, priority=Priority.BULK, wait_if_full_s=60)
    finally:
        stop.set()
        watcher.join()
    assert len(more) == 80
    assert max(depths) <= cap, "the lane never grew past its cap"
    results = producer.wait(accepted + more, timeout_s=60)
    assert len(results) == cap + 80 and all(r.ok for r in results.values())


# --- 7. tenant isolation ----------------------------------------------------------------------------


def test_tenant_cannot_read_another_tenants_result(stack: Stack, queue_worker: WorkerProcess) -> None:
    data, _ = good_image(11)
    url = stack.http.add("/tenants/a.jpg", Route(body=data))
    alice, bob = stack.producer("alice"), stack.producer("bob")
    job_id = alice.submit(url)
    assert alice.wait([job_id], timeout_s=30)[job_id].ok
    assert bob.get_result(job_id) is None
    assert bob.wait([job_id], timeout_s=1.5, poll_s=0.5) == {}
    assert bob.list_results() == [] and [r.job_id for r in alice.list_results()] == [job_id]
    env = {**os.environ, "FAKESAKE_REDIS__URL": stack.redis_url}
    cmd = [sys.executable, "-m", "worker.service.cli", "result", job_id]
    assert subprocess.run([*cmd, "--tenant", "bob"], env=env, capture_output=True, timeout=60).returncode == 3
    assert subprocess.run([*cmd, "--tenant", "alice"], env=env, capture_output=True, timeout=60).returncode == 0


# --- 8. webhooks --------------------------------------------------------------------------------------


def test_webhook_is_signed_and_retried_without_touching_the_result(stack: Stack, queue_worker: WorkerProcess) -> None:
    producer = stack.producer("hooks")
    data, _ = good_image(12)
    url = stack.http.add("/hooks/a.jpg", Route(body=data))
    happy, grumpy, on_error = Receiver([200]), Receiver([500, 200]), Receiver([200])
    jobs = {
        "happy": producer.submit(url, callback_url=stack.http.add("/hooks/happy", Route(handler=happy))),
        "grumpy": producer.submit(url, callback_url=stack.http.add("/hooks/grumpy", Route(handler=grumpy))),
        "error": producer.submit(
            stack.http.url("/hooks/missing.jpg"), callback_url=stack.http.add("/hooks/error", Route(handler=on_error))
        ),
    }
    stored = producer.wait(list(jobs.values()), timeout_s=30)
    eventually(
        lambda: len(happy.calls) == 1 and len(grumpy.calls) == 2 and len(on_error.calls) == 1, 30, "webhook deliveries"
    )
    for name, receiver in (("happy", happy), ("grumpy", grumpy), ("error", on_error)):
        for header, body in receiver.calls:
            assert verify(body, header, WEBHOOK_SECRET), name
            assert not verify(body, header, "another-secret")
            assert JobResult.model_validate_json(body) == stored[jobs[name]], name
    assert grumpy.calls[0][1] == grumpy.calls[1][1], "a retry re-sends the same result"
    assert stored[jobs["error"]].error is not None
    time.sleep(0.5)  # no late extra deliveries
    assert (len(happy.calls), len(grumpy.calls), len(on_error.calls)) == (1, 2, 1)
    assert producer.get_result(jobs["grumpy"]) == stored[jobs["grumpy"]]


# --- 9. the CLI ---------------------------------------------------------------------------------------


def test_cli_submit_wait_prints_one_record_per_job_with_source_as_given(
    stack: Stack, queue_worker: WorkerProcess
) -> None:
    data, _ = good_image(13)
    inputs = [
        stack.http.add("/cli/a.jpg", Route(body=data)) + "?size=large&v=2",
        put_s3(stack, "cli/photo 1.jpg", data),
        stack.http.url("/cli/missing.jpg"),
        put_s3(stack, "cli/page.jpg", b"<html>not an image</html>"),
    ]
    env = {
        **os.environ,
        "FAKESAKE_REDIS__URL": stack.redis_url,
        "FAKESAKE_S3__ENDPOINT_URL": stack.s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.service.cli",
            "submit",
            *inputs,
            "--tenant",
            "cli",
            "--wait",
            "--timeout",
            "60",
            "--format",
            "jsonl",
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr  # some jobs failed
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["source"] for r in records] == inputs
    assert [r["status"] for r in records] == ["ok", "ok", "error", "error"]
    assert [r["error"]["code"] for r in records[2:]] == ["not-found", "not-an-image"]
    assert records[0]["score"] == records[1]["score"], "same bytes over HTTP and S3, same score"
    assert all(r["model"].startswith(f"{MODEL_REF}+") for r in records) and len({r["job_id"] for r in records}) == 4


# --- 4. rate limit across two workers, and a real crash --------------------------------------------


@pytest.fixture(scope="module")
def limited(
    redis_srv: RedisServer, s3_srv: S3Server, queue_http: HttpServer, checkpoint: Path
) -> Iterator[tuple[Stack, list[WorkerProcess]]]:
    """Two workers sharing a tenant limit of 5 jobs/s (burst 1); a job dies with its first worker."""
    stack = new_stack(redis_srv, s3_srv, queue_http, checkpoint)
    env = stack.env(
        {
            "FAKESAKE_RATE_LIMIT__TENANT_PER_S": "5",
            "FAKESAKE_RATE_LIMIT__TENANT_BURST": "1",
            "FAKESAKE_RETRY__MAX_DELIVERIES": "1",
        }
    )
    with start_workers([env, env], ["rl1", "rl2"]) as workers:
        yield stack, workers


def _processed(worker: WorkerProcess, job_ids: list[str]) -> int:
    log = worker.log_path.read_text(errors="replace")
    return sum(f"[{j}] succeeded" in log for j in job_ids)


def test_tenant_rate_limit_holds_across_two_workers(
    limited: tuple[Stack, list[WorkerProcess]], record_property: Property
) -> None:
    stack, workers = limited
    rate, n = 5.0, 40
    producer = stack.producer("limited")
    data, _ = good_image(14)
    url = stack.http.add("/limited/a.jpg", Route(body=data))
    submitted = time.time()  # no grant can precede the submission (same host clock as the workers')
    ids = producer.submit_many([url] * n)
    results = producer.wait(ids, timeout_s=60)
    assert len(results) == n and all(r.ok for r in results.values())
    assert all(r.attempts == 1 for r in results.values()), "a deferral is not a failed attempt"
    # When each job passed the limiter: the start of its final delivery (finish time less time spent).
    admitted = sorted(r.finished_at.timestamp() - (r.timings.total_ms or 0) / 1000 for r in results.values())
    span = admitted[-1] - admitted[0]
    measured = (n - 1) / span
    busiest = max(sum(1 for t in admitted if s <= t < s + 1.0) for s in admitted)
    per_worker = [_processed(w, ids) for w in workers]
    print(
        f"\nrate limit: {n} jobs admitted over {span:.2f}s = {measured:.2f} jobs/s (limit {rate:g}/s, burst 1, "
        f"ideal span {(n - 1) / rate:.1f}s); busiest 1 s window {busiest}; jobs per worker {per_worker}"
    )
    record_property("rate_limit_measured_per_s", round(measured, 3))
    record_property("rate_limit_span_s", round(span, 2))
    # The limiter's promise is an upper bound on grants. A job starts at or after its grant, and the first grant
    # comes after the submission, so the last start is at least (n - 1 - burst) / rate after the submission,
    # however late a busy machine runs the jobs. Start times may bunch (a countdown that fires late), so a
    # per-window count of starts is reported, not asserted; how close to the limit a machine gets is a bench
    # figure.
    burst = 1
    assert admitted[-1] - submitted >= (n - 1 - burst) / rate, "more than rate + burst grants were made"
    assert all(count > 0 for count in per_worker), "both workers took part"


def test_job_whose_worker_is_killed_is_finished_as_poison(limited: tuple[Stack, list[WorkerProcess]]) -> None:
    """Must run last among the ``limited`` tests: it kills one of the two workers."""
    stack, workers = limited
    producer = stack.producer("crash")
    release = threading.Event()
    data, _ = good_image(15)

    def stall(req: BaseHTTPRequestHandler) -> None:  # holds the fetch until the worker is dead
        release.wait(30)
        with contextlib.suppress(OSError):  # the worker it was for is gone
            reply(req, 200, data)

    url = stack.http.add("/crash/a.jpg", Route(handler=stall))
    job_id = producer.submit(url)
    try:
        eventually(lambda: stack.http.hits.get("/crash/a.jpg", 0) == 1, 20, "the fetch to start")
        victim = next(w for w in workers if f"[{job_id}] received" in w.log_path.read_text(errors="replace"))
        victim.kill()
    finally:
        release.set()
    survivor = next(w for w in workers if w is not victim)
    assert survivor.alive()
    # The survivor restores the unacked message after the visibility timeout (8 s in tests).
    result = producer.wait([job_id], timeout_s=40)[job_id]
    assert result.error is not None and result.error.code == ErrorCode.POISON.value
    with stack.client() as client:
        dlq = DeadLetters(client)
        eventually(lambda: dlq.get(job_id) is not None, 10, "the dead-letter record")
        letter = dlq.get(job_id)
    assert letter is not None and letter.deliveries == 2 and letter.error.code == "poison"
    assert stack.http.hits["/crash/a.jpg"] == 1, "the redelivered poison job is not fetched again"
