"""Losing the Redis primary: Sentinel promotes the replica, and every part of fakesake follows it by itself.

One primary and one replica (AOF on both), three Sentinels, two workers and a steady producer, all real
processes on loopback ports; the primary is SIGKILLed with a few hundred jobs submitted and in flight.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.invariants import Figures, check
from tests.faults.rig import Rig
from tests.faults.test_infrastructure import submit_resilient
from tests.support.sentinel import sentinel_group
from tests.support.servers import http_server

#: Sentinel's failure detection and failover limits, short so the scenario fails over within seconds
#: (production keeps Sentinel's defaults or its own: see docs/RELIABILITY.md).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 6000


CONNECTED = "Connected to worker.stores.broker:SentinelTransport://"


def _reconnected_at(log_path: Path, after_wall: float) -> float | None:
    """Wall time of the worker's first broker (re)connection logged after ``after_wall`` (log times are local,
    millisecond precision: ``worker.service.logs.PLAIN_FORMAT``)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if CONNECTED in line:
            at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at > after_wall:
                return at
    return None


@pytest.fixture()
def sentinel_rig(checkpoint: Path, fault_images: list[bytes]) -> Iterator[Rig]:
    with (
        sentinel_group(
            replicas=1, sentinels=3, down_after_ms=DOWN_AFTER_MS, failover_timeout_ms=FAILOVER_TIMEOUT_MS
        ) as group,
        http_server() as http,
    ):
        rig = Rig(redis=group.servers[0], http=http, weights=checkpoint, images=fault_images, sentinel=group)
        try:
            yield rig
        finally:
            rig.close()


def test_primary_killed_sentinel_failover(sentinel_rig: Rig) -> None:
    """The primary is SIGKILLed mid-run: Sentinel promotes the replica; workers, producer, result store,
    limiter, ledger and the recorder's pub/sub reconnect to it; every accepted job ends with one result."""
    rig = sentinel_rig
    group = rig.sentinel
    assert group is not None
    old_primary = group.primary_port()
    assert old_primary == group.servers[0].port
    rig.start_workers(["w1", "w2"])
    sources = rig.http_sources(240, delay_s=0.05)
    t0 = time.monotonic()
    with rig.recorder() as rec:
        outage: dict[str, float] = {}

        def kill_primary() -> None:
            rec.wait_done(60, timeout_s=60)
            outage["kill"] = time.monotonic()
            outage["kill_wall"] = time.time()
            outage["unfinished_at_kill"] = len(rec.pending())  # accepted, queued or in a worker, no result yet
            group.server(old_primary).stop(kill=True)  # no shutdown, no last replication: a crash
            while time.monotonic() - outage["kill"] < 60:
                new = group.primary_port()
                if new is not None and new != old_primary:
                    outage["promoted"] = time.monotonic()
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_primary)
        killer.start()
        accepted, refusals = submit_resilient(rig, sources, chunk=20, every_s=0.3, on_ids=rec.track)
        killer.join(90)
        assert "promoted" in outage, "Sentinel never promoted the replica"
        assert rec.wait_all(90), rig.diagnose(rec.pending())
        # every consumer loop runs again (on the new primary), not just one of them
        resumed: set[str] = set()
        while len(resumed) < len(rig.workers) and time.monotonic() - outage["kill"] < 60:
            for name, worker in rig.workers.items():
                tick = worker.health().get("consumer_tick_at")
                if tick is not None and tick > outage["kill_wall"] + DOWN_AFTER_MS / 1000:
                    resumed.add(name)
            time.sleep(0.2)
        reconnected = [_reconnected_at(w.log_path, outage["kill_wall"]) for w in rig.workers.values()]
        figures = Figures(
            scenario="redis-primary-failover-sentinel",
            jobs=len(accepted),
            faults={"primary SIGKILL (Sentinel failover)": 1, "producer calls refused during the failover": refusals},
            recover_s=round(rec.first_result_after(outage["kill"]) - outage["kill"], 2),
            recover_what="primary killed -> first new result stored",
            wall_s=round(time.monotonic() - t0, 1),
            notes={
                "promoted_after_s": round(outage["promoted"] - outage["kill"], 2),
                "unfinished_jobs_at_kill": int(outage["unfinished_at_kill"]),
                "sentinel_down_after_ms": DOWN_AFTER_MS,
                # from each worker's log: Celery's "Connected to" after its reconnect to the new primary
                "all_brokers_reconnected_after_s": None
                if None in reconnected
                else round(max(r for r in reconnected if r is not None) - outage["kill_wall"], 2),
                "drain_after_kill_s": round(rec.last_result_at() - outage["kill"], 2),
                "recorder_disconnects": rec.disconnects,
                "deliveries_requeued_by_workers": rig.log_count("returning it to the queue"),
                "worker_restarts": 0,
            },
        )
        check(rec, rig.client, accepted, figures)
        assert group.primary_port() != old_primary  # the results above were read from the promoted replica
        assert resumed == set(rig.workers), f"consumer loops not running again: {set(rig.workers) - resumed}"
        assert None not in reconnected, "a worker never logged its reconnection to the broker"
        assert all(w.proc is not None and w.proc.poll() is None for w in rig.workers.values()), "a worker died"
        # reconnects went through the fixed transport (worker.stores.broker.sentinel_failover), never the stock one
        assert rig.log_count(CONNECTED) >= 2 * len(rig.workers)
        assert rig.log_count("Connected to sentinel://") == 0
