"""Shared fixtures of the queue end-to-end tests: a worker-facing HTTP server, S3 bucket, worker.

A real worker costs ~8 s to start, so one module-scoped worker serves every test of a module that can share
it; tests that need other worker settings start their own with :func:`start_workers`. Each worker stack gets
its own Redis database on the session's redis-server, so workers of different tests never take each
other's jobs (the function-scoped ``redis_url`` fixture flushes the whole server and must not be mixed in).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from producers.client import Producer
from producers.settings import ProducerSettings, QueueSettings, RedisSettings
from tests.support.servers import HttpServer, RedisServer, S3Server, http_server
from tests.support.workers import WorkerProcess, worker_env

WEBHOOK_SECRET = "e2e-webhook-secret"
_db_numbers = iter(range(1, 16))  # database 0 belongs to the function-scoped ``redis_url`` fixture


@dataclass
class Stack:
    """What a worker talks to: a Redis database, the S3 server with a bucket, the local HTTP server."""

    redis_url: str
    s3: S3Server
    bucket: str
    http: HttpServer
    weights: Path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Worker environment for this stack (loopback allowed, webhooks signed, fast retries)."""
        return worker_env(
            self.redis_url,
            self.weights,
            s3_endpoint=self.s3.endpoint_url,
            http_ports=(self.http.port,),
            extra={"FAKESAKE_RESULTS__WEBHOOK_SECRET": WEBHOOK_SECRET, **(extra or {})},
        )

    def producer(self, tenant: str = "acme", max_depth: int = 100_000) -> Producer:
        settings = ProducerSettings(
            redis=RedisSettings(url=self.redis_url), queue=QueueSettings(max_depth=max_depth), tenant=tenant
        )
        return Producer(settings)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


@contextmanager
def start_workers(
    envs: list[dict[str, str]], names: list[str] | None = None, *, ready_s: float = 120, **worker: Any
) -> Iterator[list[WorkerProcess]]:
    """Start several workers at once (their model loads overlap) and stop each one on exit; ``worker``: more
    :class:`WorkerProcess` fields for each (``health_port=None`` lets the worker's own settings choose)."""
    workers = [
        WorkerProcess(env=e, name=n, **worker)
        for e, n in zip(envs, names or [f"w{i}" for i in range(len(envs))], strict=True)
    ]
    with ExitStack() as stack:
        for w in workers:
            w.start(wait_ready_s=0)
            stack.callback(w.terminate)
        for w in workers:
            w.wait_ready(ready_s)
        yield workers


@pytest.fixture(scope="module")
def queue_http() -> Iterator[HttpServer]:
    """A local HTTP server that lives as long as the module's worker (whose settings name its port)."""
    with http_server() as server:
        yield server


def new_stack(redis_srv: RedisServer, s3: S3Server, http: HttpServer, weights: Path) -> Stack:
    """A fresh Redis database and S3 bucket for one worker stack."""
    url = redis_srv.url.rsplit("/", 1)[0] + f"/{next(_db_numbers)}"
    redis.Redis.from_url(url).flushdb()
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)  # type: ignore[no-untyped-call]
    return Stack(url, s3, bucket, http, weights)


@pytest.fixture(scope="module")
def stack(redis_srv: RedisServer, s3_srv: S3Server, queue_http: HttpServer, checkpoint: Path) -> Stack:
    return new_stack(redis_srv, s3_srv, queue_http, checkpoint)


@pytest.fixture(scope="module")
def queue_worker(stack: Stack) -> Iterator[WorkerProcess]:
    """One real ``fakesake worker`` for the module, on the module's stack."""
    with start_workers([stack.env()], ["shared"]) as (worker,):
        yield worker
