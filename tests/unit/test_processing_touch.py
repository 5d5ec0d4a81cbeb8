"""The received-job ledger touch runs off Celery's consumer thread (worker.service.runtime.DeferredToucher)."""

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
