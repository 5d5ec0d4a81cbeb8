"""The Celery adapter: app, configuration and task definitions — nothing else.

A task validates its message, hands the job to :class:`worker.core.processing.JobProcessor`, and maps the decision
to Celery: ``Finished`` → return (ack, the result is already stored), ``RetryLater`` → ``self.retry`` with a
countdown (the new message is published before this one is acked). If the result store cannot be written the
message is rejected back to the queue, never acked without its result.

Why an in-process batcher and not celery-batches: see README "Why this batching design".

A worker builds its runtime (Redis reachable, worker slot taken, model loaded) BEFORE Celery starts consuming
(:func:`run_worker`); a start that fails ends the process with one line and exit code 2, so a worker that
cannot serve never takes (and fails) a job. Only a prefork pool builds lazily, in each child (its parent must
not touch CUDA); a child whose build fails ends itself, and its job returns to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Any, NoReturn

from celery import Celery, Task, bootsteps, signals
from celery.exceptions import Reject
from kombu.entity import Queue
from pydantic import ValidationError

from producers.connections import broker_url, celery_sentinel_options, celery_ssl_options, sentinel_target
from producers.contract import (
    ALL_QUEUES,
    TASK_NAME,
    WEBHOOK_TASK_NAME,
    JobMessage,
    JobResult,
    lanes_for,
    side_lane,
)
from producers.errors import ConfigError, ErrorCode, FakesakeError
from worker.core.intake import Delivery
from worker.core.processing import Finished
from worker.service.intake import Outcome
from worker.service.logs import job_context
from worker.service.runtime import EXIT_START_FAILED, ping_redis, start_failure
from worker.service.settings import WorkerSettings, job_threads
from worker.stores.broker import SENTINEL_TRANSPORT_PATH, TRANSPORT_PATH, sentinel_failover

log = logging.getLogger(__name__)


def served_lanes(settings: WorkerSettings) -> tuple[str, ...]:
    """The lanes of every set of the detectors this worker serves (``model.names``, else ``model.name``): a job
    is queued on the lane of its own set, so it only reaches workers that serve all of its detectors."""
    names = [n.strip() for n in (settings.model.names or settings.model.name).split(",") if n.strip()]
    return lanes_for(names)


def consumed_lanes(settings: WorkerSettings) -> tuple[str, ...]:
    """What Celery's consumer takes, in order. ``batch.intake = celery``: each lane's side lane, then the lane (a
    job's follow-ups before new jobs); ``bulk``: the side lanes only, the lanes being the bulk intake's."""
    lanes = served_lanes(settings)
    if settings.batch.intake == "bulk":
        return tuple(side_lane(lane) for lane in lanes)
    return tuple(q for lane in lanes for q in (side_lane(lane), lane))


def celery_config(settings: WorkerSettings) -> dict[str, Any]:
    """Celery settings derived from ours. Each line guards against a default that loses or duplicates work."""
    vt = settings.redis.visibility_timeout_s
    sentinel = sentinel_target(settings.redis) is not None
    return {
        "broker_url": broker_url(settings.redis),
        # kombu's Redis (or Sentinel) transport, fixed to survive a Redis restart or failover
        "broker_transport": SENTINEL_TRANSPORT_PATH if sentinel else TRANSPORT_PATH,
        "broker_use_ssl": celery_ssl_options(settings.redis),
        # None = kombu's round-robin over URL parts; a Sentinel URL's parts are one group, not alternatives
        "broker_failover_strategy": sentinel_failover if sentinel else None,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": vt,  # unacked jobs of a dead worker come back after this
            "queue_order_strategy": "priority",  # interactive lane is always polled before bulk
            "unacked_restore_interval": max(1, min(10, vt // 4)),
            "unacked_restore_throttle": 1,
            # kombu waits forever on a dead socket by default: a primary that vanishes without closing its
            # connections (failover, a network split) would hang a publish. Above BRPOP's 1 s timeout.
            "socket_timeout": max(settings.redis.socket_timeout_s, 5.0),
            "socket_connect_timeout": settings.redis.socket_timeout_s,
            **celery_sentinel_options(settings.redis),  # master_name, sentinel_kwargs
        },
        "task_serializer": "json",
        "accept_content": ["json"],  # pickle would let a producer run code on the worker
        "result_serializer": "json",
        "task_ignore_result": True,  # results go to our own tenant-scoped store
        "task_acks_late": True,  # ack after the result is written
        "task_reject_on_worker_lost": True,  # a killed worker's job is redelivered (we count deliveries)
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # Off by default: 3 Redis publishes per job on the consumer thread. Flower enables them remotely while it
        # runs (its enable_events option); metrics come from worker/service/metrics.py, not from events.
        "worker_send_task_events": settings.metrics.task_events,
        "task_send_sent_event": False,
        "task_queues": [Queue(q, routing_key=q) for q in consumed_lanes(settings)],
        "task_default_queue": ALL_QUEUES[0],
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }


app = Celery("fakesake", set_as_current=False)
app.add_defaults(lambda: celery_config(WorkerSettings()))

_runtime_lock = threading.Lock()
_runtime: Any = None


def build_runtime() -> Any:
    """Build this process's WorkerRuntime now (model load included); raises when the worker cannot serve."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from worker.service.builder import worker_runtime

            _runtime = worker_runtime(WorkerSettings())
    return _runtime


def runtime() -> Any:
    """The process's WorkerRuntime. Built before consuming (:func:`run_worker`), except in prefork children,
    which build it on first use; a build that fails there ends the process rather than fail the job."""
    if _runtime is not None:
        return _runtime
    try:
        return build_runtime()
    except Exception as exc:
        _exit_start_failed(exc)


def _exit_start_failed(exc: BaseException) -> NoReturn:
    # os._exit, not SystemExit: raised inside a task, SystemExit would end that task as failed (and acked).
    # A process that dies holding the message leaves it unacked: Celery requeues it (task_reject_on_worker_lost).
    report_start_failure(exc)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_START_FAILED)


