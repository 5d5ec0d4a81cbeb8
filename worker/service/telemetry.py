"""Telemetry of a worker process: Prometheus metrics and health state, behind one small object.

The runtime and the Celery adapter report events here (job started/finished, batch run, model loaded);
this module turns them into metric updates and readiness. Nothing else in the worker touches
prometheus-client or the health server.

:meth:`Telemetry.start` takes the process's worker slot (:mod:`worker.service.slots`): the first whose heartbeat
lock it holds and whose health and metrics ports it binds. It is part of the worker's start, so a worker with no
free slot refuses to start instead of serving without endpoints.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from producers.contract import JobResult
from producers.errors import ConfigError
from worker.core.processing import Decision, Finished, RetryLater
from worker.service import health, metrics
from worker.service.health import HealthPolicy
from worker.service.slots import HeartbeatLock, Slot, SlotBusy, SlotPlan, no_free_slot
from worker.stores.ledger import SweepReport

log = logging.getLogger(__name__)


def lane_label(routing_key: str | None) -> str:
    return metrics.lane_of(routing_key) if routing_key else "unknown"


@dataclass
class _Held:
    """What taking a slot bound: released together when a later part of the slot is busy, or at stop."""

    lock: HeartbeatLock
    health_server: health.HealthServer | None = None
    metrics_server: Any = None

    def release(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.health_server is not None:
            self.health_server.stop()
        self.lock.release()


def _bind(what: str, port: int, host: str, bind: Any) -> Any:
    """Bind one server; a port in use means the slot is taken, any other failure is a configuration error."""
    try:
        return bind()
    except OSError as exc:
        setting = "FAKESAKE_METRICS__PORT" if what == "metrics" else "FAKESAKE_METRICS__HEALTH_PORT"
        if exc.errno == errno.EADDRINUSE:
            raise SlotBusy(f"{what} port {port} is in use", setting) from None
        raise ConfigError(
            f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}; check {setting} and "
            "FAKESAKE_METRICS__BIND_HOST"
        ) from None


def _take(slot: Slot, state: health.HealthState, host: str, m: metrics.Metrics, max_age_s: float) -> _Held:
    held = _Held(HeartbeatLock.take(slot.heartbeat_file))
    try:
        if slot.health_port:
            held.health_server = _bind(
                "health", slot.health_port, host, lambda: health.HealthServer(state, slot.health_port, host, max_age_s)
            )
        held.metrics_server = _bind(
            "metrics", slot.metrics_port, host, lambda: metrics.start_metrics_server(slot.metrics_port, m, host)
        )
    except BaseException:
        held.release()
        raise
    return held


@dataclass
class Telemetry:
    metrics: metrics.Metrics
    health: health.HealthService | None
    held: _Held | None = None  # the slot's servers and heartbeat lock

    @classmethod
    def start(cls, plan: SlotPlan, bind_host: str, policy: HealthPolicy, redis_client: Any = None) -> Telemetry:
        """Take the first free worker slot of ``plan`` and serve metrics and health there.

        ConfigError (before anything is left running) when every slot is taken or a port cannot be bound.
        """
        m = metrics.default()
        state = health.HealthState()
        refused: list[SlotBusy] = []
        for slot in plan.all():
            try:
                held = _take(slot, state, bind_host, m, policy.heartbeat_max_age_s)
            except SlotBusy as busy:
                refused.append(busy)
                continue
            break
        else:
            raise ConfigError(no_free_slot(plan, refused))
        state.slot, state.metrics_port, state.health_port = slot.index, slot.metrics_port, slot.health_port
        log.info(
            "worker slot %d: metrics port %s, health port %s, heartbeat file %s",
            slot.index,
            slot.metrics_port or "off",
            slot.health_port or "off",
            slot.heartbeat_file or "off",
        )
        svc = health.start_health(
            policy,
            ping=redis_client.ping if redis_client else None,
            state=state,
            heartbeat_file=slot.heartbeat_file,
            server=held.health_server,
            on_stall=health.exit_process,
        )
        if redis_client is not None:
            m.watch_redis(redis_client)
        return cls(m, svc, held)

    def model_loaded(self, ref: str, seconds: float) -> None:
        self.metrics.model_load_seconds.labels(model=ref).set(seconds)
        if self.health is not None:
            self.health.state.mark_model_loaded(ref)
            self.health.heartbeat.nudge()

    def consumer_tick(self) -> None:
        """Celery's consumer event loop ran (see ``worker.service.health``: a stalled consumer fails liveness)."""
        if self.health is not None:
            self.health.state.consumer_tick()

    def observe_batch(self, size: int, oldest_wait_s: float, inference_s: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_queue_delay_seconds.observe(oldest_wait_s)
        self.metrics.inference_seconds.observe(inference_s)

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
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
            self.health.heartbeat.stop()
        if self.held is not None:
            self.held.release()  # both servers and the heartbeat lock: the slot is free again
