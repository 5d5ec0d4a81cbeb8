"""``worker.service.intake.BulkIntake`` against an in-memory stand-in for its Redis store.

Proves the intake's own promises, without Redis: it never has more jobs taken than it has job threads (a
blocked handler holds its slot), acks jobs whose handler says ACK (in batches), returns a job to its lane on
REQUEUE or when the handler raises, passes a message it cannot read to the lane's side lane without running it,
marks each job in the ledger (``touch``) before it runs, lets running jobs finish and sends their acks on
``stop()``, and keeps taking jobs after its store failed (Redis away).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import pytest

from producers import wire
from producers.contract import JobMessage, side_lane
from tests.support.receivers import eventually
from worker.core.intake import Delivery, delivery_tag
from worker.service.intake import BulkIntake, Handler, Outcome
from worker.stores.intake import LaneIntake

LANE = "fakesake.interactive"
BULK = "fakesake.bulk"
WAIT_S = 2.0  # bound on waiting for the intake's threads (each test finishes far sooner)


class FakeStore:
    """``LaneIntake`` in memory: lanes are FIFO deques, taken messages are unacked until acked or released."""

    def __init__(self, capacity: int | None = None) -> None:
        self.lock = threading.Lock()
        self.lanes: dict[str, deque[bytes]] = {}
        self.unacked: dict[str, tuple[str, bytes]] = {}
        self.acked: list[str] = []
        self.ack_calls: list[list[str]] = []
        self.released: list[tuple[str, str]] = []  # (tag, destination lane)
        self.take_calls: list[tuple[tuple[str, ...], int]] = []
        self.taken = 0
        self.finished = 0  # handlers returned (kept by the tests' handlers) and messages handed to a side lane
        self.capacity = capacity
        self.over_capacity: list[str] = []
        self.take_failures = 0
        self.release_failures = 0
        self.pushed = threading.Event()

    def push(self, lane: str, *raws: bytes) -> None:
        with self.lock:
            self.lanes.setdefault(lane, deque()).extend(raws)
        self.pushed.set()

    def take(self, lanes: Sequence[str], n: int) -> list[tuple[str, bytes]]:
        with self.lock:
            self.take_calls.append((tuple(lanes), n))
            if self.take_failures:
                self.take_failures -= 1
                raise ConnectionError("Redis is away")
            out: list[tuple[str, bytes]] = []
            for lane in lanes:
                queue = self.lanes.get(lane, deque())
                while queue and len(out) < n:
                    raw = queue.popleft()
                    tag = delivery_tag(raw)
                    if tag is not None:
                        self.unacked[tag] = (lane, raw)
                    out.append((lane, raw))
            self.taken += len(out)
            in_flight = self.taken - self.finished
            if self.capacity is not None and in_flight > self.capacity:
                self.over_capacity.append(f"{in_flight} jobs taken and unfinished (capacity {self.capacity})")
            if not any(self.lanes.get(lane) for lane in lanes):
                self.pushed.clear()
            return out

    def wait(self, lanes: Sequence[str], timeout_s: float) -> bool:
        return self.pushed.wait(min(timeout_s, 0.05))

    def ack(self, tags: list[str]) -> None:
        with self.lock:
            self.ack_calls.append(list(tags))
            for tag in tags:
                self.unacked.pop(tag, None)
                self.acked.append(tag)

    def release(self, tag: str, raw: bytes, to_lane: str) -> bool:
        with self.lock:
            if to_lane == side_lane(to_lane):  # an unreadable message: handed over, it holds no job thread
                self.finished += 1
            if self.release_failures:
                self.release_failures -= 1
                raise ConnectionError("Redis is away")
            if self.unacked.pop(tag, None) is None:
                return False
            self.released.append((tag, to_lane))
            self.lanes.setdefault(to_lane, deque()).append(raw)
        self.pushed.set()
        return True

    def job_finished(self) -> None:
        with self.lock:
            self.finished += 1


def message(n: int = 0) -> tuple[str, bytes]:
    """A producer's message: (job id, bytes)."""
    job = JobMessage(tenant="acme", source=f"s3://bucket/{n}.jpg")
    return job.job_id, wire.encode_message(job)


