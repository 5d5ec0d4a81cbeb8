"""Overload: producers offer far more than the workers absorb. Backpressure refuses the excess at the
queue cap, worker memory stays flat, and every accepted job is processed."""

from __future__ import annotations

import threading
import time

from producers.client import QueueFullError
from tests.faults.invariants import Figures, check
from tests.faults.rig import Rig


def test_overload_backpressure(rig: Rig) -> None:
    max_depth = 40
    worker = rig.start_worker("w1", concurrency=8)
    sources = rig.http_sources(2000)
    producer = rig.producer(max_depth=max_depth)
    rss: list[int] = [worker.rss_bytes()]  # idle, model loaded
    warm: list[int] = []  # after the first seconds of load: torch's allocator has grown to its working set
    depths: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss.append(worker.rss_bytes())
            if len(rss) == 20:
                warm.append(rss[-1])
            depths.append(sum(producer.queue_depths().values()))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    offer_s, chunk, every_s = 6.0, 10, 0.04  # offers ~250 jobs/s
    accepted: list[str] = []
    refused = offered = 0
    with rig.recorder() as rec:
        sampler.start()
        t0 = time.monotonic()
        pos = 0
        while time.monotonic() - t0 < offer_s and pos < len(sources):
            batch = sources[pos : pos + chunk]
            pos += chunk
            offered += len(batch)
            try:
                ids = producer.submit_many(batch)
            except QueueFullError as exc:
                ids = list(exc.accepted.values())
                refused += len(batch) - len(ids)
            accepted.extend(ids)
            rec.track(ids)
            time.sleep(every_s)
        offer_elapsed = time.monotonic() - t0
        absorbed = rec.done()
        assert rec.wait_all(60), rig.diagnose(rec.pending())
        stop.set()
        sampler.join(5)
        drain_s = rec.last_result_at() - (t0 + offer_elapsed)
        figures = Figures(
            scenario="overload",
            jobs=len(accepted),
            faults={"jobs offered": offered, "refused with queue-full": refused},
            recover_s=round(drain_s, 2),
            recover_what="offering stops -> queue drained, all accepted jobs done",
            wall_s=round(time.monotonic() - t0, 1),
            notes={
                "offered_per_s": round(offered / offer_elapsed, 1),
                "absorbed_per_s": round(absorbed / offer_elapsed, 1),
                "max_queue_depth": max(depths),
                "queue_max_depth": max_depth,
                "rss_start_mb": round(rss[0] / 2**20),
                "rss_max_mb": round(max(rss) / 2**20),
                "rss_after_warmup_mb": round(warm[0] / 2**20),
                "rss_growth_after_warmup_mb": round((max(rss) - warm[0]) / 2**20),
            },
        )
        check(rec, rig.client, accepted, figures)
    assert offered >= 2 * absorbed, "not an overload: the worker kept up"
    assert refused > 0 and max(depths) <= max_depth
    # bounded: once warm, the worker's memory does not follow the offered load
    # Measured growth after warm-up over 1300 offered jobs: +17, +82 and +128 MB in three runs (glibc arenas of the
    # 36 job threads fill in steps). The bound checks that memory does not follow the offered load (6x what is
    # accepted), not a tight figure.
    assert max(rss) - warm[0] < 256 * 2**20, f"worker RSS grew by {(max(rss) - warm[0]) / 2**20:.0f} MB"