def report_start_failure(exc: BaseException) -> None:
    """Print the one line saying why the worker did not start (traceback logged only for surprises)."""
    line = start_failure(exc)
    if line.startswith("internal:"):
        log.error("worker start failed", exc_info=exc)
    print(f"fakesake: {line}", file=sys.stderr, flush=True)


def forks_children(argv: list[str]) -> bool:
    """Whether ``celery worker`` argv selects a pool that runs jobs in forked children (prefork)."""
    pool = "prefork"  # Celery's default
    for i, arg in enumerate(argv):
        if arg in ("--pool", "-P") and i + 1 < len(argv):
            pool = argv[i + 1]
        elif arg.startswith("--pool="):
            pool = arg.split("=", 1)[1]
        elif arg.startswith("-P") and len(arg) > 2:
            pool = arg[2:].lstrip("=")
    return pool.lower() in ("prefork", "processes")


@signals.worker_init.connect
def _load_at_start(sender: Any = None, **_: Any) -> None:
    # `fakesake worker` has built the runtime already; this covers `celery -A worker.service.celery_app worker`.
    # threads/solo pools run jobs in this process: build before consuming, and end the process if that fails
    # (Celery would log a raised error and consume anyway). A prefork parent must not touch CUDA.
    pool = getattr(sender, "pool_cls", "")
    if "prefork" not in str(pool).lower():
        runtime()


def _tick(rt: Any) -> None:
    # The bulk intake takes the jobs, Celery's consumer only the side lanes: report the worker alive only while
    # both loops turn (worker.service.intake.BulkIntake.alive).
    if rt.intake is None or rt.intake.alive():
        rt.telemetry.consumer_tick()


