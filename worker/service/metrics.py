"""Prometheus metrics of a worker process.

Every metric lives in a :class:`Metrics` object that owns its own ``CollectorRegistry`` rather than in
prometheus-client's global default registry. Why: tests (and a process that builds two apps) can create as
many ``Metrics`` as they like without "Duplicated timeseries" errors, and the exposition contains only our
metrics, not whatever another library registered globally. The worker builds one with :func:`default` and
serves it with :func:`start_metrics_server`.

Metrics are per process (``--pool threads``); several workers started by hand on one host serve on their
slots' ports (:mod:`worker.service.slots`). Under ``fakesake worker --processes N`` the children run
prometheus-client's multiprocess mode and their supervisor serves one merged scrape
(:mod:`worker.service.supervisor`); the gauges here say how to merge them (``multiprocess_mode``).

Queue depth (lanes and their side lanes) and DLQ size are read from Redis at scrape time by
:class:`RedisDepthCollector` (two pipelined round trips), so every worker reports the same, current figures:
aggregate them with ``max``, not ``sum``.
No torch here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from producers import serving
from producers.connections import text
from producers.contract import ALL_QUEUES, DEFAULT_MODEL, KEY_PREFIX, Keys, lane_priority, side_lane

log = logging.getLogger(__name__)

NAMESPACE = KEY_PREFIX  # every metric is called fakesake_*

# Buckets: latency from 1 ms to 2 min; queue wait up to an hour (bulk lanes back up for a long time).
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: ``code`` label value of a successful job (Prometheus labels cannot be absent).
NO_ERROR = "none"
#: Adverts refreshed within this many seconds name the lanes the depth collector reads (producers' default
#: ``queue.served_max_age_s``; workers refresh theirs every ``metrics.heartbeat_interval_s``, 5 s by default).
SERVED_MAX_AGE_S = 30.0


class DepthClient(Protocol):
    """The part of a redis-py client :class:`RedisDepthCollector` needs."""

    def pipeline(self, transaction: bool = ...) -> Any: ...


def lane_of(queue: str) -> str:
    """``fakesake.interactive`` (or a detector set's ``fakesake.interactive.<hash>``) -> ``interactive`` (the
    ``lane`` label: one per priority, whatever the detectors)."""
    return lane_priority(queue)


class RedisDepthCollector(Collector):
    """Reads every lane's length, its side lane's and the DLQ size from Redis when Prometheus scrapes.

    The lanes: ``queues`` (the default detector's, ``ALL_QUEUES``), every lane of a detector set live workers
    advertise (``Keys.SERVING``, :func:`producers.serving.served_lanes`), and the lanes this collector saw
    advertised before that still hold jobs or follow-ups (a backlog stays visible after the workers serving it went
    away; a lane is forgotten once it and its side lane are empty and it is unadvertised). Not a ``SCAN`` for
    ``fakesake.*`` lists: it walks the whole keyspace (results, ledger and idempotency keys: millions) in many
    round trips per scrape, while the adverts are one small sorted set. A lane nobody ever advertised (a
    ``queue_anyway`` job for a set no worker serves) is not seen here; KEDA's list triggers name lanes themselves
    (deploy/README.md).

    Cheap and bounded: two pipelined round trips per scrape, (live adverts, ``TYPE`` of the DLQ key) then
    (``LLEN`` per lane and per side lane, the DLQ's size command for the data type the DLQ module chose); at most
    2 * (2**6 - 1) lanes per advertised set, so 4 * (2**6 - 1) ``LLEN``. A Redis error never fails the scrape: it
    reports ``fakesake_redis_up 0`` and omits the samples of both depth families.

    Labels of ``fakesake_queue_depth``: ``lane`` (the priority, as before: ``sum by (lane)`` adds the detector
    sets' lanes up), ``queue`` (the Redis list, what a KEDA trigger's ``listName`` names) and ``detectors`` (the
    lane's detector set, sorted and comma-separated). ``fakesake_side_lane_depth`` has the same labels, ``queue``
    being the side lane (:func:`producers.contract.side_lane`): a job's follow-ups (retries waiting out a rate
    limit, webhook deliveries and re-sends), kept out of ``fakesake_queue_depth`` so that it still counts new work
    only.
    """

    _SIZE_COMMAND = {"list": "llen", "zset": "zcard", "hash": "hlen", "set": "scard", "stream": "xlen"}

    def __init__(
        self,
        client: DepthClient,
        queues: Sequence[str] = ALL_QUEUES,
        dlq_key: str = Keys.DLQ,
        served_max_age_s: float = SERVED_MAX_AGE_S,
    ) -> None:
        self._client = client
        self._queues = {q: DEFAULT_MODEL if q in ALL_QUEUES else "" for q in queues}
        self._dlq_key = dlq_key
        self._served_max_age_s = served_max_age_s
        self._remembered: dict[str, str] = {}  # lanes once advertised that may still hold jobs -> detectors
        self._lock = threading.Lock()  # scrapes may run concurrently (one thread per request)

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                f"{NAMESPACE}_queue_depth",
                "Jobs waiting in a lane's Redis list, by priority (lane), list name (queue) and detector set",
                labels=["lane", "queue", "detectors"],
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_side_lane_depth",
                "Follow-ups (retries, webhook deliveries) waiting in a lane's side lane, by priority (lane), "
                "side lane list name (queue) and detector set",
                labels=["lane", "queue", "detectors"],
            ),
            GaugeMetricFamily(f"{NAMESPACE}_dlq_size", "Dead-letter records waiting to be inspected or re-driven"),
            GaugeMetricFamily(f"{NAMESPACE}_redis_up", "1 if Redis answered the last scrape's depth query"),
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Defining describe() keeps registration from calling collect(), i.e. from touching Redis.
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth, side, dlq, up = self._families()
        try:
            pipe = self._client.pipeline(transaction=False)
            serving.request_live(pipe, self._served_max_age_s)
            pipe.type(self._dlq_key)
            members, dlq_type = pipe.execute()
            served = serving.served_lanes(serving.Advert.parse(m) for m in members)
            with self._lock:
                lanes = {**self._remembered, **served, **self._queues}
            command = self._SIZE_COMMAND.get(text(dlq_type))
            pipe = self._client.pipeline(transaction=False)
            for queue in lanes:
                pipe.llen(queue)
            for queue in lanes:
                pipe.llen(side_lane(queue))
            if command:
                getattr(pipe, command)(self._dlq_key)
            replies = pipe.execute()
        except Exception as exc:  # any client error: report it as a gauge, never break /metrics
            log.warning("queue depth scrape failed: %s", exc)
            up.add_metric([], 0)
            return [depth, side, dlq, up]
        n = len(lanes)
        lengths = dict(zip(lanes, (int(x) for x in replies[:n]), strict=True))
        side_lengths = dict(zip(lanes, (int(x) for x in replies[n : 2 * n]), strict=True))
        with self._lock:
            # A lane with follow-ups left in its side lane stays too: they are that lane's jobs, unfinished.
            self._remembered = {
                q: d
                for q, d in lanes.items()
                if q in served or ((lengths[q] or side_lengths[q]) and q not in self._queues)
            }
        for queue, detectors in lanes.items():
            depth.add_metric([lane_of(queue), queue, detectors], lengths[queue])
            side.add_metric([lane_of(queue), side_lane(queue), detectors], side_lengths[queue])
        dlq.add_metric([], int(replies[-1]) if command else 0)
        up.add_metric([], 1)
        return [depth, side, dlq, up]


class Metrics:
    """All worker metrics, registered in ``self.registry`` (a private registry, see the module doc)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_total = Counter(
            "jobs",
            "Final job outcomes by status (ok|error), error code (none if ok) and lane",
            ["status", "code", "lane"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Images per inference batch",
            namespace=NAMESPACE,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "queue_wait_seconds",
            "Time from submission to a worker starting the job, by lane",
            ["lane"],
            namespace=NAMESPACE,
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "fetch_seconds",
            "Time to fetch one image's bytes (S3, HTTP, file)",
            namespace=NAMESPACE,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "decode_seconds",
            "Time to decode and preprocess one image",
            namespace=NAMESPACE,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "inference_seconds",
            "Time of one batched forward pass",
            namespace=NAMESPACE,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_queue_delay_seconds = Histogram(
            "batch_queue_delay_seconds",
            "How long the oldest input of a batch waited for its batch to start (batch.max_wait_ms at work)",
            namespace=NAMESPACE,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight_jobs = Gauge(
            "inflight_jobs",
            "Jobs this process has started and not yet finished",
            namespace=NAMESPACE,
            registry=r,
            multiprocess_mode="livesum",  # under `--processes N`: the live children's sum
        )
        self.model_load_seconds = Gauge(
            "model_load_seconds",
            "Seconds the last model load took, by model name@version",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rate_limit_deferrals_total = Counter(
            "rate_limit_deferrals",
            "Jobs deferred by a global rate limit, by scope (tenant|host)",
            ["scope"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.webhook_deliveries_total = Counter(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome (ok|retry|failed)",
            ["outcome"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.jobs_requeued_by_ledger_total = Counter(
            "jobs_requeued_by_ledger",
            "Jobs the ledger sweeper pushed again: in no lane, no delivery for a grace, no result",
            namespace=NAMESPACE,
            registry=r,
        )
        self._depth: RedisDepthCollector | None = None
        self._lock = threading.Lock()

    def job_finished(self, status: str, code: str | None, lane: str) -> None:
        """Count one final outcome; ``code`` None (success) is recorded as ``none``."""
        self.jobs_total.labels(status=status, code=code or NO_ERROR, lane=lane).inc()

    def watch_redis(
        self, client: DepthClient, queues: Sequence[str] = ALL_QUEUES, dlq_key: str = Keys.DLQ
    ) -> RedisDepthCollector:
        """Export queue depth per lane (``queues`` and every served detector set's), its side lane's depth and DLQ
        size read from ``client`` at scrape time (once per Metrics)."""
        with self._lock:
            if self._depth is None:
                self._depth = RedisDepthCollector(client, queues, dlq_key)
                self.registry.register(self._depth)
            return self._depth


_default: Metrics | None = None
_default_lock = threading.Lock()


def default() -> Metrics:
    """The process's Metrics, created on first use (adapters such as the Celery tasks share it)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


def start_metrics_server(port: int, metrics: Metrics | None = None, host: str = "0.0.0.0") -> WSGIServer | None:
    """Serve ``metrics`` (default: :func:`default`) on ``http://host:port/metrics`` in a daemon thread.

    ``port`` 0 disables the endpoint and returns None. Returns the server; ``shutdown()`` stops it.
    """
    if port == 0:
        log.info("metrics endpoint disabled (metrics.port = 0)")
        return None
    registry = (metrics or default()).registry
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%s/metrics", host, port)
    return server
