"""S3 versions and S3 retries against moto's S3 server and a real redis-server.

A versioned bucket holds two different images under one key: ``fakesake scan``, the job processor and a real
worker each read the version asked for (``s3://bucket/key?versionId=V`` or ``source_version``) and record the
version id and ETag they scored. A GET that keeps failing is retried by the job alone: one GET per attempt.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.client import Producer
from producers.contract import JobMessage, JobResult, Status
from producers.dlq import DeadLetters
from producers.settings import ProducerSettings, S3Settings
from tests.integration.conftest import Stack
from tests.support.faultproxy import FaultProxy
from tests.support.images import encode, photo
from tests.support.servers import S3Server
from tests.support.workers import WorkerProcess
from worker.core import registry
from worker.core.pipeline import Preparer
from worker.core.processing import Finished, JobProcessor, RetryLater
from worker.core.retry import RetryPolicy
from worker.service import builder
from worker.service.settings import WorkerSettings
from worker.stores.counters import RedisJobCounters
from worker.stores.results import RedisResultStore

SPEC = registry.get("ffs-mj-5m")
OLD = encode(photo(96, 80, seed=1), "PNG")
NEW = encode(photo(80, 96, seed=2), "PNG")


@dataclass(frozen=True)
class Versioned:
    """``key`` in ``bucket`` holds OLD as version ``old`` and NEW (the latest) as version ``new``."""

    bucket: str
    key: str
    old: str
    new: str

    def uri(self, version: str | None = None) -> str:
        return f"s3://{self.bucket}/{self.key}" + (f"?versionId={version}" if version else "")


def etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # a single-part upload's ETag, unquoted as records keep it


def versioned_bucket(s3: Any, bucket: str, key: str = "dir/face.png") -> Versioned:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=bucket, Key=key, Body=OLD)["VersionId"]
    new = s3.put_object(Bucket=bucket, Key=key, Body=NEW)["VersionId"]
    assert old != new and etag(OLD) != etag(NEW)
    return Versioned(bucket, key, old, new)


@pytest.fixture()
def versioned(s3_srv: S3Server) -> Versioned:
    s3 = s3_srv.client()  # type: ignore[no-untyped-call]
    bucket = f"ver-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return versioned_bucket(s3, bucket)


def s3_settings(endpoint_url: str, max_attempts: int = 4) -> S3Settings:
    return S3Settings(
        endpoint_url=endpoint_url,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        max_attempts=max_attempts,
    )


def score_of(data: bytes) -> Future[float]:
    """The 'model': 0.1 for the old image, 0.9 for the new one, so a score names the bytes scored."""
    future: Future[float] = Future()
    future.set_result({OLD: 0.1, NEW: 0.9}[data])
    return future


def processor(settings: WorkerSettings, client: redis.Redis) -> JobProcessor:
    """The worker's job processor with the worker's own fetcher (from the builder) and real Redis stores."""
    return JobProcessor(
        spec=SPEC,
        preparer=Preparer(builder.fetcher(settings), lambda data: data),
        infer=score_of,
        store=RedisResultStore(client, ttl_s=600, index_max=100),
        counters=RedisJobCounters(client),
        dead_letters=DeadLetters(client),
        retry=builder.retry_policy(settings),
    )


def run_to_the_end(proc: JobProcessor, job: JobMessage, max_deliveries: int = 20) -> JobResult:
    """Deliver ``job`` again after every RetryLater (no waiting: the countdown is the broker's business)."""
    for _ in range(max_deliveries):
        decision = proc.process(job)
        if isinstance(decision, Finished):
            return decision.result
        assert isinstance(decision, RetryLater)
    raise AssertionError(f"job not finished after {max_deliveries} deliveries")


# --- versions ---------------------------------------------------------------------------------------------


def test_job_processor_scores_the_requested_version(
    s3_srv: S3Server, versioned: Versioned, client: redis.Redis
) -> None:
    settings = WorkerSettings(s3=s3_settings(s3_srv.endpoint_url))
    proc = processor(settings, client)
    producer = Producer(ProducerSettings(tenant="acme"), redis_client=client)
    jobs = {
        "uri form": producer.build_job(versioned.uri(versioned.old)),
        "field": producer.build_job(versioned.uri(), source_version=versioned.old),
        # a worker honours the URI form even in a message that never went through the submit-time copy
        "uri only": JobMessage.model_construct(
            **{
                **JobMessage(tenant="acme", source="s3://b/k").model_dump(),
                "source": versioned.uri(versioned.old),
                "source_version": None,
            }
        ),
        "latest": producer.build_job(versioned.uri()),
    }
    results = {name: run_to_the_end(proc, job) for name, job in jobs.items()}
    for name in ("uri form", "field", "uri only"):
        result = results[name]
        assert (result.status, result.score) == (Status.OK, 0.1), name
        assert (result.source_version, result.etag) == (versioned.old, etag(OLD)), name
    latest = results["latest"]
    assert (latest.score, latest.source_version, latest.etag) == (0.9, versioned.new, etag(NEW))
    stored = JobResult.model_validate_json(client.get(f"fakesake:result:acme:{jobs['field'].job_id}") or b"")
    assert (stored.source_version, stored.etag) == (versioned.old, etag(OLD))


def test_scan_reads_the_requested_version_and_lists_prefixes_as_before(
    s3_srv: S3Server, versioned: Versioned, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.service.cli import build_parser

    for name, value in {"ACCESS_KEY_ID": "testing", "SECRET_ACCESS_KEY": "testing", "REGION": "us-east-1"}.items():
        monkeypatch.setenv(f"FAKESAKE_S3__{name}", value)
    out = tmp_path / "scan.jsonl"
    inputs = [versioned.uri(versioned.old), f"s3://{versioned.bucket}/dir/", versioned.uri(versioned.new)]
    args = build_parser().parse_args(
        [
            "scan",
            *inputs,
            "--s3-endpoint-url",
            s3_srv.endpoint_url,
            "--weights",
            str(checkpoint),
            "--device",
            "cpu",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert args.run(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in records] == [inputs[0], versioned.uri(), inputs[2]]  # the prefix listed the key
    assert [(r["source_version"], r["etag"]) for r in records] == [
        (versioned.old, etag(OLD)),
        (versioned.new, etag(NEW)),
        (versioned.new, etag(NEW)),
    ]
    assert records[0]["score"] != records[1]["score"] == records[2]["score"]  # different bytes were scored


@pytest.fixture(scope="module")
def worker_versioned(stack: Stack) -> Versioned:
    return versioned_bucket(stack.s3.client(), stack.bucket)  # type: ignore[no-untyped-call]


def test_real_worker_scores_the_requested_version(
    stack: Stack, queue_worker: WorkerProcess, worker_versioned: Versioned
) -> None:
    producer = stack.producer()
    old_id = producer.submit(worker_versioned.uri(worker_versioned.old))
    new_id = producer.submit(worker_versioned.uri())
    results = producer.wait([old_id, new_id], timeout_s=120)
    old, new = results[old_id], results[new_id]
    assert old.status is Status.OK and new.status is Status.OK, (old.error, new.error)
    assert (old.source_version, old.etag) == (worker_versioned.old, etag(OLD))
    assert (new.source_version, new.etag) == (worker_versioned.new, etag(NEW))
    assert old.score != new.score


# --- retries ----------------------------------------------------------------------------------------------


class FailingGets(FaultProxy):
    """In front of S3: every GET of ``path`` answers 503 SlowDown; everything else is forwarded."""

    def __init__(self, upstream: str, path: str) -> None:
        super().__init__(upstream, rate=0.0, s3=True)
        self.failing = path

    def _decide(self, method: str, path: str) -> str:
        outcome = "503" if method == "GET" and path == self.failing else "ok"
        with self._lock:
            self.log.append((method, path, outcome))
        return outcome

    def requests(self, method: str) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.log if m == method and p == self.failing)


@pytest.fixture()
def failing(s3_srv: S3Server) -> Iterator[tuple[FailingGets, str]]:
    s3 = s3_srv.client()  # type: ignore[no-untyped-call]
    bucket = f"flaky-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="busy.png", Body=OLD)
    proxy = FailingGets(s3_srv.endpoint_url, f"/{bucket}/busy.png").start()
    try:
        yield proxy, f"s3://{bucket}/busy.png"
    finally:
        proxy.stop()


def test_a_failing_object_costs_one_get_per_job_attempt(failing: tuple[FailingGets, str], client: redis.Redis) -> None:
    proxy, source = failing
    settings = WorkerSettings(
        s3=s3_settings(proxy.url, max_attempts=3),
        retry=WorkerSettings().retry.model_copy(update={"max_attempts": 3, "backoff_base_s": 0.01}),
    )
    assert builder.retry_policy(settings) == RetryPolicy(max_attempts=3, backoff_base_s=0.01)
    result = run_to_the_end(processor(settings, client), JobMessage(tenant="acme", source=source))
    assert result.status is Status.ERROR and result.error is not None
    assert (result.error.code, result.attempts) == ("fetch-failed", 3)
    assert proxy.requests("GET") == 3  # = retry.max_attempts over the job's whole life, not 3 x s3.max_attempts
    assert proxy.requests("HEAD") == 3


def test_scan_fetches_keep_boto3_retries(failing: tuple[FailingGets, str]) -> None:
    proxy, source = failing
    settings = WorkerSettings(s3=s3_settings(proxy.url, max_attempts=2))
    fetcher = builder.fetcher(settings, allow_local_files=True, job_retries=False)  # as scan builds it
    with pytest.raises(Exception, match="SlowDown"):
        fetcher.fetch(source)
    assert proxy.requests("GET") == 2  # no job retries a scan: boto3's are the only ones