def tag_of(raw: bytes) -> str:
    tag = delivery_tag(raw)
    assert tag is not None
    return tag


@contextmanager
def running(
    store: FakeStore,
    handle: Handler,
    capacity: int,
    *,
    lanes: Sequence[str] = (LANE,),
    touch: Callable[[str], None] | None = None,
    start_capacity: int | None = None,
) -> Iterator[BulkIntake]:
    intake = BulkIntake(cast(LaneIntake, store), lanes, capacity, touch=touch, idle_wait_s=0.05)
    intake.start(handle, capacity=start_capacity)
    try:
        yield intake
    finally:
        intake.stop(timeout_s=WAIT_S)


def counting(store: FakeStore, handle: Callable[[Delivery], Outcome]) -> Handler:
    """``handle``, telling the store when each job's handler returned (for its in-flight count)."""

    def wrapped(delivery: Delivery) -> Outcome:
        try:
            return handle(delivery)
        finally:
            store.job_finished()

    return wrapped


@pytest.mark.parametrize("given", ["built", "started"])
def test_no_more_jobs_are_taken_than_there_are_job_threads(given: str) -> None:
    """``started``: the capacity comes at start (Celery's ``--concurrency``) and overrides the builder's."""
    capacity, n = 3, 10
    store = FakeStore(capacity)
    store.push(LANE, *(message(i)[1] for i in range(n)))
    gate = threading.Event()
    lock = threading.Lock()
    active, most = [0], [0]

    def handle(delivery: Delivery) -> Outcome:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        gate.wait(WAIT_S)
        with lock:
            active[0] -= 1
        return Outcome.ACK

    built = capacity if given == "built" else 36
    with running(store, counting(store, handle), built, start_capacity=None if given == "built" else capacity):
        eventually(lambda: active[0] == capacity, WAIT_S, "the job threads to fill")
        gate.wait(0.2)  # the intake is now waiting for a free job thread; it must not take more meanwhile
        assert store.taken == capacity and len(store.unacked) == capacity
        gate.set()
        eventually(lambda: len(store.acked) == n, WAIT_S, "every job acked")
    assert most[0] == capacity
    assert store.over_capacity == []
    assert all(asked <= capacity for _lanes, asked in store.take_calls)
    assert store.unacked == {} and not store.lanes[LANE]


def test_finished_jobs_are_acked_in_batches_and_lanes_are_taken_in_order() -> None:
    store = FakeStore()
    bulk = [message(i) for i in range(4)]
    interactive = [message(10 + i) for i in range(4)]
    store.push(BULK, *(raw for _id, raw in bulk))
    store.push(LANE, *(raw for _id, raw in interactive))
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def handle(delivery: Delivery) -> Outcome:
        with lock:
            seen.append((delivery.lane, delivery.task_id))
        return Outcome.ACK

    with running(store, handle, 16, lanes=(LANE, BULK)):
        eventually(lambda: len(store.acked) == 8, WAIT_S, "every job acked")
    assert store.take_calls[0] == ((LANE, BULK), 16)
    assert sorted(seen) == sorted([(LANE, j) for j, _ in interactive] + [(BULK, j) for j, _ in bulk])
    assert sorted(store.acked) == sorted(tag_of(raw) for _j, raw in bulk + interactive)
    assert sum(len(call) for call in store.ack_calls) == 8 and store.released == [] and store.unacked == {}


