"""Feedback from a stored result to a manifest and into ``fakesake eval``: a real redis-server, moto's S3 server
with a versioned bucket, the worker's own job processor (real fetcher, real result store), the real CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis

from producers.client import Producer
from producers.contract import JobResult, Label, Status
from producers.errors import ErrorCode, FakesakeError
from producers.feedback import FeedbackStore
from producers.settings import FeedbackSettings, ProducerSettings, RedisSettings
from tests.integration.test_s3_versions import (
    Versioned,
    processor,
    run_to_the_end,
    s3_settings,
    versioned_bucket,
)
from tests.support.scoring_env import quick_scoring_env
from tests.support.servers import S3Server
from worker.service.cli import main
from worker.service.settings import WorkerSettings
from worker.stores.results import RedisResultStore


@pytest.fixture()
def versioned(s3_srv: S3Server) -> Versioned:
    s3 = s3_srv.client()  # type: ignore[no-untyped-call]
    bucket = f"fb-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return versioned_bucket(s3, bucket)


def refused(exc: pytest.ExceptionInfo[FakesakeError]) -> str:
    return exc.value.code.value


def test_feedback_round_trips_from_stored_results_to_a_manifest_and_into_eval(
    s3_srv: S3Server,
    versioned: Versioned,
    redis_url: str,
    client: redis.Redis,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    quick_scoring_env(monkeypatch)
    producer = Producer(ProducerSettings(redis=RedisSettings(url=redis_url), tenant="acme"))
    proc = processor(WorkerSettings(s3=s3_settings(s3_srv.endpoint_url)), client)
    # The old version named in the URI (an S3 URI is stored whole: s3://b/k?versionId=V), and the latest (unnamed)
    old = run_to_the_end(proc, producer.build_job(versioned.uri(versioned.old)))
    new = run_to_the_end(proc, producer.build_job(versioned.uri()))
    assert old.source == versioned.uri(versioned.old) and (old.source_version, new.source_version) == (
        versioned.old,
        versioned.new,
    )
    missing = run_to_the_end(proc, producer.build_job(f"s3://{versioned.bucket}/no/such.png"))
    assert missing.status is Status.ERROR
    presigned = RedisResultStore(client, ttl_s=600, index_max=100).put_final(
        JobResult(job_id="presigned-01", tenant="acme", source="https://cdn.example/a.jpg?<redacted>", status=Status.OK)
    )
    pending = producer.submit(versioned.uri())

    url = ["--redis-url", redis_url, "--tenant", "acme"]
    assert main(["feedback", old.job_id, "--label", "human", "--note", "reviewer: a real passport", *url]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert (stored["label"], stored["score"], stored["model"]) == ("human", old.score, old.model)
    assert producer.feedback(new.job_id, "ai").label is Label.AI
    producer.feedback(presigned.job_id, "ai")

    # Refusals: a clear code (and exit 3 from the CLI) for every job that cannot be labelled
    for job_id, code in [
        (pending, ErrorCode.NOT_FINISHED),
        (missing.job_id, ErrorCode.INVALID_JOB),
        ("0123456789abcdef", ErrorCode.NOT_FOUND),
        ("acme:0123456789", ErrorCode.NOT_FOUND),  # no job can have that id (it would leave the namespace)
    ]:
        with pytest.raises(FakesakeError) as exc:
            producer.feedback(job_id, "ai")
        assert refused(exc) == code.value
        assert main(["feedback", job_id, "--label", "ai", *url]) == 3
        assert code.value in capsys.readouterr().err
    with pytest.raises(FakesakeError) as exc:
        producer.feedback(old.job_id, "ai", tenant="other")  # another tenant's job is not found
    assert refused(exc) == "not-found"
    assert producer.feedback_store.get("other", old.job_id) is None

    manifest = tmp_path / "labels.jsonl"
    assert main(["feedback", "export", "--output", str(manifest), *url]) == 0
    assert "1 rows skipped" in capsys.readouterr().err  # the presigned URL cannot be fetched again
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(r["source"], r["label"], r["dataset"]) for r in rows] == [
        (versioned.uri(versioned.old), "human", "feedback"),
        (versioned.uri(versioned.new), "ai", "feedback"),  # pinned to the version that was scored
    ]
    assert rows[0]["note"] == "reviewer: a real passport" and rows[0]["job_id"] == old.job_id

    for name, value in {"ACCESS_KEY_ID": "testing", "SECRET_ACCESS_KEY": "testing", "REGION": "us-east-1"}.items():
        monkeypatch.setenv(f"FAKESAKE_S3__{name}", value)
    out = tmp_path / "eval"
    argv = ["eval", "--weights", str(checkpoint), "--manifest", str(manifest), "--device", "cpu", "-o", str(out)]
    assert main([*argv, "--s3-endpoint-url", s3_srv.endpoint_url, "--bootstrap", "20", "--no-plots"]) == 0
    scored = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [(r["status"], r["truth"], r["source_version"]) for r in scored] == [
        ("ok", "human", versioned.old),
        ("ok", "ai", versioned.new),
    ]
    report = json.loads((out / "report.json").read_text())
    assert [(d["name"], d["n"]) for d in report["datasets"]] == [("feedback", 2)]


def test_the_store_is_bounded_by_count_and_age_and_the_latest_label_wins(client: redis.Redis) -> None:
    store_ = RedisResultStore(client, ttl_s=600, index_max=100)
    for n in range(5):
        store_.put_final(
            JobResult(job_id=f"bounded-{n:02d}", tenant="t", source=f"s3://b/{n}.png", status=Status.OK, score=0.5)
        )
    now = [1_000_000.0]
    store = FeedbackStore(client, FeedbackSettings(ttl_s=3600, max_per_tenant=3), clock=lambda: now[0])
    for n in range(5):
        now[0] += 1
        store.give("t", f"bounded-{n:02d}", "ai")
    kept = [r.job_id for r in store.all("t")]
    assert kept == ["bounded-02", "bounded-03", "bounded-04"]  # the oldest two went
    now[0] += 1
    store.give("t", "bounded-02", "human", note="relabelled")
    assert [(r.job_id, r.label.value) for r in store.all("t")][-1] == ("bounded-02", "human")
    assert client.hlen("fakesake:feedback:t") == 3
    now[0] += 3600  # bounded-03 and -04 (given at +4 and +5) are now older than the TTL; -02 (+6) is not
    assert [r.job_id for r in store.all("t")] == ["bounded-02"]
    store.give("t", "bounded-00", "human")  # a write drops the aged entries for good
    assert sorted(x.decode() for x in client.hkeys("fakesake:feedback:t")) == ["bounded-00", "bounded-02"]
    assert 0 < client.ttl("fakesake:feedback:index:t") <= 3600
