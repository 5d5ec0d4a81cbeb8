"""A suspected poison job's last delivery runs alone in its process, so it cannot take batch-mates down."""

from __future__ import annotations

import threading
import time

from producers.contract import JobMessage
from tests.unit.test_processing import MemoryCounters, ScriptedPreparer, make
from worker.core.processing import Finished, IsolationGate, RetryPolicy

RETRY = RetryPolicy(max_attempts=3, backoff_base_s=1, backoff_max_s=8, max_deliveries=3)


def test_exclusive_waits_for_shared_holders_and_keeps_new_ones_out() -> None:
    gate = IsolationGate()
    events: list[str] = []
    release_first = threading.Event()

    def first() -> None:
        with gate.shared():
            events.append("first in")
            release_first.wait(5)
        events.append("first out")

    def alone() -> None:
        with gate.exclusive():
            events.append("alone in")
            time.sleep(0.05)
            events.append("alone out")

    def late() -> None:
        with gate.shared():
            events.append("late in")

    threads = [threading.Thread(target=first)]
    threads[0].start()
    while "first in" not in events:
        time.sleep(0.001)
    threads.append(threading.Thread(target=alone))
    threads[1].start()
    time.sleep(0.05)  # the exclusive side is now waiting
    threads.append(threading.Thread(target=late))
    threads[2].start()
    time.sleep(0.05)
    assert events == ["first in"]  # neither the exclusive one nor a newcomer got in
    release_first.set()
    for t in threads:
        t.join(5)
    assert events == ["first in", "first out", "alone in", "alone out", "late in"]


class HeldPreparer(ScriptedPreparer):
    """Records which jobs were being prepared at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.running: set[str] = set()
        self.overlaps: list[tuple[str, set[str]]] = []
        self.lock = threading.Lock()

    def prepare(  # type: ignore[no-untyped-def]
        self, source: str, version: str | None = None, *, tenant: str | None = None
    ):
        with self.lock:
            self.overlaps.append((source, set(self.running)))
            self.running.add(source)
        time.sleep(0.05)
        with self.lock:
            self.running.discard(source)
        return super().prepare(source, version)


def run_together(counters: MemoryCounters, jobs: list[JobMessage]) -> tuple[HeldPreparer, list[object]]:
    preparer = HeldPreparer()
    proc, _, _ = make(preparer, counters=counters, retry=RETRY)
    decisions: list[object] = []
    threads = [threading.Thread(target=lambda j=j: decisions.append(proc.process(j))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    return preparer, decisions


def test_last_chance_delivery_runs_alone() -> None:
    suspect = JobMessage(tenant="acme", source="https://img.example/suspect.jpg")
    others = [JobMessage(tenant="acme", source=f"https://img.example/{i}.jpg") for i in range(4)]
    counters = MemoryCounters()
    counters.open[suspect.job_id] = RETRY.max_deliveries - 1  # two earlier deliveries died
    preparer, decisions = run_together(counters, [*others[:2], suspect, *others[2:]])
    assert len(decisions) == 5 and all(isinstance(d, Finished) and d.result.ok for d in decisions)
    for source, alongside in preparer.overlaps:
        if source == suspect.source:
            assert alongside == set()
        else:
            assert suspect.source not in alongside
    assert any(alongside for _, alongside in preparer.overlaps), "ordinary jobs should still overlap"


def test_a_job_caught_in_one_crash_still_shares_its_process() -> None:
    once = JobMessage(tenant="acme", source="https://img.example/once.jpg")
    other = JobMessage(tenant="acme", source="https://img.example/other.jpg")
    counters = MemoryCounters()
    counters.open[once.job_id] = 1
    preparer, _ = run_together(counters, [other, once])
    assert any(alongside for _, alongside in preparer.overlaps)


def test_waiting_for_the_gate_does_not_count_a_delivery() -> None:
    job = JobMessage(tenant="acme", source="https://img.example/suspect.jpg")
    counters = MemoryCounters()
    counters.open[job.job_id] = RETRY.max_deliveries - 1
    proc, _, _ = make(counters=counters, retry=RETRY)
    with proc.isolation.shared():  # another job is running: the suspect must wait, uncounted
        worker = threading.Thread(target=proc.process, args=(job,))
        worker.start()
        time.sleep(0.05)
        assert counters.open[job.job_id] == RETRY.max_deliveries - 1
    worker.join(5)
    assert job.job_id not in counters.open  # ran, finished, delivery closed