@pytest.mark.parametrize("failure", ["requeue", "raise"])
def test_a_job_that_cannot_finish_now_goes_back_to_its_lane_and_runs_again(failure: str) -> None:
    store = FakeStore()
    job_id, raw = message()
    store.push(BULK, raw)
    runs: list[str] = []

    def handle(delivery: Delivery) -> Outcome:
        runs.append(delivery.task_id)
        if len(runs) == 1:
            if failure == "raise":
                raise RuntimeError("a bug outside the job's own error handling")
            return Outcome.REQUEUE
        return Outcome.ACK

    with running(store, handle, 4, lanes=(LANE, BULK)):
        eventually(lambda: store.acked == [tag_of(raw)], WAIT_S, "the job to run again and be acked")
    assert runs == [job_id, job_id]
    assert store.released == [(tag_of(raw), BULK)], "back on its own lane, not the side lane"
    assert store.unacked == {}


def test_an_unreadable_message_goes_to_the_side_lane_without_running() -> None:
    store = FakeStore()
    broken = json.loads(message(1)[1])
    broken["body"] = "not json"
    broken_raw = json.dumps(broken).encode()
    job_id, raw = message(2)
    store.push(LANE, broken_raw, raw)
    runs: list[str] = []

    def handle(delivery: Delivery) -> Outcome:
        runs.append(delivery.task_id)
        return Outcome.ACK

    with running(store, handle, 1):  # one job thread: the unreadable message must give its slot back
        eventually(lambda: store.acked == [tag_of(raw)], WAIT_S, "the readable job acked")
    assert runs == [job_id]
    assert store.released == [(tag_of(broken_raw), side_lane(LANE))]
    assert list(store.lanes[side_lane(LANE)]) == [broken_raw], "byte for byte, for Celery to read"
    assert store.unacked == {}


def test_each_job_is_touched_in_the_ledger_before_it_runs() -> None:
    store = FakeStore()
    jobs = [message(i) for i in range(3)]
    store.push(LANE, *(raw for _j, raw in jobs))
    touched: list[str] = []
    untouched_runs: list[str] = []

    def handle(delivery: Delivery) -> Outcome:
        if delivery.task_id not in touched:
            untouched_runs.append(delivery.task_id)
        return Outcome.ACK

    with running(store, handle, 4, touch=touched.append):
        eventually(lambda: len(store.acked) == 3, WAIT_S, "every job acked")
    assert sorted(touched) == sorted(j for j, _raw in jobs)
    assert untouched_runs == []


def test_stop_lets_running_jobs_finish_and_sends_their_acks() -> None:
    capacity = 2
    store = FakeStore(capacity)
    jobs = [message(i) for i in range(5)]
    store.push(LANE, *(raw for _j, raw in jobs))
    gate = threading.Event()
    started: list[str] = []

    def handle(delivery: Delivery) -> Outcome:
        started.append(delivery.task_id)
        gate.wait(WAIT_S)
        return Outcome.ACK

    intake = BulkIntake(cast(LaneIntake, store), (LANE,), capacity, idle_wait_s=0.05).start(counting(store, handle))
    eventually(lambda: len(started) == capacity, WAIT_S, "the job threads to fill")
    stopper = threading.Thread(target=intake.stop, kwargs={"timeout_s": WAIT_S})
    stopper.start()
    stopper.join(0.7)  # the intake thread notices the stop within its 0.5 s slot wait; the jobs still run
    assert stopper.is_alive(), "stop() waits for the running jobs"
    assert store.acked == []
    gate.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert sorted(store.acked) == sorted(tag_of(raw) for _j, raw in jobs[:capacity]), "acks flushed by stop()"
    assert started == [j for j, _raw in jobs[:capacity]]
    assert list(store.lanes[LANE]) == [raw for _j, raw in jobs[capacity:]], "nothing taken after the stop"
    assert store.unacked == {} and store.over_capacity == []


