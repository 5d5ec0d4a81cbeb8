"""Section 4: the producer. ``submit_many`` enqueue rate (validation + message building + one Lua call per
500 jobs, pipelined) and Redis memory per queued job (its message in the lane plus its ledger entry: hash
value and seen score), on a fresh redis-server with no consumer."""

from __future__ import annotations

import redis

from bench.common import Context, Row, median, timed_rate
from bench.queue_section import producer
from producers import wire
from tests.support.servers import redis_server

TARGET_RATE = 5000.0
TARGET_BYTES = 1024.0
SOURCE = "s3://bench-bucket/images/2024/01/photo-{:06d}.jpg"  # a typical S3 key


def run(ctx: Context) -> list[Row]:
    count = ctx.n(20_000, 5_000)
    sources = [SOURCE.format(i) for i in range(count)]
    with redis_server() as server:
        client = redis.Redis.from_url(server.url)
        prod = producer(server.url)
        try:
            prod.submit_many(sources[:500])  # warm-up: script load, connection
            rates, per_job = [], []
            for _ in range(ctx.passes):
                client.flushall()
                before = int(client.info("memory")["used_memory"])
                rates.append(timed_rate(count, lambda: prod.submit_many(sources)))
                per_job.append((int(client.info("memory")["used_memory"]) - before) / count)
            sample = prod.build_job(sources[0])
        finally:
            prod.close()
            client.close()
    rate, bytes_per_job = median(rates), median(per_job)
    message, stored = (len(part) for part in wire.encode(sample))
    return [
        Row(
            "producer",
            f"submit_many enqueue rate ({count} jobs per call)",
            rate,
            "jobs/s",
            target=f">= {TARGET_RATE:,.0f}/s",
            ok=rate >= TARGET_RATE,
        ),
        Row(
            "producer",
            "Redis memory per queued job (used_memory delta / jobs)",
            bytes_per_job,
            "bytes",
            target=f"<= {TARGET_BYTES:,.0f} B",
            ok=bytes_per_job <= TARGET_BYTES,
            note=f"one message is {message} bytes of JSON and its ledger value {stored} bytes, for a "
            f"{len(sample.source)}-char S3 source",
        ),
    ]
