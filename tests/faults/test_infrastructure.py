"""The parts around the workers fail: Redis restarts, the result store stalls, S3 and HTTP sources flake."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from producers.contract import JobResult
from producers.errors import TransientError
from tests.faults.invariants import Figures, check, untraced
from tests.faults.rig import BOTH_INTAKES, Rig
from tests.support.faultproxy import fault_proxy
from tests.support.servers import S3Server


def submit_resilient(
    rig: Rig, sources: list[str], chunk: int, every_s: float, on_ids: Callable[[list[str]], None]
) -> tuple[list[str], int]:
    """A producer that keeps going through a Redis outage: on ``unavailable`` it waits and resubmits the
    same chunk. Idempotency keys make the resubmission safe if the first try did reach Redis."""
    producer = rig.producer()
    accepted: list[str] = []
    refusals = 0
    for start in range(0, len(sources), chunk):
        part = sources[start : start + chunk]
        items = [{"source": s, "idempotency_key": f"k{start + i}"} for i, s in enumerate(part)]
        while True:
            try:
                ids = producer.submit_many(items)
                break
            except TransientError:
                refusals += 1
                time.sleep(0.2)
        accepted.extend(ids)
        on_ids(ids)
        time.sleep(every_s)
    return accepted, refusals


# Before worker/stores/broker.py, about one run in five failed here: kombu's Redis channel raised AttributeError
# while Celery closed the dead connection, Celery called it an "Unrecoverable error" and the workers stopped
# consuming for good (lane and unacked hash kept their jobs). The check on each worker's consumer loop below
# is what would catch that again; tests/integration/test_broker_transport.py reproduces the defect itself.
@BOTH_INTAKES
def test_redis_restart_with_aof(rig: Rig) -> None:
    """Redis is SIGKILLed mid-run and restarted from its AOF: workers and producers reconnect, nothing lost."""
    rig.start_workers(["w1", "w2"])
    sources = rig.http_sources(240, delay_s=0.05)
    t0 = time.monotonic()
    with rig.recorder() as rec:
        outage: dict[str, float] = {}

        def crash_redis() -> None:
            rec.wait_done(60, timeout_s=60)
            outage["down"] = time.monotonic()
            rig.redis.stop(kill=True)  # a crash: no shutdown save, only what the AOF already has
            time.sleep(2.0)
            rig.redis.start()
            outage["up"] = time.monotonic()
            outage["up_wall"] = time.time()

        crasher = threading.Thread(target=crash_redis)
        crasher.start()
        accepted, refusals = submit_resilient(rig, sources, chunk=20, every_s=0.4, on_ids=rec.track)
        crasher.join(90)
        assert "up" in outage
        assert rec.wait_all(90), rig.diagnose(rec.pending())
        # readiness follows the heartbeat's Redis ping (every metrics.heartbeat_interval_s), so it lags
        ready_at = None
        while ready_at is None and time.monotonic() - outage["up"] < 30:
            if all(w.ready() for w in rig.workers.values()):
                ready_at = time.monotonic()
            time.sleep(0.2)
        ready = ready_at is not None
        figures = Figures(
            scenario=rig.scenario("redis-restart-aof"),
            jobs=len(accepted),
            faults={"redis SIGKILL + restart": 1, "producer calls refused during the outage": refusals},
            recover_s=round(rec.first_result_after(outage["up"]) - outage["up"], 2),
            recover_what="Redis back up -> first new result stored",
            wall_s=round(time.monotonic() - t0, 1),
            notes={
                "outage_s": round(outage["up"] - outage["down"], 2),
                "drain_after_restart_s": round(rec.last_result_at() - outage["up"], 2),
                "workers_ready_again_s": round(ready_at - outage["up"], 2) if ready_at else None,
                "results_missed_by_notifications": len(accepted) - sum(1 for j in accepted if rec.announced[j]),
                "deliveries_requeued_by_workers": rig.log_count("returning it to the queue"),
            },
        )
        check(rec, rig.client, accepted, figures)
        assert ready
        # Every consumer loop runs again, not just one of them: each ticks (every heartbeat interval, and at once
        # when it reconnects, which can be within the same millisecond as the restart) after Redis is back.
        for name, worker in rig.workers.items():
            deadline, tick = time.monotonic() + 15, None
            while time.monotonic() < deadline:
                tick = worker.health().get("consumer_tick_at")
                if tick is not None and tick > outage["up_wall"]:
                    break
                time.sleep(0.2)
            assert tick is not None and tick > outage["up_wall"], f"{name}: consumer loop stopped at {tick}"


def test_redis_restart_without_persistence_loses_queued_jobs(rig: Rig) -> None:
    """What is NOT guaranteed: a Redis without AOF forgets its queues on restart (documents the limit)."""
    rig.redis.stop()
    rig.redis.appendonly = False
    rig.redis.start()
    sources = rig.http_sources(60)
    accepted = rig.producer().submit_many(sources)  # no worker yet: all 60 wait in the lane
    assert rig.client.llen("fakesake.interactive") == len(accepted)
    rig.redis.stop(kill=True)
    rig.redis.start()
    rig.client.connection_pool.disconnect()
    gone = untraced(rig.client, "faults", accepted)  # queued messages, idempotency keys: all gone
    Figures(
        scenario="redis-restart-no-persistence",
        jobs=len(accepted),
        faults={"redis SIGKILL + restart without AOF": 1},
        lost=len(gone),
        recover_what="not recoverable: the queued jobs are gone",
    ).publish()
    assert len(gone) == len(accepted) and rig.client.dbsize() == 0


@BOTH_INTAKES
def test_result_store_unavailable_while_finishing(rig: Rig) -> None:
    """Writes stall (CLIENT PAUSE WRITE) longer than the workers' Redis timeout while batches finish:
    the jobs whose results could not be stored are not acked; they come back and finish."""
    rig.start_workers(["w1", "w2"], FAKESAKE_REDIS__SOCKET_TIMEOUT_S="1")
    sources = rig.http_sources(200, delay_s=0.05)
    t0 = time.monotonic()
    with rig.recorder() as rec:
        accepted = rig.producer().submit_many(sources)
        rec.track(accepted)
        rec.wait_done(50, timeout_s=60)
        pauses = 2
        for _ in range(pauses):
            t_pause = time.monotonic()
            rig.client.execute_command("CLIENT", "PAUSE", 3000, "WRITE")  # type: ignore[no-untyped-call]
            time.sleep(3.2)
            rec.wait_done(rec.done() + 30, timeout_s=60)
        assert rec.wait_all(90), rig.diagnose(rec.pending())
        requeued = rig.log_count("returning it to the queue")
        figures = Figures(
            scenario=rig.scenario("result-store-unavailable"),
            jobs=len(accepted),
            faults={"3 s write pauses": pauses, "result/counter writes that failed (job requeued)": requeued},
            recover_s=round(rec.first_result_after(t_pause + 3.0) - (t_pause + 3.0), 2),
            recover_what="write pause ends -> first new result stored",
            wall_s=round(time.monotonic() - t0, 1),
        )
        check(rec, rig.client, accepted, figures)
    assert requeued > 0, "the pause never hit a result write: the scenario tested nothing"


def test_transient_s3_and_http_faults(rig: Rig, s3_srv: S3Server) -> None:
    """20% of S3 and HTTP reads fail (503/SlowDown, reset, timeout) through a proxy: all jobs succeed."""
    bucket = "faults"
    s3 = s3_srv.client()  # type: ignore[no-untyped-call]
    s3.create_bucket(Bucket=bucket)
    n = 100
    for i in range(n):
        s3.put_object(Bucket=bucket, Key=f"img/{i}.jpg", Body=rig.images[i % len(rig.images)])
    with (
        fault_proxy(s3_srv.endpoint_url, rate=0.2, seed=1, s3=True, stall_s=1.5) as s3_proxy,
        fault_proxy(rig.http.url(""), rate=0.2, seed=2, stall_s=1.5) as http_proxy,
    ):
        rig.s3_endpoint = s3_proxy.url
        rig.extra_ports = (http_proxy.port,)
        rig.start_workers(["w1"], FAKESAKE_FETCH__READ_TIMEOUT_S="1", FAKESAKE_FETCH__CONNECT_TIMEOUT_S="1")
        urls = [u.replace(f":{rig.http.port}/", f":{http_proxy.port}/") for u in rig.http_sources(n)]
        s3_sources = [f"s3://{bucket}/img/{i}.jpg" for i in range(n)]
        t0 = time.monotonic()
        with rig.recorder() as rec:
            accepted = rig.producer().submit_many([*s3_sources, *urls])
            rec.track(accepted)
            assert rec.wait_all(120), rig.diagnose(rec.pending())
            results = {j: JobResult.model_validate_json(rec.first[j]) for j in accepted}
            # HTTP fetches are not retried inside the fetcher: each failed read is one failed job attempt
            http_attempts = []
            for job_id, url in zip(accepted[n:], urls, strict=True):
                outcomes = http_proxy.per_path(url.split(f":{http_proxy.port}", 1)[1])
                assert outcomes[-1] == "ok" and results[job_id].attempts == len(outcomes), (url, outcomes)
                http_attempts.append(len(outcomes))
            s3_faults, http_faults = s3_proxy.counts(), http_proxy.counts()
            job_retries = {
                "s3": sum(results[j].attempts - 1 for j in accepted[:n]),
                "http": sum(a - 1 for a in http_attempts),
            }
            figures = Figures(
                scenario="s3-http-faults",
                jobs=len(accepted),
                faults={f"s3 {k}": v for k, v in s3_faults.items() if k != "ok"}
                | {f"http {k}": v for k, v in http_faults.items() if k != "ok"},
                recover_what="n/a (faults absorbed by retries)",
                wall_s=round(time.monotonic() - t0, 1),
                notes={
                    "s3_requests": sum(s3_faults.values()),
                    "http_requests": sum(http_faults.values()),
                    "job_level_retries": job_retries,
                    "s3_retries_absorbed_by_boto3": sum(s3_faults.values()) - s3_faults["ok"] - job_retries["s3"],
                    "max_attempts_of_one_job": max(r.attempts for r in results.values()),
                },
            )
            check(rec, rig.client, accepted, figures)
        fault_total = sum(v for k, v in (s3_faults + http_faults).items() if k != "ok")
        read_total = sum((s3_faults + http_faults).values())
        assert 0.1 < fault_total / read_total < 0.3, (s3_faults, http_faults)
        assert all(s3_faults[f] and http_faults[f] for f in ("503", "reset", "timeout"))