def test_the_intake_keeps_going_after_its_store_failed() -> None:
    capacity = 2
    store = FakeStore(capacity)
    store.take_failures = 1
    store.release_failures = 1
    jobs = [message(i) for i in range(2)]
    store.push(LANE, *(raw for _j, raw in jobs))
    both = threading.Barrier(capacity, timeout=WAIT_S)
    runs: list[str] = []
    requeued = jobs[0][0]

    def handle(delivery: Delivery) -> Outcome:
        runs.append(delivery.task_id)
        if len(runs) <= capacity:
            both.wait()  # both run at once: the failed take gave its claimed job threads back
        # the first job cannot be finished on its first run (its result store was away): back to its lane
        return Outcome.REQUEUE if runs.count(requeued) == 1 and delivery.task_id == requeued else Outcome.ACK

    with running(store, counting(store, handle), capacity):
        # Its release failed too (Redis still away): the intake thread retried it, so it ran again and finished.
        eventually(lambda: len(store.acked) == 2, WAIT_S, "both jobs acked, the requeued one after its retried release")
        extra_id, extra = message(9)
        store.push(LANE, extra)
        eventually(lambda: len(store.acked) == 3, WAIT_S, "a job pushed after the failures acked")
    assert len(store.take_calls) >= 2 and store.take_calls[0] == ((LANE,), capacity)
    assert sorted(runs[:2]) == sorted(j for j, _raw in jobs) and runs[2:] == [requeued, extra_id]
    assert store.acked == [tag_of(jobs[1][1]), tag_of(jobs[0][1]), tag_of(extra)]
    assert store.released == [(tag_of(jobs[0][1]), LANE)] and store.release_failures == 0
    assert store.unacked == {} and store.over_capacity == []


def test_a_failed_hand_over_of_an_unreadable_message_loses_no_job_thread() -> None:
    capacity = 2
    store = FakeStore(capacity)
    store.release_failures = 1  # Redis away while the unreadable message is handed to the side lane
    broken = json.loads(message(1)[1])
    broken["body"] = "not json"
    broken_raw = json.dumps(broken).encode()
    taken_with_it = message(2)
    store.push(LANE, broken_raw, taken_with_it[1])  # one take: the unreadable message and a job
    both = threading.Barrier(capacity, timeout=WAIT_S)
    runs: list[str] = []

    def handle(delivery: Delivery) -> Outcome:
        runs.append(delivery.task_id)
        if delivery.task_id != taken_with_it[0]:
            both.wait()  # two jobs at once: both job threads are still there
        return Outcome.ACK

    with running(store, counting(store, handle), capacity):
        eventually(lambda: store.release_failures == 0, WAIT_S, "the failed hand-over")
        later = [message(10 + i) for i in range(capacity)]
        store.push(LANE, *(raw for _j, raw in later))
        eventually(lambda: len(store.acked) == 1 + capacity, WAIT_S, "every readable job acked")
    assert sorted(runs) == sorted([taken_with_it[0], *(j for j, _raw in later)])
    # The failed hand-over was tried again before the next take: the message is on the side lane, nothing unacked.
    assert store.released == [(tag_of(broken_raw), side_lane(LANE))] and list(store.lanes[side_lane(LANE)]) == [
        broken_raw
    ]
    assert store.unacked == {} and store.over_capacity == []


