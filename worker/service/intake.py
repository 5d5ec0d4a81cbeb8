"""The bulk intake: one worker process takes its jobs many at a time instead of through Celery's consumer.

``batch.intake = bulk``. Celery's consumer handles one message at a time on one thread (take, record, dispatch
to the pool, ack: three Redis round trips and ~2 ms of Python each here), which caps a worker process near
500 no-op jobs/s on this machine and far below what one GPU classifies. Here one thread takes up to as many
jobs as there are free job threads in one Redis script (:class:`worker.stores.intake.LaneIntake`), hands each
to a job thread, and acks finished jobs in batches from a thread of its own. Delivery semantics stay kombu's:
taken messages sit in kombu's unacked records until acked, a dead worker's return after the visibility timeout
(Celery's consumer, which still runs for the side lanes, sweeps them), and a job whose result cannot be
stored goes back to its lane.

What the intake does not take stays with Celery: retries with a countdown, webhooks and anything it cannot read
go to the side lanes (``producers.contract.side_lane``), which Celery's consumer serves in the same process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

from producers.contract import side_lane
from worker.core.intake import Delivery, UnreadableMessage, parse_delivery
from worker.service.runtime import DeferredToucher
from worker.stores.intake import LaneIntake

log = logging.getLogger(__name__)

#: An intake loop that has not turned for this long is wedged (each turn waits at most ~1 s for Redis, 0.5 s for
#: a job thread, 5 s of backoff): see :meth:`BulkIntake.alive`.
STALL_S = 30.0


class Outcome(StrEnum):
    """What becomes of a taken message once its job ran."""

    ACK = "ack"  # done (result stored, follow-ups queued)
    REQUEUE = "requeue"  # back to its lane: the result could not be stored now


Handler = Callable[[Delivery], Outcome]


class BulkIntake:
    """Takes jobs from ``lanes`` for ``capacity`` job threads and runs ``handle`` on each (see the module doc)."""

    def __init__(
        self,
        store: LaneIntake,
        lanes: Sequence[str],
        capacity: int,
        *,
        touch: Callable[[str], None] | None = None,
        max_take: int = 64,
        idle_wait_s: float = 1.0,
    ) -> None:
        self._store = store
        self._lanes = tuple(lanes)
        self._capacity = capacity
        self._touch = touch
        self._max_take_wanted = max_take
        self._max_take = max(1, min(max_take, capacity))
        self._idle_wait_s = idle_wait_s
        self._slots = threading.Semaphore(capacity)
        self._stopping = threading.Event()
        self._acks = DeferredToucher(store.ack, what="ack %d finished jobs")
        # Jobs to put back on their lane whose first try failed (Redis away): the intake thread retries them
        # before it takes more, rather than leave them to kombu's restore after the whole visibility timeout.
        self._unreleased: queue.SimpleQueue[tuple[str, bytes, str]] = queue.SimpleQueue()
        self._beat = time.monotonic()  # the intake loop's last turn (it turns at least every ~2 s unless wedged)
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._handle: Handler | None = None

    @property
    def lanes(self) -> tuple[str, ...]:
        return self._lanes

    def start(self, handle: Handler, capacity: int | None = None) -> BulkIntake:
        """Start taking jobs; ``handle`` runs each on a job thread, at most ``capacity`` at once (the one given at
        construction when None). A second call does nothing."""
        if self._thread is not None:
            return self
        if capacity is not None and capacity != self._capacity:
            self._capacity = max(1, capacity)
            self._slots = threading.Semaphore(self._capacity)
            self._max_take = max(1, min(self._max_take_wanted, self._capacity))
        self._handle = handle
        self._pool = ThreadPoolExecutor(self._capacity, thread_name_prefix="fakesake-job")
        self._acks.start()
        self._thread = threading.Thread(target=self._run, name="fakesake-intake", daemon=True)
        self._thread.start()
        log.info("bulk intake: taking jobs from %s for %d job threads", ",".join(self._lanes), self._capacity)
        return self

    def alive(self, max_age_s: float = STALL_S) -> bool:
        """Whether the intake loop turned within ``max_age_s`` (True before ``start``). The Celery adapter reports
        the consumer alive only while this holds too, so a wedged intake fails liveness like a wedged consumer."""
        if self._thread is None:
            return True
        return self._thread.is_alive() and time.monotonic() - self._beat < max_age_s

    def stop(self, timeout_s: float = 60.0) -> None:
        """Take no more jobs, let the running ones finish (a warm shutdown) and send their acks."""
        self._stopping.set()
        if self._thread is None:
            return
        self._thread.join(timeout=timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._acks.stop()
        try:  # jobs whose return to their lane failed: one last try, else kombu's restore sweep returns them
            self._release_pending()
        except Exception:
            log.warning("bulk intake: %d jobs left to kombu's restore sweep", self._unreleased.qsize(), exc_info=True)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._step()
                backoff = 0.1
            except Exception:  # Redis away: try again, as Celery's consumer would reconnect
                log.warning("bulk intake cannot take jobs now; retrying in %.1f s", backoff, exc_info=True)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _claim(self) -> int:
        """Free job threads, at least one (0 only when stopping): waits for the first, takes the rest at once."""
        while not self._slots.acquire(timeout=0.5):  # every job thread busy: still a turn of the loop
            self._beat = time.monotonic()
            if self._stopping.is_set():
                return 0
        n = 1
        while n < self._max_take and self._slots.acquire(blocking=False):
            n += 1
        return n

    def _free(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    def _step(self) -> None:
        self._beat = time.monotonic()
        self._release_pending()
        n = self._claim()
        if n == 0:
            return
        try:
            taken = self._store.take(self._lanes, n)
        except BaseException:
            self._free(n)
            raise
        self._free(n - len(taken))
        for i, (lane, raw) in enumerate(taken):
            try:
                self._dispatch(lane, raw)
            except BaseException:
                # Never handed to a job thread: free their slots; the messages stay unacked and kombu's restore
                # sweep returns them after the visibility timeout.
                self._free(len(taken) - i)
                raise
        if not taken:
            self._store.wait(self._lanes, self._idle_wait_s)

    def _release_pending(self) -> None:
        """Put back the jobs whose release failed; raises (for the loop's backoff) while Redis stays away."""
        while True:
            try:
                tag, raw, lane = self._unreleased.get_nowait()
            except queue.Empty:
                return
            try:
                self._store.release(tag, raw, lane)
            except BaseException:
                self._unreleased.put((tag, raw, lane))
                raise

    def _dispatch(self, lane: str, raw: bytes) -> None:
        try:
            delivery = parse_delivery(lane, raw)
        except UnreadableMessage as exc:
            # Celery reads it on the side lane and runs or dead-letters it, as it would have on the lane itself.
            log.warning("bulk intake: passing a message to Celery (%s)", exc)
            self._slots.release()
            if exc.tag is not None:
                try:
                    self._store.release(exc.tag, raw, side_lane(lane))
                except Exception:  # must not cost the rest of this take: tried again before the next one
                    log.warning("bulk intake: cannot pass a message to Celery now; retrying", exc_info=True)
                    self._unreleased.put((exc.tag, raw, side_lane(lane)))
            return
        if self._touch is not None:
            self._touch(delivery.task_id)  # alive in the ledger from now (worker.stores.ledger)
        assert self._pool is not None
        self._pool.submit(self._run_one, delivery)

    def _run_one(self, delivery: Delivery) -> None:
        assert self._handle is not None
        try:
            outcome = self._handle(delivery)
        except Exception:  # the handler maps every job failure to a result; this is a bug: retry the job
            log.exception("bulk intake: job %s failed outside its handler; returning it to its lane", delivery.task_id)
            outcome = Outcome.REQUEUE
        finally:
            self._slots.release()
        if outcome is Outcome.ACK:
            self._acks(delivery.tag)
            return
        try:
            self._store.release(delivery.tag, delivery.raw, delivery.lane)
        except Exception:  # Redis away: the intake thread tries again (a worker that dies first leaves it to kombu)
            log.warning("bulk intake: cannot return job %s to its lane now; retrying", delivery.task_id, exc_info=True)
            self._unreleased.put((delivery.tag, delivery.raw, delivery.lane))
