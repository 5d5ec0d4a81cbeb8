"""Redis cost per job of a bench consumer (``bench/fleet_section.py``): commands by name from ``INFO commandstats``
(those run inside Lua scripts included) and round trips from ``MONITOR`` (a command a client sends, or one
MULTI..EXEC block), each less the producer's enqueue (measured alone) and the bench's own polls."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from producers.client import Producer
from producers.contract import ALL_QUEUES
from producers.settings import ProducerSettings, QueueSettings, RedisSettings


def command_counts(client: redis.Redis) -> Counter[str]:
    stats: dict[str, Any] = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


#: What one poll round of a Consumer sends (subtracted from the consumer's counts).
POLL_COMMANDS = {False: Counter({"llen": len(ALL_QUEUES), "hlen": 1}), True: Counter({"zcard": 1})}


def per_job(
    client: redis.Redis, consumer: Any, n: int, stores: bool, uris: list[str], producer_cost: Counter[str]
) -> dict[str, float]:
    """Redis commands per job of ``consumer``, by command (commands run inside Lua scripts included), over one
    pass: the whole server's ``INFO commandstats`` less the producer's enqueue and the bench's polls (idle
    consumers add a little: BRPOP timeouts, heartbeats)."""
    before, polls = command_counts(client), consumer.polls
    consumer.rate(uris, n, stores)
    delta = command_counts(client) - before
    delta -= Counter({c: k * (consumer.polls - polls) for c, k in POLL_COMMANDS[stores].items()})
    delta -= Counter({c: round(v * n) for c, v in producer_cost.items()})
    return {c: v / n for c, v in delta.items() if c != "info"}


END_MARK = "fleet-monitor-end"


def round_trips(redis_url: str, db: int, run: Callable[[], object]) -> Counter[str]:
    """Round trips to database ``db`` during ``run``, by what they send (``MONITOR``): a command sent by a client
    (not one run by a Lua script) is one; a MULTI..EXEC block is one, named by its commands."""
    found: Counter[str] = Counter()
    admin = redis.Redis.from_url(redis_url)
    blocks: dict[str, list[str]] = {}  # client port -> commands of its open MULTI block

    def watch(ready: threading.Event) -> None:
        with admin.monitor() as monitor:
            ready.set()
            while True:
                line = monitor.next_command()
                name = line["command"].split(" ", 1)[0].upper().strip('"')
                if name == "ECHO" and END_MARK in line["command"]:
                    return
                if line["client_type"] == "lua" or line["db"] != db:
                    continue
                port = line["client_port"]
                if name == "MULTI":
                    blocks[port] = []
                elif port in blocks and name != "EXEC":
                    blocks[port].append(name)
                elif name == "EXEC" and port in blocks:
                    found["MULTI " + " ".join(blocks.pop(port)) + " EXEC"] += 1
                else:
                    found[name] += 1

    ready = threading.Event()
    watcher = threading.Thread(target=watch, args=(ready,), daemon=True)
    watcher.start()
    ready.wait(10)
    try:
        run()
    finally:
        admin.echo(END_MARK)
        watcher.join(timeout=60)
    return found


def worker_round_trips(redis_url: str, consumer: Any, uris: list[str], n: int, stores: bool) -> dict[str, float]:
    """Round trips per job a consumer makes, less the producer's (measured alone) and the bench's polls."""
    base, db = consumer.redis_url.rsplit("/", 1)
    alone = f"{base}/4"
    prod = Producer(ProducerSettings(redis=RedisSettings(url=alone), queue=QueueSettings(max_depth=10**7)))
    sources = [uris[i % len(uris)] for i in range(n)]
    try:
        enqueue = round_trips(redis_url, 4, lambda: prod.submit_many(sources, tenant="producer"))
    finally:
        prod.close()
        redis.Redis.from_url(alone).flushdb()
    both = round_trips(redis_url, int(db), lambda: consumer.rate(uris, n, stores))
    both -= enqueue
    for poll in ("ZCARD", "LLEN", "HLEN"):
        both.pop(poll, None)
    return {k: v / n for k, v in both.items()}


def producer_commands(client: redis.Redis, redis_url: str, uris: list[str], n: int) -> Counter[str]:
    """Commands per job of the producer's enqueue alone (a database nobody consumes)."""
    prod = Producer(ProducerSettings(redis=RedisSettings(url=redis_url), queue=QueueSettings(max_depth=10**7)))
    try:
        before = command_counts(client)
        prod.submit_many([uris[i % len(uris)] for i in range(n)], tenant="producer")
        delta = command_counts(client) - before
    finally:
        prod.close()
        redis.Redis.from_url(redis_url).flushdb()
    return Counter({c: v / n for c, v in delta.items() if c != "info"})  # type: ignore[misc]


def describe(per: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05)
