"""Worker-process helpers around the job path: the received-job ledger touch off the consumer thread
(worker.service.runtime.DeferredToucher) and the bound on concurrent preparation (BoundedPreparer)."""

from __future__ import annotations

import threading

from worker.service.runtime import DeferredToucher


def test_touches_run_on_their_own_thread_in_order_and_stop_drains_them() -> None:
    seen: list[tuple[str, str]] = []
    release = threading.Event()

    def touch(job_ids: list[str]) -> None:
        release.wait(5)
        seen.extend((job_id, threading.current_thread().name) for job_id in job_ids)

    toucher = DeferredToucher(touch).start()
    for job_id in ("a", "b", "c"):
        toucher(job_id)  # returns at once although the touch itself is blocked
    assert seen == []
    release.set()
    toucher.stop()
    assert seen == [("a", "fakesake-touch"), ("b", "fakesake-touch"), ("c", "fakesake-touch")]


def test_ids_queued_while_a_touch_runs_go_together_in_the_next_one() -> None:
    calls: list[list[str]] = []
    first_running, release = threading.Event(), threading.Event()

    def touch(job_ids: list[str]) -> None:
        calls.append(list(job_ids))
        first_running.set()
        release.wait(5)

    toucher = DeferredToucher(touch, max_batch=3).start()
    toucher("a")
    assert first_running.wait(5)
    for job_id in ("b", "c", "d", "e"):
        toucher(job_id)
    release.set()
    toucher.stop()
    assert calls == [["a"], ["b", "c", "d"], ["e"]]  # one round trip per batch, at most max_batch ids each


def test_a_failing_touch_does_not_stop_the_next_ones() -> None:
    seen: list[str] = []

    def touch(job_ids: list[str]) -> None:
        if "bad" in job_ids:
            raise ConnectionError("redis is down")
        seen.extend(job_ids)

    toucher = DeferredToucher(touch, max_batch=1).start()
    toucher("bad")
    toucher("good")
    toucher.stop()
    assert seen == ["good"]


def test_with_a_linger_ids_arriving_one_by_one_share_a_touch() -> None:
    calls: list[list[str]] = []
    toucher = DeferredToucher(calls.append, linger_s=0.5).start()
    for job_id in ("a", "b", "c"):
        toucher(job_id)
        threading.Event().wait(0.01)  # a trickle: each id arrives after the thread has taken the previous one
    toucher.stop()
    assert calls == [["a", "b", "c"]]


def test_the_bounded_preparer_lets_limit_jobs_prepare_at_once_and_frees_a_failed_jobs_slot() -> None:
    import time

    from worker.service.runtime import BoundedPreparer

    inside, peak, lock, gate = 0, 0, threading.Lock(), threading.Event()

    class Held:
        def prepare(self, source: str, version: str | None = None, *, tenant: str | None = None) -> object:
            nonlocal inside, peak
            with lock:
                inside += 1
                peak = max(peak, inside)
            gate.wait(5)
            with lock:
                inside -= 1
            if source == "bad":
                raise ValueError("undecodable")
            return source

    bounded = BoundedPreparer(Held(), 2)  # type: ignore[arg-type]
    failures: list[str] = []

    def run(source: str) -> None:
        try:
            bounded.prepare(source)
        except ValueError:
            failures.append(source)

    threads = [threading.Thread(target=run, args=("bad" if i % 3 == 0 else f"ok{i}",)) for i in range(9)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while inside < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # room for a third to get in, if the bound let it
    assert inside == 2 and peak == 2
    gate.set()
    for t in threads:
        t.join(10)
    assert peak == 2 and len(failures) == 3 and inside == 0
    assert bounded.prepare("again") == "again"  # every slot came back, failed ones included
