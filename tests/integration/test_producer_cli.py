"""``fakesake submit|result|dlq`` against a real redis-server, moto S3 and a stand-in worker."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import cli
from producers.contract import ErrorInfo, JobMessage
from producers.dlq import DeadLetters
from tests.integration.fake_worker import FakeWorker
from tests.support.servers import S3_ENV, S3Server, free_port


@pytest.fixture(autouse=True)
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKESAKE_REDIS__URL", redis_url)
    monkeypatch.setenv("FAKESAKE_TENANT", "acme")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_submit_wait_prints_one_record_per_input_in_order(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = [
        "https://img.example/a.jpg",
        "ftp://nope/b.jpg",
        "s3://bucket/missing.jpg",
        "s3://bucket/c.jpg?x=1",
    ]
    with FakeWorker(redis_url):
        code, out, _ = run(capsys, "submit", *inputs, "--wait", "--timeout", "20", "--format", "jsonl")
    assert code == 3  # some failed
    records = jsonl(out)
    assert [r["source"] for r in records] == inputs  # exactly as given, in input order
    assert [r["status"] for r in records] == ["ok", "error", "error", "ok"]
    assert records[1]["error"]["code"] == "invalid-source" and records[1]["job_id"] is None
    assert records[2]["error"] == {"code": "not-found", "message": "no such object"}
    ok = records[0]
    assert (ok["score"], ok["label"], ok["band"], ok["model"], ok["attempts"]) == (
        0.9,
        "ai",
        "ai",
        "ffs-mj-5m@1.0",
        1,
    )
    assert set(ok["timings"]) >= {"queued_ms", "fetch_ms", "inference_ms", "total_ms"}

    code, out, _ = run(capsys, "result", ok["job_id"], "--format", "jsonl")
    assert code == 0 and jsonl(out)[0]["job_id"] == ok["job_id"]
    assert run(capsys, "result", records[2]["job_id"])[0] == 3  # an error result
    code, _, err = run(capsys, "result", ok["job_id"], "--tenant", "beta")  # another tenant's job
    assert code == 3 and "no result" in err


def test_submit_without_wait_and_a_manifest_as_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("source,priority,idempotency_key\ns3://b/1.jpg,bulk,k1\ns3://b/2.jpg,,\n", encoding="utf-8")
    code, out, _ = run(capsys, "submit", "https://img.example/x.jpg", "--manifest", str(manifest), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["source"] for r in rows] == ["s3://b/1.jpg", "s3://b/2.jpg", "https://img.example/x.jpg"]
    assert {r["status"] for r in rows} == {"queued"} and all(r["job_id"] for r in rows)
    assert list(rows[0])[:8] == [
        "source",
        "status",
        "score",
        "label",
        "band",
        "model",
        "error.code",
        "error.message",
    ]
    again = run(capsys, "submit", "--manifest", str(manifest), "--format", "csv")[1]
    assert next(csv.DictReader(io.StringIO(again)))["job_id"] == rows[0]["job_id"]  # idempotency key


def test_submit_reports_queue_full_per_job(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKESAKE_QUEUE__MAX_DEPTH", "2")
    code, out, _ = run(capsys, "submit", "s3://b/1.jpg", "s3://b/2.jpg", "s3://b/3.jpg", "--format", "table")
    assert code == 3
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["source", "status"]
    assert [line.split()[1] for line in lines[1:]] == ["queued", "queued", "error"]
    assert "queue-full" in lines[3]


@pytest.mark.parametrize(
    "argv",
    [
        ["submit"],  # nothing to submit
        ["submit", "s3://b/1.jpg", "s3://b/2.jpg", "--idempotency-key", "k"],
        ["submit", "--manifest", "/nonexistent/m.csv"],
        ["dlq", "retry"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *argv)[0] == 2


def test_unreachable_redis_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKESAKE_REDIS__SOCKET_TIMEOUT_S", "0.5")
    code, _, err = run(capsys, "submit", "s3://b/1.jpg", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert code == 2 and "unavailable" in err


def test_submit_s3_prefix(
    s3_srv: S3Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"cli-{uuid.uuid4().hex[:8]}"
    s3 = s3_srv.client()
    s3.create_bucket(Bucket=bucket)
    for key in ("in/a.jpg", "in/b.jpg", "out/c.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    code, out, _ = run(capsys, "submit", f"s3://{bucket}/in/", "--s3-endpoint-url", s3_srv.endpoint_url,
                       "--priority", "bulk")  # fmt: skip
    assert code == 0
    assert [r["source"] for r in jsonl(out)] == [f"s3://{bucket}/in/a.jpg", f"s3://{bucket}/in/b.jpg"]


def test_dlq_list_and_retry(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = redis.Redis.from_url(redis_url)
    dlq = DeadLetters(client)
    jobs = [JobMessage(tenant="acme", source=f"s3://b/{i}.jpg") for i in range(3)]
    for job in jobs:
        dlq.add(job, ErrorInfo(code="poison", message="crashed its worker"), attempts=1, deliveries=3)
    code, out, _ = run(capsys, "dlq", "list", "--format", "jsonl")
    listed = jsonl(out)
    assert code == 0 and [r["job_id"] for r in listed] == [j.job_id for j in jobs]
    assert listed[0]["error"]["code"] == "poison" and listed[0]["deliveries"] == 3

    code, out, _ = run(capsys, "dlq", "retry", jobs[0].job_id, "f" * 32)
    assert code == 3  # one unknown id
    first, unknown = jsonl(out)
    assert first["status"] == "requeued" and first["redriven_to"] != jobs[0].job_id
    assert unknown["error"]["code"] == "not-found"
    code, out, _ = run(capsys, "dlq", "retry", "--all")
    assert code == 0 and [r["job_id"] for r in jsonl(out)] == [j.job_id for j in jobs[1:]]
    assert dlq.count() == 0 and client.llen("fakesake.interactive") == 3
    client.close()
