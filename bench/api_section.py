"""Section: the HTTP API's ingress. Jobs/s accepted by ``POST /v1/jobs`` with lists of 100 sources, next to
``Producer.submit_many`` with calls of 100 (the same work without HTTP), and the p50/p99 latency of a single
submit. A real ``fakesake api`` (uvicorn, one process) and a real redis-server with no consumer; one client
thread on a keep-alive connection; API and producer passes interleaved so load drift hits both alike."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import redis

from api.keystore import KeyStore
from bench.common import Context, Row, interleaved, median, percentile, ratio_of
from bench.queue_section import producer
from producers import wire
from producers.contract import Keys, Priority
from tests.support.apiserver import api_server
from tests.support.servers import redis_server

LIST = 100
SOURCE = "s3://bench-bucket/images/2024/01/photo-{:06d}.jpg"
TENANT = "bench-api"


class Client:
    """One keep-alive connection to the API."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(self, body: dict[str, Any]) -> None:
        self.conn.request("POST", "/v1/jobs", body=json.dumps(body).encode(), headers=self.headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status != 202:
            raise RuntimeError(f"POST /v1/jobs answered {resp.status}: {payload[:300]!r}")

    def close(self) -> None:
        """Also between passes: uvicorn drops a connection idle for 5 s, and http.client would write into it."""
        self.conn.close()


def run(ctx: Context) -> list[Row]:
    requests, singles = ctx.n(100, 30), ctx.n(500, 200)
    lists = [[SOURCE.format(r * LIST + i) for i in range(LIST)] for r in range(requests)]
    env = {"FAKESAKE_QUEUE__MAX_DEPTH": "10000000", "FAKESAKE_API__MAX_JOBS_PER_REQUEST": str(LIST)}
    with redis_server() as server, api_server(server.url, env) as api:
        admin = redis.Redis.from_url(server.url)
        key, _ = KeyStore(admin).create(TENANT)
        client, prod = Client(api.port, key), producer(server.url)
        try:
            client.post({"sources": lists[0]})  # warm-up: connection, scripts, first-request imports
            prod.submit_many(lists[0], tenant=TENANT)

            def over_http() -> float:
                _drain(admin)
                client.close()  # the next request opens a fresh connection (its setup is timed, once per pass)
                return _timed(lambda: [client.post({"sources": s}) for s in lists], requests * LIST)

            def in_process() -> float:
                _drain(admin)
                return _timed(lambda: [prod.submit_many(s, tenant=TENANT) for s in lists], requests * LIST)

            rates = interleaved({"api": over_http, "producer": in_process}, ctx.passes)
            _drain(admin)
            client.close()
            latencies = []
            for n in range(singles):
                start = time.perf_counter()
                client.post({"source": SOURCE.format(n)})
                latencies.append((time.perf_counter() - start) * 1000)
        finally:
            client.close()
            prod.close()
            admin.close()
    api_rate, producer_rate = median(rates["api"]), median(rates["producer"])
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return [
        Row(
            "api",
            f"POST /v1/jobs jobs/s, lists of {LIST} ({requests} requests, 1 keep-alive client)",
            api_rate,
            "jobs/s",
            baseline=producer_rate,
            baseline_name=f"Producer.submit_many, calls of {LIST}",
            ratio=ratio_of(rates, "api", "producer"),
            note="same Redis, same Lua enqueue; the difference is HTTP, auth and JSON",
        ),
        Row("api", f"single-source POST /v1/jobs latency p50 ({singles} requests)", p50, "ms"),
        Row("api", f"single-source POST /v1/jobs latency p99 ({singles} requests)", p99, "ms"),
    ]


def _drain(client: redis.Redis) -> None:
    """Empty the lanes and the ledger (the API keys stay): every pass starts from the same Redis state."""
    client.delete(*(wire.queue_key(lane) for lane in Priority), Keys.LEDGER, Keys.LEDGER_SEEN)


def _timed(run: Any, count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)
