"""Sections 2 and 3: end to end through Redis + one real worker vs in-process; vs a naive Celery worker;
and latency (one job on an idle system; under a steady load at 50% of the measured capacity).

Images are local files sent as ``file://`` sources (the worker runs with ``fetch.allow_local_files``), so
the comparison is about queueing, batching and storing, not about a network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import Context, Row, median, percentile
from bench.corpus import image_set, scan_rig, weights_file, worker_settings
from bench.engine_section import engine_rate
from producers.client import Producer
from producers.contract import ALL_QUEUES, JobMessage
from producers.settings import ProducerSettings, QueueSettings, RedisSettings
from tests.support.servers import redis_server
from tests.support.workers import REPO_ROOT, WorkerProcess

TENANT = "bench"
TARGET_QUEUE = 0.85
TARGET_NAIVE = 3.0
LATENCY_SLACK_MS = 25.0


def producer(redis_url: str) -> Producer:
    settings = ProducerSettings(
        redis=RedisSettings(url=redis_url), queue=QueueSettings(max_depth=10_000_000), tenant=TENANT
    )
    return Producer(settings)


def queue_rate(prod: Producer, sources: list[str], timeout_s: float = 300) -> float:
    """Jobs/s from the first enqueue to the last stored result; every result must be ok."""
    start = time.perf_counter()
    ids = prod.submit_many(sources, tenant=TENANT)
    done = prod.wait(ids, tenant=TENANT, timeout_s=timeout_s, poll_s=0.5)
    elapsed = time.perf_counter() - start
    bad = [r for r in done.values() if not r.ok]
    if len(done) != len(ids) or bad:
        raise RuntimeError(f"{len(done)}/{len(ids)} results, {len(bad)} failed: {bad[:1]}")
    return len(ids) / elapsed


def bench_worker_env(redis_url: str, weights: Path) -> dict[str, str]:
    """The code's default worker settings plus only what the bench needs (not the tests' harness overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESAKE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        FAKESAKE_REDIS__URL=redis_url,
        FAKESAKE_MODEL__WEIGHTS=str(weights),
        FAKESAKE_MODEL__DEVICE="cpu",
        FAKESAKE_FETCH__ALLOW_LOCAL_FILES="true",
        FAKESAKE_METRICS__PORT="0",
        FAKESAKE_LOG__LEVEL="WARNING",
    )
    return env


def real_worker(ctx: Context, *, ready: bool = True, **env_overrides: str) -> dict[str, Any]:
    """redis-server + one ``fakesake worker`` with default settings (started once per run and overrides); with
    ``ready`` False, returns once it is started (a later call waits for it to be ready)."""

    def start() -> dict[str, Any]:
        from worker.service.celery_app import worker_argv

        server = ctx.stack.enter_context(redis_server())
        weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
        env = {**bench_worker_env(server.url, weights), **env_overrides}
        settings = worker_settings(weights)
        concurrency = next(int(a.split("=")[1]) for a in worker_argv(settings, []) if a.startswith("--concurrency"))
        worker = WorkerProcess(env=env, name=f"bench{os.getpid()}", concurrency=concurrency)
        worker.start(wait_ready_s=0)
        ctx.stack.callback(worker.terminate)
        prod = producer(server.url)
        ctx.stack.callback(prod.close)
        return {"redis": server, "worker": worker, "producer": prod, "settings": settings}

    key = "real_worker" + "".join(f",{k}={v}" for k, v in sorted(env_overrides.items()))
    started: dict[str, Any] = ctx.once(key, start)
    if ready:
        started["worker"].wait_ready(300)  # one health check once it is
    return started


