"""One inference thread that forms batches from many concurrent jobs.

Celery runs each job in its own pool thread (fetch, decode and preprocess are I/O- or GIL-free work); each job
hands its preprocessed tensor to :meth:`InferenceLoop.submit` and waits on a future. The single loop thread
collects a batch by size or deadline (:func:`worker.batching.collect_batch`) and runs the model once per batch,
so throughput comes from batching while Celery keeps its own per-job ack/retry semantics.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from producers.errors import ErrorCode, TransientError
from worker.batching import BatchPolicy, collect_batch

log = logging.getLogger(__name__)


@dataclass
class _Item:
    tensor: Any
    future: Future[float]
    enqueued: float


BatchObserver = Callable[[int, float, float], None]
"""Called after each batch with (size, oldest queue wait s, inference s); for metrics."""


class InferenceLoop:
    """Batches submitted inputs for ``predict`` on one background thread."""

    def __init__(
        self,
        predict: Callable[[Sequence[Any]], list[float]],
        policy: BatchPolicy,
        *,
        max_queue: int = 1024,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._predict = predict
        self._policy = policy
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max_queue)
        self._observer = observer
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fakesake-inference", daemon=True)
        self.batches = 0

    def start(self) -> InferenceLoop:
        self._thread.start()
        return self

    def submit(self, tensor: Any) -> Future[float]:
        """Queue one input; the future resolves to its P(AI) or raises the batch's error."""
        if self._stop.is_set():
            raise TransientError(ErrorCode.UNAVAILABLE, "worker is shutting down")
        future: Future[float] = Future()
        try:
            self._queue.put(_Item(tensor, future, self._clock()), timeout=30)
        except queue.Full:
            raise TransientError(ErrorCode.UNAVAILABLE, "inference queue is full") from None
        return future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            batch = collect_batch(self._queue, self._policy, idle_timeout_s=0.2, clock=self._clock)
            if not batch:
                if self._stop.is_set():
                    return
                continue
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Item]) -> None:
        started = self._clock()
        try:
            scores = self._predict([item.tensor for item in batch])
            if len(scores) != len(batch):
                raise RuntimeError(f"classifier returned {len(scores)} scores for {len(batch)} inputs")
        except Exception as exc:  # one failed forward fails only this batch's futures
            log.exception("inference failed for a batch of %d", len(batch))
            for item in batch:
                item.future.set_exception(exc)
            return
        finally:
            self.batches += 1
        elapsed = self._clock() - started
        for item, score in zip(batch, scores, strict=True):
            item.future.set_result(score)
        if self._observer is not None:
            self._observer(len(batch), started - min(i.enqueued for i in batch), elapsed)
