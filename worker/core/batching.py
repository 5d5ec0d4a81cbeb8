"""Batch collation: fill a batch until it is full or its deadline passes. Pure; tested with a plain queue.

The first item opens the batch and starts the clock; the batch closes at ``max_size`` items or when
``max_wait_s`` has passed since the first item arrived, whichever comes first. Waiting for the first
item is bounded separately by ``idle_timeout_s`` so the caller's loop can notice shutdown.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    """How big and how late a batch may be."""

    max_size: int = 16
    max_wait_s: float = 0.01

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("max_size must be >= 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")


def collect_batch(
    source: queue.Queue[T],
    policy: BatchPolicy,
    *,
    idle_timeout_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    closes: Callable[[T], bool] | None = None,
) -> list[T]:
    """Take up to ``policy.max_size`` items from ``source``; an empty list means idle for a while.

    An item for which ``closes(item)`` is true ends the batch at once (it is included, last): a caller that
    knows no more input is coming (a scan at the end of its window) flushes instead of waiting out the deadline.
    """
    try:
        first = source.get(timeout=idle_timeout_s)
    except queue.Empty:
        return []
    batch = [first]
    deadline = clock() + policy.max_wait_s
    while len(batch) < policy.max_size and not (closes is not None and closes(batch[-1])):
        # Drain whatever is already there without sleeping; only then wait for the rest of the deadline.
        try:
            batch.append(source.get_nowait())
            continue
        except queue.Empty:
            pass
        remaining = deadline - clock()
        if remaining <= 0:
            break
        try:
            batch.append(source.get(timeout=remaining))
        except queue.Empty:
            break
    return batch


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items, taken lazily from ``items``."""
    if size < 1:
        raise ValueError("size must be >= 1")
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
