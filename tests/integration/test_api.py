"""The HTTP API over real HTTP: ``fakesake api`` (uvicorn) processes on free loopback ports, a real Redis, and a
real ``fakesake worker`` for the end-to-end test. Keys are made with the ``fakesake api-keys`` command."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from producers import serving
from producers.client import Producer
from producers.connections import text
from producers.contract import JobResult, Keys, Status, queue_name
from producers.ratelimit import RedisRateLimiter
from producers.settings import ProducerSettings, RedisSettings
from tests.integration.conftest import Stack
from tests.support.apiserver import ApiServer, api_server
from tests.support.images import encode, photo
from tests.support.servers import RedisServer, Route
from tests.support.workers import REPO_ROOT, WorkerProcess
from worker.stores.results import RedisResultStore

URL = "https://images.example.com/a.jpg"


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "worker.service.cli", "api-keys", "--redis-url", redis_url, *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def new_key(redis_url: str, tenant: str) -> str:
    out = cli(redis_url, "create", "--tenant", tenant)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["key"])


@pytest.fixture(scope="module")
def api_db(redis_srv: RedisServer) -> str:
    """A Redis database of its own (no worker consumes it: jobs stay pending), flushed once per module."""
    url = redis_srv.url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def api(api_db: str) -> Iterator[ApiServer]:
    with api_server(api_db, {"FAKESAKE_API__MAX_JOBS_PER_REQUEST": "5", "FAKESAKE_API__MAX_BODY_BYTES": "65536"}) as s:
        yield s


@pytest.fixture(scope="module")
def acme(api_db: str) -> str:
    return new_key(api_db, "acme")


# --- keys ---------------------------------------------------------------------------------------------


def test_keys_are_listed_without_secrets_and_revocation_refuses_the_next_request(api: ApiServer, api_db: str) -> None:
    key = new_key(api_db, "revokers")
    assert api.call("GET", "/v1/detectors", key=key).status == 200
    assert api.call("GET", "/v1/detectors", headers={"X-API-Key": key}).status == 200
    listed = [json.loads(line) for line in cli(api_db, "list", "--tenant", "revokers").stdout.splitlines()]
    assert [k["tenant"] for k in listed] == ["revokers"] and listed[0]["revoked_at"] is None
    assert key not in json.dumps(listed) and key not in str(redis.Redis.from_url(api_db).keys("*"))
    key_id = listed[0]["key_id"]
    assert cli(api_db, "revoke", key_id, "--tenant", "someone-else").returncode == 2  # not theirs
    assert cli(api_db, "revoke", key_id, "--tenant", "revokers").returncode == 0
    answer = api.call("GET", "/v1/detectors", key=key)
    assert (answer.status, answer.code) == (401, "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer fsk_0123456789ab_" + "A" * 43}, {"Authorization": "Basic eDp5"}, {"X-API-Key": "x"}],
    ids=["none", "unknown", "basic", "malformed"],
)
def test_requests_without_a_valid_key_are_401(api: ApiServer, headers: dict[str, str]) -> None:
    for method, path, body in [("GET", "/v1/jobs", None), ("POST", "/v1/jobs", {"source": URL})]:
        answer = api.call(method, path, body, headers=headers)
        assert (answer.status, answer.code) == (401, "unauthorized"), answer.raw


# --- submit and read ----------------------------------------------------------------------------------


def test_submit_one_or_many_with_idempotency_then_pending_and_tenant_isolation(
    api: ApiServer, api_db: str, acme: str
) -> None:
    one = api.call("POST", "/v1/jobs", {"source": URL}, key=acme, headers={"Idempotency-Key": "order-1"})
    assert one.status == 202 and len(one.json["job_ids"]) == 1
    job_id = one.json["job_ids"][0]
    assert one.headers["location"] == f"/v1/jobs/{job_id}"
    again = api.call("POST", "/v1/jobs", {"source": URL}, key=acme, headers={"Idempotency-Key": "order-1"})
    assert again.json["job_ids"] == [job_id]

    sources = [
        URL,
        {"source": "s3://bucket/key.jpg?versionId=v7"},
        {"source": "s3://bucket/b.png", "source_version": "3"},
    ]
    many = api.call(
        "POST", "/v1/jobs", {"sources": sources, "priority": "bulk"}, key=acme, headers={"Idempotency-Key": "b"}
    )
    assert many.status == 202 and len(set(many.json["job_ids"])) == 3
    assert (
        api.call(
            "POST", "/v1/jobs", {"sources": sources, "priority": "bulk"}, key=acme, headers={"Idempotency-Key": "b"}
        ).json
        == many.json
    )
    client = redis.Redis.from_url(api_db)
    assert client.llen("fakesake.bulk") == 3  # the resubmission queued nothing

    pending = api.call("GET", f"/v1/jobs/{job_id}", key=acme)
    assert (pending.status, pending.json, pending.headers["retry-after"]) == (
        202,
        {"job_id": job_id, "status": "pending"},
        "1",
    )
    intruder = new_key(api_db, "intruder")
    for path in (
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{uuid.uuid4().hex}",
        "/v1/jobs/..%2F..%2Fsecret",
        "/v1/jobs/a:b:c:dddd",
    ):
        answer = api.call("GET", path, key=intruder)
        assert (answer.status, answer.code) == (404, "not-found"), path


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"[" * 60_000, 400, "invalid-job"),  # deep JSON: refused, not a RecursionError
        (json.dumps({"source": {"a" * 10: [[[[[]]]]]}}).encode(), 422, "invalid-source"),
        (b"not json", 422, "invalid-job"),
        (json.dumps({"source": 3}).encode(), 422, "invalid-source"),
        (json.dumps({"sources": "s3://b/k"}).encode(), 422, "invalid-source"),
        (json.dumps({"source": URL, "priority": "urgent"}).encode(), 422, "invalid-job"),
        (json.dumps({"source": URL, "unknown": 1}).encode(), 422, "invalid-job"),
        (json.dumps({"source": "file:///etc/passwd"}).encode(), 422, "invalid-source"),
        (json.dumps({"source": "ftp://x/y"}).encode(), 422, "invalid-source"),
        (json.dumps({"source": URL, "callback_url": "gopher://x"}).encode(), 422, "invalid-job"),
        (json.dumps({"source": URL, "model": "nope"}).encode(), 422, "unknown-model"),
        (json.dumps({"sources": [URL] * 6}).encode(), 413, "too-large"),
        (json.dumps({"source": URL + "x" * 70_000}).encode(), 413, "too-large"),
        (json.dumps([URL]).encode(), 422, "invalid-job"),
        (b"\xff\xfe\x00garbage", 422, "invalid-job"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_hostile_bodies_get_4xx_with_a_code(api: ApiServer, acme: str, raw: bytes, status: int, code: str) -> None:
    answer = api.call("POST", "/v1/jobs", raw=raw, key=acme)
    assert (answer.status, answer.code) == (status, code), answer.raw[:300]


def test_detectors_no_live_worker_serves_are_refused_unless_queued_anyway(
    api: ApiServer, api_db: str, acme: str
) -> None:
    client = redis.Redis.from_url(api_db)
    advert = serving.Advert("api-test-worker", frozenset({"ffs-mj-5m", "kyc-ft"}))  # kyc-ft: a configured detector
    serving.advertise(client, advert, forget_s=60)
    try:
        refused = api.call("POST", "/v1/jobs", body={"source": URL, "model": "ffs-sd-5m"}, key=acme)
        assert (refused.status, refused.code) == (409, "unserved-model") and "ffs-sd-5m" in refused.raw.decode()
        anyway = api.call(
            "POST", "/v1/jobs", body={"source": URL, "model": "ffs-sd-5m", "queue_anyway": True}, key=acme
        )
        assert anyway.status == 202 and client.llen(queue_name("interactive", ["ffs-sd-5m"])) == 1
        served = api.call("POST", "/v1/jobs", body={"source": URL, "model": "ffs-mj-5m,kyc-ft"}, key=acme)
        assert served.status == 202 and client.llen(queue_name("interactive", ["ffs-mj-5m", "kyc-ft"])) == 1
    finally:
        serving.withdraw(client, advert)


def test_a_huge_body_is_refused_unread_declared_or_chunked(api: ApiServer, acme: str) -> None:
    declared = api.call("POST", "/v1/jobs", key=acme, raw=b"x", headers={"Content-Length": str(10**9)})
    assert (declared.status, declared.code) == (413, "too-large")
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        chunks = (b"{" + b" " * 16_384 for _ in range(64))  # 1 MiB, no Content-Length
        conn.request("POST", "/v1/jobs", body=chunks, headers={"Authorization": f"Bearer {acme}"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "too-large"
    finally:
        conn.close()
    assert api.call("GET", "/healthz").status == 200


def test_bad_query_parameters_are_4xx(api: ApiServer, acme: str) -> None:
    for query in ("limit=0", "limit=100000", "status=maybe", "since=yesterday", "cursor=%25%25"):
        answer = api.call("GET", f"/v1/jobs?{query}", key=acme)
        assert 400 <= answer.status < 500 and answer.code in ("invalid-job", "invalid-source"), query


# --- listing ------------------------------------------------------------------------------------------


def test_listing_pages_through_the_tenants_results_only(api: ApiServer, api_db: str) -> None:
    key = new_key(api_db, "lister")
    store = RedisResultStore(redis.Redis.from_url(api_db), ttl_s=3600, index_max=1000)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    mine = []
    for n in range(7):
        status = Status.OK if n % 3 else Status.ERROR
        result = JobResult(
            job_id=f"list-job-{n:02d}",
            tenant="lister",
            source=URL,
            status=status,
            finished_at=t0 + timedelta(seconds=n),
        )
        mine.append(store.put_final(result))
    store.put_final(JobResult(job_id="other-job-01", tenant="other", source=URL, status=Status.OK, finished_at=t0))

    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.call("GET", f"/v1/jobs?{query}", key=key).json
        seen += [r["job_id"] for r in page["results"]]
        cursor, pages = page["next_cursor"], pages + 1
        if not page["has_more"]:
            break
    assert seen == [r.job_id for r in mine] and pages == 3
    assert api.call("GET", f"/v1/jobs?cursor={cursor}", key=key).json["results"] == []  # nothing newer yet

    errors_only = api.call("GET", "/v1/jobs?status=error&limit=10", key=key).json["results"]
    assert [r["job_id"] for r in errors_only] == ["list-job-00", "list-job-03", "list-job-06"]
    since = (t0 + timedelta(seconds=5)).isoformat()
    recent = api.call("GET", f"/v1/jobs?since={since.replace('+', '%2B')}", key=key).json["results"]
    assert [JobResult.model_validate(r) for r in recent] == mine[5:]


def test_feedback_is_kept_with_the_score_for_finished_jobs_of_the_tenant_only(api: ApiServer, api_db: str) -> None:
    key, other = new_key(api_db, "reviewer"), new_key(api_db, "bystander")
    store = RedisResultStore(redis.Redis.from_url(api_db), ttl_s=3600, index_max=1000)
    done = store.put_final(JobResult(job_id="fb-job-01", tenant="reviewer", source=URL, status=Status.OK, score=0.75))
    answer = api.call("POST", "/v1/jobs/fb-job-01/feedback", {"label": "human", "note": "passport scan"}, key=key)
    assert answer.status == 200 and (answer.json["label"], answer.json["score"]) == ("human", done.score)
    assert api.call("GET", "/v1/jobs/fb-job-01/feedback", key=key).json["note"] == "passport scan"
    assert api.call("POST", "/v1/jobs/fb-job-01/feedback", {"label": "ai"}, key=other).code == "not-found"
    assert api.call("GET", "/v1/jobs/fb-job-01/feedback", key=other).code == "not-found"
    assert api.call("POST", "/v1/jobs/fb-job-01/feedback", {"label": "cat"}, key=key).status == 422
    pending = api.call("POST", "/v1/jobs", {"source": URL}, key=key).json["job_ids"][0]
    too_early = api.call("POST", f"/v1/jobs/{pending}/feedback", {"label": "ai"}, key=key)
    assert (too_early.status, too_early.code) == (409, "not-finished") and int(too_early.headers["retry-after"]) >= 1
    failed = store.put_final(JobResult(job_id="fb-job-02", tenant="reviewer", source=URL, status=Status.ERROR))
    assert api.call("POST", f"/v1/jobs/{failed.job_id}/feedback", {"label": "ai"}, key=key).code == "invalid-job"
    for n in range(3, 6):
        store.put_final(JobResult(job_id=f"fb-job-{n:02d}", tenant="reviewer", source=URL, status=Status.OK, score=0.5))
        assert api.call("POST", f"/v1/jobs/fb-job-{n:02d}/feedback", {"label": "ai"}, key=key).status == 200
    relabel = api.call("POST", "/v1/jobs/fb-job-01/feedback", {"label": "ai"}, key=key)  # moves to the end

    seen, cursor = [], None
    while True:
        page = api.call("GET", "/v1/feedback?limit=2" + (f"&cursor={cursor}" if cursor else ""), key=key).json
        seen += [(r["job_id"], r["label"]) for r in page["feedback"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == [("fb-job-03", "ai"), ("fb-job-04", "ai"), ("fb-job-05", "ai"), ("fb-job-01", "ai")]
    since = relabel.json["received_at"].replace("+", "%2B")
    assert [r["job_id"] for r in api.call("GET", f"/v1/feedback?since={since}", key=key).json["feedback"]] == [
        "fb-job-01"
    ]
    assert api.call("GET", "/v1/feedback", key=other).json["feedback"] == []


# --- limits -------------------------------------------------------------------------------------------


def test_backpressure_and_tenant_rate_limit_answer_with_retry_after(redis_srv: RedisServer) -> None:
    url = redis_srv.url.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(url).flushdb()
    settings = {
        "FAKESAKE_QUEUE__MAX_DEPTH": "4",
        "FAKESAKE_API__TENANT_RATE_PER_S": "0.01",
        "FAKESAKE_API__TENANT_BURST": "2",
    }
    with api_server(url, settings) as limited:
        a, b = new_key(url, "tenant-a"), new_key(url, "tenant-b")
        assert [limited.call("POST", "/v1/jobs", {"source": URL}, key=a).status for _ in range(2)] == [202, 202]
        over = limited.call("POST", "/v1/jobs", {"source": URL}, key=a)
        assert (over.status, over.code) == (429, "rate-limited") and int(over.headers["retry-after"]) >= 1
        two = limited.call("POST", "/v1/jobs", {"sources": [URL, URL]}, key=b)  # b has its own bucket
        assert two.status == 202
        many = limited.call("POST", "/v1/jobs", {"sources": [URL, URL, URL]}, key=b)
        assert (many.status, many.code) == (413, "too-large")  # more than the burst can ever take at once
        c = new_key(url, "tenant-c")
        full = limited.call("POST", "/v1/jobs", {"source": URL}, key=c)
        assert (full.status, full.code) == (503, "queue-full") and int(full.headers["retry-after"]) >= 1
        metrics = limited.call("GET", "/metrics").raw.decode()
        assert 'route="/v1/jobs",status="429"' in metrics and "fakesake_api_jobs_accepted_total 4.0" in metrics


def test_a_multi_source_request_takes_its_tokens_all_or_nothing(api_db: str) -> None:
    limiter = RedisRateLimiter(redis.Redis.from_url(api_db))
    name = uuid.uuid4().hex  # one interval is 100 s: nothing refills during the test
    assert limiter.reserve("ingress", name, 0.01, 3, 0.0, cost=2) == (0.0, True)
    wait, taken = limiter.reserve("ingress", name, 0.01, 3, 0.0, cost=2)
    assert not taken and wait > 0  # one token left, two asked: none taken
    assert limiter.reserve("ingress", name, 0.01, 3, 0.0, cost=1) == (0.0, True)
    assert limiter.reserve("ingress", name, 0.01, 3, 0.0, cost=1)[1] is False


def test_health_and_detectors(api: ApiServer, acme: str) -> None:
    assert api.call("GET", "/healthz").json == {"status": "ok"}
    detectors = api.call("GET", "/v1/detectors", key=acme).json["detectors"]
    assert "ffs-mj-5m@1.0" in [d["ref"] for d in detectors]
    assert [d["name"] for d in detectors if d["default"]] == ["ffs-mj-5m"]
    assert {d["source"] for d in detectors} == {"built-in"}  # no detectors file given to this server
    assert api.call("GET", "/openapi.json").json["info"]["title"] == "fakesake"


_DETECTORS_FILE = """
[[detectors]]
name = "kyc-ft"
base = "ffs-mj-5m"
weights = "kyc/model.pt"
version = "2024-06"
description = "fine-tuned on KYC selfies"

