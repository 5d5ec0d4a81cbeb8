"""Telemetry of a worker process: Prometheus metrics and health state, behind one small object.

The runtime and the Celery adapter report events here (job started/finished, batch run, model loaded);
this module turns them into metric updates and readiness. Nothing else in the worker touches
prometheus-client or the health server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from producers.contract import JobResult
from worker.core.processing import Decision, Finished, RetryLater
from worker.service import health, metrics
from worker.service.settings import MetricsSettings
from worker.stores.ledger import SweepReport

log = logging.getLogger(__name__)


def lane_label(routing_key: str | None) -> str:
    return metrics.lane_of(routing_key) if routing_key else "unknown"


@dataclass
class Telemetry:
    metrics: metrics.Metrics
    health: health.HealthService | None
    metrics_server: Any = None

    @classmethod
    def start(cls, settings: MetricsSettings, redis_client: Any = None) -> Telemetry:
        m = metrics.default()
        server = metrics.start_metrics_server(settings.port, m, settings.bind_host)
        svc = health.start_health(
            settings, ping=redis_client.ping if redis_client else None, on_stall=health.exit_process
        )
        if redis_client is not None:
            m.watch_redis(redis_client)
        return cls(m, svc, server)

    def model_loaded(self, ref: str, seconds: float) -> None:
        self.metrics.model_load_seconds.labels(model=ref).set(seconds)
        if self.health is not None:
            self.health.state.mark_model_loaded(ref)

    def consumer_tick(self) -> None:
        """Celery's consumer event loop ran (see ``worker.service.health``: a stalled consumer fails liveness)."""
        if self.health is not None:
            self.health.state.consumer_tick()

    def observe_batch(self, size: int, oldest_wait_s: float, inference_s: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference_seconds.observe(inference_s)

    @contextlib.contextmanager
    def job(self, lane: str | None) -> Iterator[None]:
        self.metrics.inflight_jobs.inc()
        try:
            yield
        finally:
            self.metrics.inflight_jobs.dec()

    def decision(self, decision: Decision, lane: str | None) -> None:
        label = lane_label(lane)
        if isinstance(decision, RetryLater):
            if decision.deferral:
                self.metrics.rate_limit_deferrals_total.labels(scope=decision.scope or "unknown").inc()
            return
        if isinstance(decision, Finished) and not decision.duplicate:
            self._finished(decision.result, label)

    def _finished(self, result: JobResult, lane: str) -> None:
        code = result.error.code if result.error else None
        self.metrics.job_finished(result.status.value, code, lane)
        t = result.timings
        if t.queued_ms is not None:
            self.metrics.queue_wait_seconds.labels(lane=lane).observe(t.queued_ms / 1000)
        if t.fetch_ms is not None:
            self.metrics.fetch_seconds.observe(t.fetch_ms / 1000)
        if t.decode_ms is not None:
            self.metrics.decode_seconds.observe(t.decode_ms / 1000)

    def invalid(self) -> None:
        self.metrics.job_finished("error", "invalid-job", "unknown")

    def ledger_swept(self, report: SweepReport) -> None:
        if report.requeued:
            self.metrics.jobs_requeued_by_ledger_total.inc(report.requeued)

    def webhook(self, outcome: str) -> None:
        self.metrics.webhook_deliveries_total.labels(outcome=outcome).inc()

    def stop(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
