"""Worker processes that die: kill -9 mid-batch, a poison job that kills its worker, SIGTERM mid-batch."""

from __future__ import annotations

import os
import signal
import time
from http.server import BaseHTTPRequestHandler

from producers.contract import Keys
from tests.faults.invariants import Figures, ResultRecorder, check
from tests.faults.procs import owner_of_peer
from tests.faults.rig import BOTH_INTAKES, Feeder, Rig, Supervisor
from tests.support.servers import Route


def open_deliveries(rig: Rig) -> set[str]:
    """Jobs some worker has begun and not finished (their delivery count is open)."""
    prefix = Keys.deliveries("")
    return {k.decode()[len(prefix) :] for k in rig.client.scan_iter(match=prefix + "*", count=1000)}


def wait_in_flight(rig: Rig, rec: ResultRecorder, timeout_s: float = 10.0) -> set[str]:
    """Jobs begun and not finished, polled until there are some (fast workers drain a chunk between two
    of the feeder's)."""
    deadline = time.monotonic() + timeout_s
    while not (in_flight := open_deliveries(rig) - set(rec.first)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert in_flight, "nothing in flight to lose"
    return in_flight


@BOTH_INTAKES
def test_kill_9_mid_batch_repeatedly(rig: Rig) -> None:
    """Three SIGKILLs of alternating workers while jobs flow; each killed worker is restarted."""
    kills = 3
    # a job caught in every kill is delivered kills + 1 times: keep it below the poison threshold
    rig.start_workers(["w1", "w2"], FAKESAKE_RETRY__MAX_DELIVERIES=str(kills + 2))
    sources = rig.http_sources(300, delay_s=0.1)
    t0 = time.monotonic()
    recoveries: list[tuple[float, set[str]]] = []
    caught: list[int] = []
    with rig.recorder() as rec:
        feeder = Feeder(rig.producer(), rec, sources, chunk=20, every_s=0.6).start()
        for k in range(kills):
            victim = rig.workers[f"w{k % 2 + 1}"]
            victim.wait_ready(120)
            rec.wait_done(rec.done() + 20, timeout_s=60)  # the victim is consuming, batches are in flight
            in_flight = wait_in_flight(rig, rec)
            t_kill = time.monotonic()
            victim.kill()
            rig.start_worker(victim.name, wait=False)
            caught.append(len(in_flight))
            recoveries.append((t_kill, in_flight))
        accepted = feeder.join()
        rig.settle(rec, 90)
        times = [rec.last_result_at(ids) - t for t, ids in recoveries]
        figures = Figures(
            scenario=rig.scenario("kill-9"),
            jobs=len(accepted),
            faults={"sigkill": kills},
            recover_s=round(max(times), 2),
            recover_what="SIGKILL -> last job that was in flight at the kill has its result (max of 3)",
            wall_s=round(time.monotonic() - t0, 1),
            notes={
                "in_flight_at_each_kill": caught,
                "recover_each_s": [round(t, 2) for t in times],
                **ledger_notes(rig, rec, t0),
            },
        )
        check(rec, rig.client, accepted, figures)  # no loss tolerated: the ledger re-queues what kombu lost


LEDGER_LOG = "re-queued by the ledger"


def ledger_notes(rig: Rig, rec: ResultRecorder, t0: float) -> dict[str, float | int]:
    """Jobs the ledger sweeper pushed again (messages lost in transit: popped by BRPOP into a worker that was
    then SIGKILLed before kombu recorded them as unacked, docs/RELIABILITY.md) and when the last result came."""
    return {"requeued_by_ledger": rig.log_count(LEDGER_LOG), "last_result_s": round(rec.last_result_at() - t0, 1)}


def poison_route(rig: Rig, worker_names: list[str]) -> tuple[Route, list[int]]:
    """A URL whose fetch kills the worker process fetching it (SIGKILL to the owner of the client socket).

    The crash is real and happens inside the job, with no hook in production code: from the worker's
    point of view its process died while that job was being processed.
    """
    deaths: list[int] = []

    def handler(request: BaseHTTPRequestHandler) -> None:
        pids = [rig.workers[n].pid for n in worker_names if rig.workers[n].alive()]
        pid = owner_of_peer(int(request.client_address[1]), pids)
        if pid is None:
            request.send_error(500, "poison: fetching process not found")
            return
        deaths.append(pid)
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # the connection dies with the process; nothing to answer

    return Route(handler=handler), deaths


@BOTH_INTAKES
def test_poison_job_is_dead_lettered(rig: Rig) -> None:
    """A job that kills its worker on every delivery is dead-lettered after max_deliveries; others finish."""
    max_deliveries = 3
    names = ["w1", "w2"]
    rig.start_workers(names, FAKESAKE_RETRY__MAX_DELIVERIES=str(max_deliveries))
    route, deaths = poison_route(rig, names)
    poison_url = rig.http.add("/poison.jpg", route)
    sources = rig.http_sources(150, delay_s=0.1)
    t0 = time.monotonic()
    with rig.recorder() as rec, Supervisor(rig, names).running() as supervisor:
        producer = rig.producer()
        feeder = Feeder(producer, rec, sources, chunk=10, every_s=1.0).start()
        time.sleep(1.0)
        poison_id = producer.submit(poison_url)
        rec.track([poison_id])
        accepted = [*feeder.join(), poison_id]
        rig.settle(rec, 120)
        time.sleep(1.0)  # a further delivery of the dead-lettered job would show up as another death
        figures = Figures(
            scenario=rig.scenario("poison"),
            jobs=len(accepted),
            faults={"worker deaths caused by the poison job": len(deaths)},
            recover_s=round(rec.first_at[poison_id] - t0 - 1.0, 2),
            recover_what="poison job submitted -> its final 'poison' error is stored (dead-lettered)",
            wall_s=round(time.monotonic() - t0, 1),
            notes={"restarts": supervisor.restarts, "max_deliveries": max_deliveries, **ledger_notes(rig, rec, t0)},
        )
        check(
            rec,
            rig.client,
            accepted,
            figures,
            expected_errors={poison_id: "poison"},
            expected_dlq={poison_id},
        )
    assert len(deaths) == max_deliveries, f"poison job killed a worker {len(deaths)} times"
    assert rig.http.hits["/poison.jpg"] == max_deliveries


@BOTH_INTAKES
def test_sigterm_mid_batch(rig: Rig) -> None:
    """Warm shutdown with jobs in flight: they finish or go back to the queue at once (no visibility wait)."""
    worker = rig.start_worker("w1", concurrency=8)
    sources = rig.http_sources(120, delay_s=0.25)
    t0 = time.monotonic()
    with rig.recorder() as rec:
        accepted = rig.producer().submit_many(sources)
        rec.track(accepted)
        rec.wait_done(24, timeout_s=60)
        in_flight = open_deliveries(rig) - set(rec.first)
        reserved = rig.client.hlen("unacked")
        assert in_flight, "nothing in flight"
        t_term = time.monotonic()
        code = worker.terminate(timeout_s=60)
        shutdown_s = time.monotonic() - t_term
        time.sleep(0.5)  # the recorder's next sweep
        finished = in_flight & set(rec.first)
        assert code == 0, worker.tail()
        # everything the worker held and did not finish is back on the queue, not parked until the
        # visibility timeout: kombu restores unacked messages on a warm shutdown
        assert rig.client.hlen("unacked") == 0
        assert not (open_deliveries(rig) - set(rec.first)), "a job left with an open delivery count"
        t_restart = time.monotonic()
        rig.start_worker("w2", concurrency=8)
        assert rec.wait_all(60), rig.diagnose(rec.pending())
        figures = Figures(
            scenario=rig.scenario("sigterm"),
            jobs=len(accepted),
            faults={"sigterm": 1},
            recover_s=round(rec.last_result_at() - t_restart, 2),
            recover_what="replacement worker started -> all jobs done (includes its ~6 s model load)",
            wall_s=round(time.monotonic() - t0, 1),
            notes={
                "in_flight_at_sigterm": len(in_flight),
                "finished_during_shutdown": len(finished),
                "returned_to_queue": len(in_flight - finished),
                "reserved_messages_at_sigterm": reserved,
                "shutdown_s": round(shutdown_s, 2),
            },
        )
        check(rec, rig.client, accepted, figures)