[[detectors]]
name = "tiny"
arch = "resnet18"
num_features = 512
weights = "tiny/model.pt"
preprocessing = { size_px = 160 }
"""


def test_detectors_lists_the_detectors_file_and_what_live_workers_serve(api_db: str, acme: str, tmp_path: Path) -> None:
    path = tmp_path / "detectors.toml"
    path.write_text(_DETECTORS_FILE)
    client = redis.Redis.from_url(api_db)
    adverts = [
        serving.Advert("w1", frozenset({"ffs-mj-5m", "kyc-ft"})),
        serving.Advert("w2", frozenset({"ffs-mj-5m", "kyc-ft"})),
        serving.Advert("w3", frozenset({"ffs-mj-5m"})),
        serving.Advert("w4", frozenset({"from-a-package"})),  # an entry-point detector the API cannot know
    ]
    with api_server(api_db, {"FAKESAKE_MODEL__DETECTORS_FILE": str(path)}) as server:
        idle = server.call("GET", "/v1/detectors", key=acme).json
        assert idle["served"] == [] and not any(d["served"] or d["workers"] for d in idle["detectors"])
        for advert in adverts:
            serving.advertise(client, advert, forget_s=60)
        try:
            body = server.call("GET", "/v1/detectors", key=acme).json
            refused = server.call("POST", "/v1/jobs", body={"source": URL, "model": "tiny"}, key=acme)
            accepted = server.call("POST", "/v1/jobs", body={"source": URL, "model": "kyc-ft"}, key=acme)
        finally:
            for advert in adverts:
                serving.withdraw(client, advert)
            client.delete(queue_name("interactive", ["kyc-ft"]))
    listed = {d["name"]: d for d in body["detectors"]}
    assert listed["kyc-ft"] == {
        "name": "kyc-ft",
        "version": "2024-06",
        "ref": "kyc-ft@2024-06",
        "description": "fine-tuned on KYC selfies",
        "input_size_px": listed["ffs-mj-5m"]["input_size_px"],  # its base's preprocessing
        "default": False,
        "source": "configured",
        "served": True,
        "workers": 2,
    }
    tiny, builtin = listed["tiny"], listed["ffs-mj-5m"]
    assert (tiny["source"], tiny["served"], tiny["input_size_px"]) == ("configured", False, 160)
    assert (builtin["source"], builtin["workers"], builtin["default"]) == ("built-in", 3, True)
    assert "from-a-package" not in listed
    assert body["served"] == [
        {"detectors": ["ffs-mj-5m", "kyc-ft"], "workers": 2},
        {"detectors": ["ffs-mj-5m"], "workers": 1},
        {"detectors": ["from-a-package"], "workers": 1},
    ]
    # Configured but served by nobody: known (409 unserved-model, not 422 unknown-model); served: accepted.
    assert (refused.status, refused.code) == (409, "unserved-model")
    assert accepted.status == 202


def test_a_bad_detectors_file_stops_the_api_at_start(api_db: str, tmp_path: Path) -> None:
    path = tmp_path / "detectors.toml"
    path.write_text('[[detectors]]\nname = "x"\n')  # neither base nor arch
    with (
        pytest.raises(RuntimeError, match="give exactly one of base"),
        api_server(api_db, {"FAKESAKE_MODEL__DETECTORS_FILE": str(path)}),
    ):
        pass


# --- end to end ---------------------------------------------------------------------------------------


def test_submitted_over_http_scored_by_a_worker_read_over_http(stack: Stack, queue_worker: WorkerProcess) -> None:
    data = encode(photo(96, 80, seed=11), "JPEG", quality=90)
    http_url = stack.http.add("/api-e2e/a.jpg", Route(body=data, content_type="image/jpeg"))
    put = stack.s3.client().put_object(Bucket=stack.bucket, Key="api/b.jpg", Body=data)  # type: ignore[no-untyped-call]
    s3_url = f"s3://{stack.bucket}/api/b.jpg"
    with api_server(stack.redis_url) as server:
        key = new_key(stack.redis_url, "e2e")
        accepted = server.call("POST", "/v1/jobs", {"sources": [http_url, s3_url]}, key=key)
        assert accepted.status == 202, accepted.raw
        ids = accepted.json["job_ids"]
        producer = Producer(ProducerSettings(redis=RedisSettings(url=stack.redis_url)))
        stored = producer.wait(ids, tenant="e2e", timeout_s=60)
        assert set(stored) == set(ids)
        for job_id in ids:
            answer = server.call("GET", f"/v1/jobs/{job_id}", key=key)
            assert answer.status == 200
            over_http = JobResult.model_validate(answer.json)
            assert over_http == stored[job_id] and over_http.status is Status.OK
            assert over_http.score is not None and over_http.model.startswith("ffs-mj-5m@1.0+")
        assert stored[ids[0]].score == stored[ids[1]].score  # the same bytes over HTTP and S3
        assert stored[ids[1]].etag == put["ETag"].strip('"')
        listed = server.call("GET", "/v1/jobs", key=key).json["results"]
        assert sorted(r["job_id"] for r in listed) == sorted(ids)
        assert Keys.result("e2e", ids[0]) in {text(k) for k in stack.client().keys("fakesake:result:e2e:*")}


# --- direct upload ------------------------------------------------------------------------------------


def multipart(data: bytes, field: str = "file") -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_uploads_are_off_unless_configured(api: ApiServer, acme: str) -> None:
    data = encode(photo(32, 32, seed=3), "PNG")
    off = api.call("POST", "/v1/uploads", raw=data, key=acme, headers={"Content-Type": "image/png"})
    assert (off.status, off.code) == (404, "not-found") and "UPLOAD_BUCKET" in off.json["error"]["message"]


def test_uploaded_images_are_stored_per_tenant_and_scored_by_a_worker(
    stack: Stack, queue_worker: WorkerProcess
) -> None:
    png = encode(photo(96, 80, seed=11), "PNG")
    settings = {
        "FAKESAKE_API__UPLOAD_BUCKET": stack.bucket,
        "FAKESAKE_API__UPLOAD_PREFIX": "up",
        "FAKESAKE_API__UPLOAD_MAX_BYTES": str(len(png) + 100),
        "FAKESAKE_S3__ENDPOINT_URL": stack.s3.endpoint_url,
        "FAKESAKE_S3__ACCESS_KEY_ID": "testing",
        "FAKESAKE_S3__SECRET_ACCESS_KEY": "testing",
        "FAKESAKE_S3__REGION": "us-east-1",
    }
    s3 = stack.s3.client()  # type: ignore[no-untyped-call]
    with api_server(stack.redis_url, settings) as server:
        key = new_key(stack.redis_url, "uploader")
        raw = server.call("POST", "/v1/uploads?priority=bulk", raw=png, key=key, headers={"Content-Type": "image/png"})
        assert raw.status == 202, raw.raw
        body, headers = multipart(png)
        form = server.call("POST", "/v1/uploads", raw=body, key=key, headers=headers)
        assert form.status == 202, form.raw
        today = datetime.now(UTC).strftime("%Y/%m/%d")
        for answer in (raw, form):
            source = answer.json["source"]
            assert re.fullmatch(rf"s3://{stack.bucket}/up/uploader/{today}/[0-9a-f]{{32}}\.png", source), source
            stored = s3.get_object(Bucket=stack.bucket, Key=source.split("/", 3)[3])
            assert stored["Body"].read() == png and stored["ContentType"] == "image/png"
        ids = [raw.json["job_id"], form.json["job_id"]]

        # idempotency as for POST /v1/jobs: the same key returns the same job and stores nothing more
        again = [
            server.call("POST", "/v1/uploads", raw=png, key=key, headers={"Idempotency-Key": "up-1"}) for _ in range(2)
        ]
        assert [a.status for a in again] == [202, 202] and again[0].json["job_id"] == again[1].json["job_id"]
        assert again[1].json["source"] is None
        listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix="up/uploader/")["KeyCount"]
        assert listed == 3

        # refusals: not an image whatever the header says, too large (declared or chunked), no file part
        text_body = server.call("POST", "/v1/uploads", raw=b"GIF89? no", key=key, headers={"Content-Type": "image/gif"})
        assert (text_body.status, text_body.code) == (415, "not-an-image")
        big = png + b"\0" * 200
        assert server.call("POST", "/v1/uploads", raw=big, key=key).code == "too-large"
        assert chunked_upload(server, key, big) == "413 too-large"
        body, headers = multipart(png, field="image")
        assert server.call("POST", "/v1/uploads", raw=body, key=key, headers=headers).code == "invalid-job"
        assert server.call("POST", "/v1/uploads", raw=png).status == 401
        assert s3.list_objects_v2(Bucket=stack.bucket, Prefix="up/")["KeyCount"] == 3

        producer = Producer(ProducerSettings(redis=RedisSettings(url=stack.redis_url)))
        results = producer.wait(ids, tenant="uploader", timeout_s=60)
        assert set(results) == set(ids)
        # ffs-mj-5m@1.0 with the digest of the test's own (seeded) weights
        assert all(r.status is Status.OK and (r.model or "").startswith("ffs-mj-5m@1.0+") for r in results.values())
        assert results[ids[0]].score == results[ids[1]].score  # the same bytes, raw and multipart
        assert server.call("GET", f"/v1/jobs/{ids[0]}", key=key).json["score"] == results[ids[0]].score


def chunked_upload(server: ApiServer, key: str, data: bytes) -> str | None:
    """POST ``data`` with chunked transfer encoding (no Content-Length); the answer's status and code."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))
        auth = {"Authorization": f"Bearer {key}"}
        conn.request("POST", "/v1/uploads", body=chunks, headers=auth, encode_chunked=True)
        resp = conn.getresponse()
        return f"{resp.status} {json.loads(resp.read())['error']['code']}"
    finally:
        conn.close()
