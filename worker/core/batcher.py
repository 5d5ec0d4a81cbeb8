"""The one batching loop: a background thread that turns single submissions into model batches.

Both paths use it. In ``fakesake worker`` each Celery job thread prepares its own image and submits it; in
``fakesake scan`` (and in each engine process) the :class:`~worker.core.pipeline.Pipeline` submits the images
its prepare threads finish. The thread collects a batch by size or deadline
(:func:`worker.core.batching.collect_batch`), runs ``predict`` once per batch, checks the scores, and resolves one
future per input. A failed or malformed batch fails only its own futures.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from producers.errors import ErrorCode, TransientError
from worker.core.batching import BatchPolicy, collect_batch

log = logging.getLogger(__name__)


@dataclass
class _Submission:
    tensor: Any
    future: Future[float]
    enqueued: float


_FLUSH: Any = object()  # queued by flush(): closes the batch being collected

BatchObserver = Callable[[int, float, float], None]
"""Called after each batch with (size, oldest queue wait s, inference s); for metrics."""


def checked_scores(scores: Sequence[float], expected: int) -> list[float]:
    """The classifier's scores as floats, or ValueError: one finite P(AI) in [0, 1] per input, nothing else."""
    if len(scores) != expected:
        raise ValueError(f"classifier returned {len(scores)} scores for {expected} inputs")
    values = [float(v) for v in scores]
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"classifier returned a score outside [0, 1]: {values}")
    return values


class Batcher:
    """Batches submitted inputs for ``predict`` on one background thread."""

    def __init__(
        self,
        predict: Callable[[Sequence[Any]], Sequence[float]],
        policy: BatchPolicy,
        *,
        max_queue: int = 1024,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._predict = predict
        self._policy = policy
        self._queue: queue.Queue[_Submission] = queue.Queue(maxsize=max_queue)
        self._observer = observer
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fakesake-inference", daemon=True)
        self.batches = 0

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def submit(self, tensor: Any) -> Future[float]:
        """Queue one input; the future resolves to its P(AI) or raises the batch's error."""
        if self._stop.is_set():
            raise TransientError(ErrorCode.UNAVAILABLE, "worker is shutting down")
        future: Future[float] = Future()
        try:
            self._queue.put(_Submission(tensor, future, self._clock()), timeout=30)
        except queue.Full:
            raise TransientError(ErrorCode.UNAVAILABLE, "inference queue is full") from None
        return future

    def flush(self) -> None:
        """Close the batch being collected now (the caller knows nothing more is coming soon)."""
        self._queue.put(_FLUSH)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            batch = collect_batch(
                self._queue, self._policy, idle_timeout_s=0.2, clock=self._clock, closes=lambda s: s is _FLUSH
            )
            batch = [s for s in batch if s is not _FLUSH]
            if not batch:
                if self._stop.is_set() and self._queue.empty():
                    return
                continue
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Submission]) -> None:
        started = self._clock()
        try:
            scores = checked_scores(self._predict([s.tensor for s in batch]), len(batch))
        except Exception as exc:  # one failed forward fails only this batch's futures
            log.exception("inference failed for a batch of %d", len(batch))
            for s in batch:
                s.future.set_exception(exc)
            return
        finally:
            self.batches += 1
        elapsed = self._clock() - started
        for s, score in zip(batch, scores, strict=True):
            s.future.set_result(score)
        if self._observer is not None:
            self._observer(len(batch), started - min(s.enqueued for s in batch), elapsed)
