"""The received-job ledger touch runs off Celery's consumer thread (worker.service.runtime.DeferredToucher)."""

from __future__ import annotations

import threading

from worker.service.runtime import DeferredToucher


def test_touches_run_on_their_own_thread_in_order_and_stop_drains_them() -> None:
    seen: list[tuple[str, str]] = []
    release = threading.Event()

    def touch(job_id: str) -> None:
        release.wait(5)
        seen.append((job_id, threading.current_thread().name))

    toucher = DeferredToucher(touch).start()
    for job_id in ("a", "b", "c"):
        toucher(job_id)  # returns at once although the touch itself is blocked
    assert seen == []
    release.set()
    toucher.stop()
    assert seen == [("a", "fakesake-touch"), ("b", "fakesake-touch"), ("c", "fakesake-touch")]


def test_a_failing_touch_does_not_stop_the_next_ones() -> None:
    seen: list[str] = []

    def touch(job_id: str) -> None:
        if job_id == "bad":
            raise ConnectionError("redis is down")
        seen.append(job_id)

    toucher = DeferredToucher(touch).start()
    toucher("bad")
    toucher("good")
    toucher.stop()
    assert seen == ["good"]