class ConsumerTick(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no type hints
    """Reports, every heartbeat interval, that the consumer's event loop runs (worker.service.health's liveness),
    and with the bulk intake that the intake's loop turns too (:func:`_tick`).

    The entry lives on the consumer's timer, which only the event loop fires: a consumer that stopped or
    wedged stops ticking. Celery cancels a failed connection's timer entries and calls ``start`` again on
    every reconnect, so the tick follows the consumer through restarts.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self._entry: Any = None
        super().__init__(parent, **kwargs)

    def start(self, c: Any) -> None:
        rt = _runtime
        if rt is None or c.timer is None:  # a prefork parent has no runtime; tick nothing rather than lie
            return
        _tick(rt)
        self._entry = c.timer.call_repeatedly(rt.heartbeat_interval_s, _tick, (rt,))

    def stop(self, c: Any) -> None:
        if self._entry is not None:
            self._entry.cancel()
            self._entry = None

    shutdown = stop


app.steps["consumer"].add(ConsumerTick)


class BulkIntakeStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no type hints
    """Starts this process's bulk intake (``batch.intake = bulk``) once Celery's consumer runs. It is started once
    and stopped only at shutdown: it keeps its own Redis connection, so a broker reconnect of the consumer (which
    calls ``stop`` and ``start`` again) leaves it running."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        rt = _runtime
        if rt is not None and rt.intake is not None:
            # as many jobs at once as Celery's pool would run: `--concurrency` (default: job_threads) applies to both
            concurrency = getattr(getattr(c, "controller", None), "concurrency", None)
            rt.intake.start(handle_delivery, capacity=concurrency if isinstance(concurrency, int) else None)

    def shutdown(self, c: Any) -> None:
        rt = _runtime
        if rt is not None and rt.intake is not None:
            rt.intake.stop()


app.steps["consumer"].add(BulkIntakeStep)


@signals.worker_shutdown.connect
def _close(**_: Any) -> None:
    if _runtime is not None:
        _runtime.close()


@signals.task_received.connect
def _mark_received(request: Any = None, **_: Any) -> None:
    # The message is in kombu's unacked hash now: mark the job alive in the ledger (worker/stores/ledger.py), so one
    # whose worker dies before starting it is left to kombu's restore rather than also re-queued by the
    # ledger. Without a runtime in this process (a prefork parent) the touch at processing start does it.
    # rt.touch (runtime.DeferredToucher) only queues the id: it never blocks the consumer and never raises.
    rt = _runtime
    if rt is None or rt.touch is None or request is None or getattr(request, "name", None) != TASK_NAME:
        return
    rt.touch(request.id)


@signals.task_rejected.connect
def _dead_letter_refused(message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    # Celery logs and drops a message it will not decode (pickle or any content type outside accept_content,
    # a malformed envelope). Keep a dead letter too, so the job shows in `fakesake dlq list` instead of
    # vanishing. Only the envelope's headers are recorded: the body is never decoded.
    headers = getattr(message, "headers", None) or {}
    record = {
        "job_id": headers.get("id"),
        "task": headers.get("task"),
        "content_type": getattr(message, "content_type", None),
    }
    reason = f"message refused by the worker: {type(exc).__name__ if exc else 'unknown message format'}: {exc}"
    try:
        from producers.connections import redis_from_settings
        from producers.dlq import DeadLetters

        client = _runtime.redis if _runtime is not None else redis_from_settings(WorkerSettings().redis)
        DeadLetters(client).add_raw(record, code=ErrorCode.INVALID_JOB.value, message=reason[:2000])
    except Exception:  # the consumer thread must go on; Celery has already logged the message
        log.exception("cannot dead-letter refused message %s", record)


@app.task(name=TASK_NAME, bind=True, max_retries=None, acks_late=True)
def classify(self: Task, payload: dict[str, Any], rate_reserved: list[str] | None = None) -> str:
    """Classify one image reference; the verdict goes to the result store, not the Celery backend."""
    try:
        job = JobMessage.model_validate(payload)
    except ValidationError as exc:
        runtime().reject_invalid(payload, exc)
        return "invalid"
    rt = runtime()
    lane = self.request.delivery_info.get("routing_key") or ALL_QUEUES[0]
    with job_context(job.job_id, job.tenant):
        try:
            decision = rt.process(job, lane=lane, reserved=frozenset(rate_reserved or ()))
        except FakesakeError as exc:  # result store or counters unavailable: do not ack without a result
            log.warning("cannot finish job now (%s); returning it to the queue", exc.code)
            raise Reject(str(exc), requeue=True) from exc
        if isinstance(decision, Finished):
            _queue_webhook(job, decision, lane)
            return decision.result.status.value
        # A held rate-limit slot travels with the retried message so the job does not queue for it twice.
        raise self.retry(
            countdown=decision.countdown_s,
            exc=decision.error,
            max_retries=None,
            kwargs={"rate_reserved": sorted(decision.reserved)},
            queue=side_lane(lane),
        )


def _queue_webhook(job: JobMessage, decision: Finished, lane: str) -> None:
    # Error results too: a caller waiting on its callback must hear that the job failed. Duplicates too: a
    # worker that died after storing the result but before queueing its webhook leaves only this redelivery to
    # send it. Webhooks are therefore at-least-once; receivers dedupe on the X-Fakesake-Job-Id header.
    if job.callback_url:
        deliver_webhook.apply_async(
            args=[decision.result.model_dump(mode="json"), job.callback_url], queue=side_lane(lane)
        )


def handle_delivery(delivery: Delivery) -> Outcome:
    """The classify task for a job the bulk intake took (``worker.service.intake``): the same steps, with
    Celery's parts done by hand (the retry is published with the same task id and countdown)."""
    rt = runtime()
    try:
        job = JobMessage.model_validate(delivery.payload)
    except ValidationError as exc:
        rt.reject_invalid(delivery.payload, exc)
        return Outcome.ACK
    with job_context(job.job_id, job.tenant):
        try:
            decision = rt.process(job, lane=delivery.lane, reserved=delivery.reserved)
            if isinstance(decision, Finished):
                _queue_webhook(job, decision, delivery.lane)
            else:
                classify.apply_async(
                    args=[delivery.payload],
                    kwargs={"rate_reserved": sorted(decision.reserved)},
                    countdown=decision.countdown_s,
                    task_id=delivery.task_id,
                    queue=side_lane(delivery.lane),
                )
        except FakesakeError as exc:
            log.warning("cannot finish job now (%s); returning it to the queue", exc.code)
            return Outcome.REQUEUE
        except Exception:  # the broker refused the follow-up: run the job again (its stored result answers it)
            log.warning("cannot queue the follow-up of a finished job; returning it to the queue", exc_info=True)
            return Outcome.REQUEUE
    return Outcome.ACK


@app.task(name=WEBHOOK_TASK_NAME, bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self: Task, result: dict[str, Any], url: str) -> str:
    """POST a stored result to its callback URL, signed; retried on its own, never touching the result."""
    rt = runtime()
    stored = JobResult.model_validate(result)
    with job_context(stored.job_id, stored.tenant):
        countdown = rt.deliver_webhook(stored, url, attempt=self.request.retries + 1)
        if countdown is None:
            return "done"
        raise self.retry(countdown=countdown, max_retries=None)


def worker_argv(settings: WorkerSettings, extra: list[str]) -> list[str]:
    """``celery worker`` arguments: threads pool sized for batching, both lanes, events if configured."""
    argv = ["worker", "--events"] if settings.metrics.task_events else ["worker"]
    if not any(a.startswith(("--queues", "-Q")) for a in extra):
        argv += ["--queues", ",".join(consumed_lanes(settings))]  # interactive lanes polled first
    if not any(a.startswith(("--pool", "-P")) for a in extra):
        argv.append("--pool=threads")
    if not any(a.startswith(("--concurrency", "-c")) for a in extra):
        # Enough job threads to fill two batches while one is in the model.
        argv.append(f"--concurrency={job_threads(settings)}")
    if not any(a.startswith(("--loglevel", "-l")) for a in extra):
        argv.append(f"--loglevel={settings.log.level}")
    return argv + extra


def run_worker(extra: list[str]) -> int:
    """``fakesake worker [celery worker options]``: start the runtime, then consume; 2 if it cannot start."""
    try:
        settings = WorkerSettings()
    except ValidationError as exc:
        report_start_failure(exc)
        return EXIT_START_FAILED
    from worker.service.logs import setup_logging

    setup_logging(settings.log.level, settings.log.json_format)
    from worker.service import cpus, malloc, supervisor

    malloc.limit_arenas()  # before any job thread: memory settles rather than creeps (see the module)
    try:
        pinned = cpus.apply(settings.model.cpus)  # before any thread too: the threads started later inherit it
    except ConfigError as exc:
        report_start_failure(exc)
        return EXIT_START_FAILED
    if pinned is not None:
        log.info("running on CPUs %s (model.cpus)", cpus.format_list(pinned))
    if extra and extra[0] == "--":
        extra = extra[1:]

    try:
        processes, extra = supervisor.take_processes(extra)
    except ValueError as exc:
        report_start_failure(ConfigError(str(exc)))
        return EXIT_START_FAILED
    if extra and extra[0] == "--":  # `worker --processes 2 -- --pool=threads`
        extra = extra[1:]
    if processes > 1:
        return _supervise(settings, processes, extra)
    argv = worker_argv(settings, extra)
    if settings.batch.intake == "bulk" and forks_children(argv):
        # the intake runs in the process that consumes; a prefork parent runs no jobs
        report_start_failure(ConfigError("batch.intake=bulk runs jobs on threads: use --pool=threads (the default)"))
        return EXIT_START_FAILED
    try:
        if forks_children(argv):
            _check_redis(settings)  # children build the rest; at least a dead Redis fails the start here
        else:
            build_runtime()
    except Exception as exc:
        report_start_failure(exc)
        return EXIT_START_FAILED
    os.environ.setdefault("FORKED_BY_MULTIPROCESSING", "1")
    app.worker_main(argv)
    return 0


def _supervise(settings: WorkerSettings, processes: int, extra: list[str]) -> int:
    """``--processes N``: N worker processes under one supervisor (:mod:`worker.service.supervisor`)."""
    from producers.connections import redis_from_settings
    from worker.service import supervisor
    from worker.service.slots import SlotPlan

    if processes > settings.metrics.slots:
        report_start_failure(
            ConfigError(f"--processes {processes} needs as many worker slots; raise FAKESAKE_METRICS__SLOTS")
        )
        return EXIT_START_FAILED
    m = settings.metrics
    plan = SlotPlan(m.port, m.health_port, m.heartbeat_file, m.slots)
    watch = supervisor.HeartbeatWatch(plan, m.heartbeat_max_age_s) if plan.slot(0).heartbeat_file else None
    client = redis_from_settings(settings.redis)
    try:
        ping_redis(client, settings.redis.url)
        return supervisor.run_supervisor(
            processes,
            extra,
            cpus=settings.model.cpus,
            metrics_port=m.port,
            bind_host=m.bind_host,
            redis_client=client,
            watch=watch,
        )
    except Exception as exc:
        report_start_failure(exc)
        return EXIT_START_FAILED
    finally:
        client.close()


def _check_redis(settings: WorkerSettings) -> None:
    from producers.connections import redis_from_settings

    client = redis_from_settings(settings.redis)
    try:
        ping_redis(client, settings.redis.url)
    finally:
        client.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_worker(sys.argv[1:]))
