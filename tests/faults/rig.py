"""The rig every fault scenario runs on: its own redis-server (AOF on), an HTTP image server, real
worker processes, a producer, and a recorder of results as they appear.

Scenarios differ only in the faults they inject; building the parts here keeps each test about its fault.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as redis_py

from producers.client import Producer
from producers.connections import redis_from_settings
from producers.settings import ProducerSettings, QueueSettings, RedisSettings
from tests.faults.invariants import ResultRecorder, untraced
from tests.support.sentinel import SentinelGroup
from tests.support.servers import HttpServer, RedisServer, Route
from tests.support.workers import WorkerProcess, worker_env

log = logging.getLogger(__name__)

TENANT = "faults"
#: Settings every fault worker shares: small batches, quick retries, a short visibility timeout so a
#: killed worker's jobs come back within seconds (production keeps the 600 s default).
BASE_ENV = {
    "FAKESAKE_BATCH__MAX_SIZE": "8",
    "FAKESAKE_BATCH__MAX_WAIT_MS": "20",
    "FAKESAKE_BATCH__PREPARE_THREADS": "4",
    "FAKESAKE_REDIS__VISIBILITY_TIMEOUT_S": "6",
    "FAKESAKE_RATE_LIMIT__MAX_DEFER_S": "2",  # must stay below the visibility timeout
    "FAKESAKE_LEDGER__GRACE_S": "12",  # above visibility timeout + restore interval: kombu restores first
    "FAKESAKE_LEDGER__SWEEP_INTERVAL_S": "2",
    "FAKESAKE_RETRY__BACKOFF_BASE_S": "0.2",
    "FAKESAKE_RETRY__BACKOFF_MAX_S": "1",
    "FAKESAKE_RETRY__MAX_ATTEMPTS": "8",
    "FAKESAKE_RETRY__MAX_DELIVERIES": "3",
    "FAKESAKE_LOG__LEVEL": "INFO",
}


#: For scenarios that must hold for both ways a worker takes jobs (``batch.intake``): ``@BOTH_INTAKES`` on the test
#: runs it once per intake, with the ``rig`` fixture's workers set to it.
BOTH_INTAKES = pytest.mark.parametrize("rig", ["celery", "bulk"], indirect=True)


@dataclass
class Rig:
    redis: RedisServer
    http: HttpServer
    weights: Path
    images: list[bytes]
    s3_endpoint: str | None = None
    extra_ports: tuple[int, ...] = ()
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    #: With a Sentinel group every process reaches Redis through it (``redis`` is then its first primary).
    sentinel: SentinelGroup | None = None
    #: How the workers take their jobs (``batch.intake``): scenarios that run with both say so in their name.
    intake: str = "celery"
    _client: redis_py.Redis | None = None

    def scenario(self, name: str) -> str:
        """The figures' name of scenario ``name`` under this rig's intake (the Celery intake keeps the plain name)."""
        return name if self.intake == "celery" else f"{name} ({self.intake} intake)"

    def redis_settings(self, **extra: object) -> RedisSettings:
        """How the rig's processes reach Redis: the one server, or the Sentinel group's primary."""
        if self.sentinel is not None:
            return RedisSettings(url=self.sentinel.url, master_name=self.sentinel.master_name, **extra)  # type: ignore[arg-type]
        return RedisSettings(url=self.redis.url, **extra)  # type: ignore[arg-type]

    @property
    def client(self) -> redis_py.Redis:
        """A plain client for inspecting Redis (kombu's lists, the DLQ, counters); follows a failover."""
        if self._client is None:
            self._client = redis_from_settings(self.redis_settings(socket_timeout_s=5))
        return self._client

    def env(self, **extra: str) -> dict[str, str]:
        settings = self.redis_settings()
        if settings.master_name is not None:
            extra = {"FAKESAKE_REDIS__MASTER_NAME": settings.master_name, **extra}
        return worker_env(
            settings.url,
            self.weights,
            s3_endpoint=self.s3_endpoint,
            http_ports=(self.http.port, *self.extra_ports),
            extra={**BASE_ENV, "FAKESAKE_BATCH__INTAKE": self.intake, **extra},
        )

    def start_worker(
        self, name: str, *, concurrency: int = 8, wait: bool = True, env: Mapping[str, str] | None = None
    ) -> WorkerProcess:
        """Start a worker with ``env`` added to the rig's settings; a restart (same name) keeps its settings."""
        old = self.workers.get(name)
        env = old.env if old is not None and env is None else self.env(**(env or {}))
        worker = WorkerProcess(env=env, name=name, concurrency=concurrency)
        if old is not None:
            worker.log_path = old.log_path  # one log per worker name, across restarts
        self.workers[name] = worker
        worker.start(wait_ready_s=120 if wait else 0)
        return worker

    def start_workers(self, names: list[str], **env: str) -> None:
        """Start workers side by side (their model loads overlap), then wait until all are ready."""
        for name in names:
            self.start_worker(name, wait=False, env=env)
        for name in names:
            self.workers[name].wait_ready(120)

    def producer(self, max_depth: int = 100_000) -> Producer:
        settings = ProducerSettings(
            redis=self.redis_settings(socket_timeout_s=2),
            queue=QueueSettings(max_depth=max_depth),
            tenant=TENANT,
        )
        return Producer(settings)

    def http_sources(self, n: int, *, delay_s: float = 0.0, prefix: str = "img") -> list[str]:
        """``n`` distinct URLs (one route each, so hits can be counted per job) over the test images."""
        return [
            self.http.add(
                f"/{prefix}/{i}.jpg",
                Route(body=self.images[i % len(self.images)], content_type="image/jpeg", delay_s=delay_s),
            )
            for i in range(n)
        ]

    def recorder(self, tenant: str = TENANT) -> ResultRecorder:
        settings = self.redis_settings(socket_timeout_s=2)
        return ResultRecorder(settings.url, tenant, connect=lambda: redis_from_settings(settings))

    def diagnose(self, pending: list[str]) -> str:
        """Where the pending jobs are: kombu's lanes, its unacked hash and restore mutex, open deliveries."""
        from producers.contract import ALL_QUEUES, Keys

        c = self.client
        lanes = {q: [m for m in c.lrange(q, 0, -1)] for q in ALL_QUEUES}
        unacked = c.hgetall("unacked")
        lines = [
            f"lanes: { {q: len(v) for q, v in lanes.items()} }, unacked: {len(unacked)}, "
            f"unacked_index: {c.zrange('unacked_index', 0, -1, withscores=True)[:10]}, "
            f"unacked_mutex ttl: {c.ttl('unacked_mutex')}, now: {time.time():.0f}"
        ]
        for job_id in pending[:10]:
            where = [q for q, msgs in lanes.items() if any(job_id.encode() in m for m in msgs)]
            where += [f"unacked[{tag!r}]" for tag, m in unacked.items() if job_id.encode() in m]
            lines.append(
                f"{job_id}: in {where or 'nowhere'}, deliveries={c.get(Keys.deliveries(job_id))!r}, "
                f"attempts={c.get(Keys.attempts(job_id))!r}"
            )
        return "\n".join(lines)

    def settle(self, recorder: ResultRecorder, timeout_s: float, quiet_s: float = 5.0) -> bool:
        """Wait until every tracked job has a result (True), or until the only jobs left have been
        untraced (in no lane, not unacked, never started) for ``quiet_s`` — they will never finish."""
        deadline = time.monotonic() + timeout_s
        nowhere_since: float | None = None
        while time.monotonic() < deadline:
            pending = recorder.pending()
            if not pending:
                return recorder.wait_all(1)
            if len(untraced(self.client, TENANT, pending)) == len(pending):
                nowhere_since = nowhere_since or time.monotonic()
                if time.monotonic() - nowhere_since >= quiet_s:
                    return False
            else:
                nowhere_since = None
            time.sleep(0.5)
        return False

    def log_count(self, needle: str) -> int:
        """How many lines of all worker logs contain ``needle`` (evidence of what the workers saw)."""
        total = 0
        for worker in self.workers.values():
            with contextlib.suppress(OSError):
                total += worker.log_path.read_text(errors="replace").count(needle)
        return total

    def close(self) -> None:
        for worker in self.workers.values():
            worker.terminate(timeout_s=20)
        if self._client is not None:
            self._client.close()
        if os.environ.get("FAKESAKE_KEEP_WORKER_LOGS") is None:
            for worker in self.workers.values():
                with contextlib.suppress(OSError):
                    worker.log_path.unlink()


class Supervisor:
    """Restarts workers that die, as Kubernetes or systemd would. Counts the restarts."""

    def __init__(self, rig: Rig, names: list[str], poll_s: float = 0.2) -> None:
        self.rig = rig
        self.names = names
        self.poll_s = poll_s
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.names:
                worker = self.rig.workers[name]
                if worker.proc is not None and worker.proc.poll() is not None and not self._stop.is_set():
                    self.restarts += 1
                    log.info("supervisor: %s died (%s); restarting", name, worker.proc.returncode)
                    self.rig.start_worker(name, wait=False)
            self._stop.wait(self.poll_s)

    @contextlib.contextmanager
    def running(self) -> Iterator[Supervisor]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)


class Feeder:
    """Submits ``sources`` in chunks over time (a steady producer), tracking each accepted job."""

    def __init__(self, producer: Producer, recorder: ResultRecorder, sources: list[str], chunk: int, every_s: float):
        self.producer = producer
        self.recorder = recorder
        self.sources = sources
        self.chunk = chunk
        self.every_s = every_s
        self.accepted: list[str] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _run(self) -> None:
        try:
            for start in range(0, len(self.sources), self.chunk):
                ids = self.producer.submit_many(self.sources[start : start + self.chunk])
                self.accepted.extend(ids)
                self.recorder.track(ids)
                time.sleep(self.every_s)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float = 120) -> list[str]:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.accepted