def test_a_wedged_intake_loop_is_not_alive_and_the_worker_stops_reporting_its_consumer_alive() -> None:
    from types import SimpleNamespace

    from worker.service.celery_app import _tick

    store = FakeStore()
    unblock = threading.Event()
    real_take = store.take

    def stuck_take(lanes: Sequence[str], n: int) -> list[tuple[str, bytes]]:
        unblock.wait(WAIT_S)  # a Redis call that never returns (until the test lets it)
        return real_take(lanes, n)

    store.take = stuck_take  # type: ignore[method-assign]
    ticks: list[str] = []
    intake = BulkIntake(cast(LaneIntake, store), (LANE,), 2, idle_wait_s=0.05)
    rt = SimpleNamespace(intake=intake, telemetry=SimpleNamespace(consumer_tick=lambda: ticks.append("tick")))
    assert intake.alive(0.2), "not started yet: nothing to be wedged"
    intake.start(lambda _d: Outcome.ACK)
    try:
        time.sleep(0.3)
        assert not intake.alive(0.2)
        assert intake.alive(5.0)  # the default age (STALL_S) is far longer than one wait
        _tick(rt)
        assert ticks == ["tick"]
        rt.intake = SimpleNamespace(alive=lambda: False)
        _tick(rt)
        assert ticks == ["tick"], "a wedged intake must not be reported alive"
        unblock.set()
        eventually(lambda: intake.alive(0.2), WAIT_S, "the loop to turn again")
    finally:
        unblock.set()
        intake.stop(timeout_s=WAIT_S)


def test_a_take_that_fails_part_way_frees_the_job_threads_of_what_it_did_not_hand_over() -> None:
    """Anything that raises while a take is handed to job threads (here the ledger touch) leaves the messages not
    yet handed over unacked, for kombu's restore sweep, and gives their job threads back: capacity is not lost."""
    capacity = 3
    store = FakeStore(capacity)
    jobs = [message(i) for i in range(capacity)]
    store.push(LANE, *(raw for _j, raw in jobs))
    touched: list[str] = []

    def touch(job_id: str) -> None:
        touched.append(job_id)
        if len(touched) == 2:
            raise RuntimeError("the ledger touch failed")

    runs: list[str] = []

    def handle(delivery: Delivery) -> Outcome:
        runs.append(delivery.task_id)
        return Outcome.ACK

    with running(store, counting(store, handle), capacity, touch=touch):
        eventually(lambda: len(store.acked) == 1, WAIT_S, "the job handed over before the failure")
        later = [message(10 + i) for i in range(capacity)]
        store.push(LANE, *(raw for _j, raw in later))
        # all three job threads are free again: the next take asks for three and runs them
        eventually(lambda: len(store.acked) == 1 + capacity, WAIT_S, "a full take after the failure")
    assert runs == [jobs[0][0], *(j for j, _raw in later)]
    assert set(store.unacked) == {tag_of(jobs[1][1]), tag_of(jobs[2][1])}, "left unacked for kombu's restore"
    assert ((LANE,), capacity) in store.take_calls[1:]


@pytest.mark.parametrize("release_failures", [1, 1000])
def test_stop_makes_a_last_try_at_returning_jobs_whose_return_failed(
    release_failures: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A job that ends REQUEUE after the intake thread stopped, whose return to its lane fails (Redis away): stop()
    tries once more; if Redis is still away it logs and returns (kombu's restore sweep returns the job) rather
    than hang."""
    store = FakeStore(1)
    _job_id, raw = message()
    store.push(LANE, raw)
    gate, started = threading.Event(), threading.Event()

    def handle(delivery: Delivery) -> Outcome:
        started.set()
        gate.wait(WAIT_S)
        return Outcome.REQUEUE

    intake = BulkIntake(cast(LaneIntake, store), (LANE,), 1, idle_wait_s=0.05).start(handle)
    assert started.wait(WAIT_S)
    stopper = threading.Thread(target=intake.stop, kwargs={"timeout_s": WAIT_S})
    stopper.start()
    stopper.join(0.7)  # the intake thread has seen the stop within its 0.5 s slot wait: only stop() can retry now
    assert stopper.is_alive(), "stop() waits for the running job"
    store.release_failures = release_failures
    gate.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    if release_failures == 1:
        assert store.released == [(tag_of(raw), LANE)] and list(store.lanes[LANE]) == [raw]
        assert store.unacked == {}
    else:
        assert store.released == [] and list(store.unacked) == [tag_of(raw)], "still unacked, for kombu's restore"
        assert "1 jobs left to kombu's restore sweep" in caplog.text