def naive_rate(ctx: Context, sources: list[str], passes: int) -> list[float]:
    """Jobs/s through ``bench.naive_worker`` (its own redis-server), median-able passes."""
    weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
    with redis_server() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESAKE_")}
        env.update(BENCH_BROKER=server.url, BENCH_WEIGHTS=str(weights), PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.naive_worker",
            "worker",
            "-Q",
            ",".join(ALL_QUEUES),
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"naive{os.getpid()}@%h",
            *(["--concurrency=1"] if ctx.smoke else []),  # each child loads the card pipeline: one is enough there
        ]
        # Its log goes to a file: a pipe nobody reads would fill up and block the worker.
        with open(ctx.workdir / "naive-worker.log", "wb") as log_file:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True
            )
        prod = producer(server.url)
        try:
            queue_rate(prod, sources[:2])  # warm-up: each child loads the card pipeline on its first task
            return [queue_rate(prod, sources) for _ in range(passes)]
        finally:
            prod.close()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_queue(ctx: Context) -> list[Row]:
    real_worker(ctx, ready=False, FAKESAKE_METRICS__TASK_EVENTS="true")  # both workers start at once
    real = real_worker(ctx)
    images = image_set(ctx.workdir, "jpeg-1024", ctx.n(128, 48))
    uris = images.uris
    prod: Producer = real["producer"]
    engine = scan_rig(real["settings"])
    # A second worker with Celery task events on (what Flower switches on), on its own Redis: it idles in BRPOP
    # while the others run, so the passes can interleave.
    evented: Producer = real_worker(ctx, FAKESAKE_METRICS__TASK_EVENTS="true")["producer"]
    queue_rate(prod, uris[:32])  # warm-up of the worker's pools and kernels
    queue_rate(evented, uris[:32])
    list(engine.classify(images.sources[:32]))
    queue_rates, engine_rates, evented_rates = [], [], []
    for _ in range(ctx.passes):  # interleaved: the worker idles while the in-process engine runs
        queue_rates.append(queue_rate(prod, uris))
        engine_rates.append(engine_rate(engine, images.sources))
        evented_rates.append(queue_rate(evented, uris))
    engine.close()
    ratio = median([q / e for q, e in zip(queue_rates, engine_rates, strict=True)])
    ctx.cache["queue_capacity"] = median(queue_rates)
    n_naive = ctx.n(24, 8)  # the naive worker is slow: few jobs, fewer passes
    naive = naive_rate(ctx, uris[:n_naive], max(2, ctx.passes - 1))
    naive_ratio = median(queue_rates) / median(naive)
    return [
        Row(
            "queue",
            f"Redis + 1 worker, {len(uris)} jpeg-1024 jobs, submit -> results stored",
            median(queue_rates),
            "img/s",
            median(engine_rates),
            "in-process engine",
            ratio,
            f">= {TARGET_QUEUE:.0%}",
            ratio >= TARGET_QUEUE,
        ),
        Row(
            "queue",
            "Redis + 1 worker vs naive Celery worker",
            median(queue_rates),
            "img/s",
            median(naive),
            f"naive (card pipeline, 1 task/img, {n_naive} jobs)",
            naive_ratio,
            f">= {TARGET_NAIVE:.0f}x",
            naive_ratio >= TARGET_NAIVE,
            note="naive = bench/naive_worker.py: Celery defaults (prefork, 1 child per core), the card's pipeline "
            "per task, no batching",
        ),
        Row(
            "queue",
            "Redis + 1 worker with Celery task events on (as under Flower)",
            median(evented_rates),
            "img/s",
            median(queue_rates),
            "events off (default)",
            median([e / q for e, q in zip(evented_rates, queue_rates, strict=True)]),
        ),
    ]


def one_batch_ms(ctx: Context, settings: Any, sources: list[str]) -> float:
    """Model time of one full batch (``batch.max_size``) with the worker's settings, measured in-process."""
    engine = scan_rig(settings)
    batch = [engine.prepare(s).tensor for s in (sources * settings.batch.max_size)[: settings.batch.max_size]]
    engine.classifier.predict(batch)
    times = []
    for _ in range(ctx.passes):
        start = time.perf_counter()
        engine.classifier.predict(batch)
        times.append((time.perf_counter() - start) * 1000)
    engine.close()
    return median(times)


def _latency_ms(job: JobMessage, finished_at: datetime) -> float:
    return (finished_at - job.submitted_at).total_seconds() * 1000


def run_latency(ctx: Context) -> list[Row]:
    real = real_worker(ctx)
    prod: Producer = real["producer"]
    settings = real["settings"]
    images = image_set(ctx.workdir, "jpeg-1024", ctx.n(128, 48))
    uris = images.uris
    prod.wait(prod.submit_many(uris[:16], tenant=TENANT), tenant=TENANT, timeout_s=120)  # warm-up
    idle = []
    for i in range(ctx.n(30, 15)):
        start = time.perf_counter()
        job_id = prod.submit(uris[i % len(uris)], tenant=TENANT)
        result = prod.wait([job_id], tenant=TENANT, timeout_s=60, poll_s=0.5)[job_id]
        idle.append((time.perf_counter() - start) * 1000)
        assert result.ok, result
    capacity = ctx.cache.get("queue_capacity") or queue_rate(prod, uris)
    rate = capacity / 2
    duration_s = ctx.n(8, 4)
    jobs = []
    start = time.perf_counter()
    for i in range(max(1, int(rate * duration_s))):  # at least one job, however slow the worker
        time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        job = prod.build_job(uris[i % len(uris)], tenant=TENANT)
        prod.enqueue([job])
        jobs.append(job)
    done = prod.wait([j.job_id for j in jobs], tenant=TENANT, timeout_s=120, poll_s=0.5)
    loaded = [_latency_ms(j, done[j.job_id].finished_at) for j in jobs if j.job_id in done]
    batch_ms = one_batch_ms(ctx, settings, images.sources)
    target = settings.batch.max_wait_ms + batch_ms + LATENCY_SLACK_MS
    how = (
        f"target = max wait {settings.batch.max_wait_ms:.0f} ms + one batch of {settings.batch.max_size} "
        f"{batch_ms:.0f} ms (measured in-process) + {LATENCY_SLACK_MS:.0f} ms = {target:.0f} ms"
    )
    rows = []
    for label, values, note in (
        (f"idle, one job at a time ({len(idle)} jobs), submit -> result read", idle, how),
        (
            f"steady load {rate:.1f} jobs/s = 50% of {capacity:.1f} ({len(loaded)} jobs), submitted -> stored",
            loaded,
            "",
        ),
    ):
        p50, p99 = percentile(values, 50), percentile(values, 99)
        rows.append(
            Row("latency", f"p50 {label}", p50, "ms", target=f"<= {target:.0f} ms", ok=p50 <= target, note=note)
        )
        rows.append(Row("latency", f"p99 {label}", p99, "ms"))
    return rows


__all__ = ["run_latency", "run_queue"]
