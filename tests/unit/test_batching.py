"""Batch collation with a plain queue and a fake clock."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from worker.core.batching import BatchPolicy, chunked, collect_batch


def _filled(n: int) -> queue.Queue[int]:
    q: queue.Queue[int] = queue.Queue()
    for i in range(n):
        q.put(i)
    return q


def test_full_batch_closes_at_max_size_without_waiting() -> None:
    q = _filled(10)
    # A deadline an hour away: a batch that waited for it would hang (the per-test timeout catches that).
    assert collect_batch(q, BatchPolicy(max_size=4, max_wait_s=3600.0)) == [0, 1, 2, 3]
    assert q.qsize() == 6


def test_partial_batch_closes_at_deadline() -> None:
    q = _filled(3)
    started = time.monotonic()
    assert collect_batch(q, BatchPolicy(max_size=16, max_wait_s=0.05)) == [0, 1, 2]
    # Not before the deadline; a batch that ignored it would hang on the empty queue (per-test timeout).
    assert time.monotonic() - started >= 0.04


def test_idle_queue_returns_empty_after_idle_timeout() -> None:
    q: queue.Queue[int] = queue.Queue()
    assert collect_batch(q, BatchPolicy(), idle_timeout_s=0.01) == []


def test_late_items_join_the_open_batch() -> None:
    q: queue.Queue[int] = queue.Queue()
    q.put(0)

    def later() -> None:
        time.sleep(0.02)
        q.put(1)

    threading.Thread(target=later).start()
    assert collect_batch(q, BatchPolicy(max_size=2, max_wait_s=2.0)) == [0, 1]


def test_zero_wait_takes_only_what_is_there() -> None:
    q = _filled(2)
    assert collect_batch(q, BatchPolicy(max_size=8, max_wait_s=0.0)) == [0, 1]


@pytest.mark.parametrize(("size", "wait"), [(0, 0.1), (-1, 0.1), (4, -0.5)])
def test_bad_policies_are_refused(size: int, wait: float) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_size=size, max_wait_s=wait)


@pytest.mark.parametrize(("n", "size", "expected"), [(0, 3, []), (5, 2, [2, 2, 1]), (4, 4, [4]), (3, 10, [3])])
def test_chunks(n: int, size: int, expected: list[int]) -> None:
    parts = list(chunked(range(n), size))
    assert [len(p) for p in parts] == expected
    assert [x for p in parts for x in p] == list(range(n))
