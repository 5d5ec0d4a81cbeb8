"""The inference loop batches concurrent submissions and isolates a failing batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy


def test_concurrent_submissions_are_batched_and_each_gets_its_score() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def predict(batch: Sequence[Any]) -> list[float]:
        gate.wait(5)
        sizes.append(len(batch))
        return [float(x) / 100 for x in batch]

    loop = Batcher(predict, BatchPolicy(max_size=8, max_wait_s=0.05)).start()
    futures = [loop.submit(i) for i in range(20)]
    gate.set()
    assert [f.result(timeout=5) for f in futures] == [i / 100 for i in range(20)]
    assert sum(sizes) == 20 and max(sizes) <= 8 and len(sizes) < 20
    loop.stop()


def test_a_failing_batch_fails_only_its_own_futures() -> None:
    calls = 0

    def predict(batch: Sequence[Any]) -> list[float]:
        nonlocal calls
        calls += 1
        if "bad" in batch:
            raise RuntimeError("boom")
        return [0.5] * len(batch)

    loop = Batcher(predict, BatchPolicy(max_size=1, max_wait_s=0)).start()
    bad, good = loop.submit("bad"), loop.submit("good")
    with pytest.raises(RuntimeError):
        bad.result(timeout=5)
    assert good.result(timeout=5) == 0.5
    loop.stop()


def test_wrong_number_of_scores_is_an_error_not_a_misalignment() -> None:
    loop = Batcher(lambda b: [0.1], BatchPolicy(max_size=2, max_wait_s=0.2)).start()
    a, b = loop.submit(1), loop.submit(2)
    with pytest.raises(ValueError, match="2 inputs"):
        a.result(timeout=5)
    with pytest.raises(ValueError):
        b.result(timeout=5)
    loop.stop()


def test_observer_sees_each_batch_and_stop_refuses_new_work() -> None:
    seen: list[int] = []
    loop = Batcher(
        lambda b: [0.0] * len(b),
        BatchPolicy(max_size=4, max_wait_s=0.01),
        observer=lambda n, wait, took: seen.append(n),
    ).start()
    assert loop.submit(1).result(timeout=5) == 0.0
    loop.stop()
    assert seen == [1]
    with pytest.raises(Exception, match="shutting down"):
        loop.submit(2)


def test_nan_or_out_of_range_scores_fail_the_batch() -> None:
    for bad in ([float("nan")], [1.5], [-0.1]):
        loop = Batcher(lambda b, bad=bad: bad, BatchPolicy(max_size=1, max_wait_s=0)).start()  # type: ignore[misc]
        with pytest.raises(ValueError, match="outside"):
            loop.submit(1).result(timeout=5)
        loop.stop()


def test_flush_closes_the_batch_before_its_deadline() -> None:
    sizes: list[int] = []
    loop = Batcher(lambda b: sizes.append(len(b)) or [0.5] * len(b), BatchPolicy(max_size=8, max_wait_s=60)).start()
    futures = [loop.submit(i) for i in range(3)]
    loop.flush()
    assert [f.result(timeout=5) for f in futures] == [0.5] * 3  # not 60 s: the flush closed the batch
    assert sizes == [3]
    loop.stop()
