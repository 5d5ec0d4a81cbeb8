"""The ledger sweeper: re-queues accepted jobs that are neither queued, nor being processed, nor finished.

Why: kombu's Redis transport takes a message with ``BRPOP`` and only then records it in its ``unacked``
hash; a worker SIGKILLed in between loses the message (kombu #305, celery #4354, docs/RELIABILITY.md).
So the producer's enqueue script also writes every pushed job to a ledger (``Keys.LEDGER``: job id -> the
job's fields as compact JSON, :func:`producers.wire.encode`; ``Keys.LEDGER_SEEN``: job id scored by Redis TIME
of the push), a worker re-scores ("touches") it when it receives the job, starts processing it
(:class:`Toucher`) and begins a delivery (:class:`worker.stores.counters.RedisJobCounters`), and the result store
removes it with the final result (:mod:`worker.stores.results`).

A job whose last touch is older than ``grace_s`` is checked, in O(1) Redis work:

- it has a result → its entry is cleaned up (a delivery that found the result already stored);
- its lane is non-empty and the lane's next message (``LINDEX lane -1``: lanes are ``LPUSH`` + ``BRPOP``)
  is not a ledger job, or was touched no later than our job → our job may still wait behind it: kept,
  and re-touched so it is checked again a grace later;
- otherwise (lane empty, or its head is newer than our job's last touch) nobody holds the job → its
  message, rebuilt by :func:`producers.wire.message_from_ledger` (the same JSON but for a fresh delivery
  tag), is ``RPUSH``ed (consumed next, as kombu's own restore does) and it is touched.

Entries in the earlier format (``lane\\ntenant\\nexact message``, written by producers before the ledger kept
only the job's fields) are still read, so jobs queued during a rolling deploy are re-queued too; the reverse
does not hold (an older sweeper drops the seen score of a value it cannot read), so workers are upgraded
before producers.

Safe because a job held by a live worker is touched at every delivery, and waits between two deliveries
at most ``max(rate_limit.max_defer_s, retry.backoff_max_s)`` < ``redis.visibility_timeout_s`` < ``grace_s``;
a dead worker's unacked jobs are back in their lane (touched, at its head) after the visibility timeout.
A wrong guess only queues a job twice, which is harmless: the second delivery finds the stored result.
The one ordering this misjudges: a lane whose queue wait exceeds ``grace_s`` keeps a lost job until the
backlog shrinks below it (never a loss, a late recovery).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from producers import wire
from producers.contract import LUA_NOW, Keys

log = logging.getLogger(__name__)

# KEYS: ledger, ledger seen, lane. ARGV: job id, the seen score the sweeper judged, message, now.
# Pushes only if the job is still in the ledger and was not touched since it was judged (a delivery began).
_REQUEUE_LUA = """
local seen = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not seen or tonumber(seen) ~= tonumber(ARGV[2]) or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""


# KEYS: ledger seen. ARGV: job ids. Re-scores each job with Redis TIME only if it is still in the ledger.
_TOUCH_LUA = (
    LUA_NOW
    + """
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
end
return n
"""
)


class Toucher:
    """Marks a job alive in the ledger as soon as a worker has it: before it may wait for its turn (the
    isolation gate, a batch), so a job held by a worker that dies before it begins is not mistaken for lost
    (it comes back through kombu's restore within the visibility timeout of this touch)."""

    def __init__(self, client: Any) -> None:
        self._touch = client.register_script(_TOUCH_LUA)

    def __call__(self, job_id: str) -> None:
        self.many([job_id])

    def many(self, job_ids: list[str]) -> None:
        """Touch several jobs in one round trip."""
        if job_ids:
            self._touch(keys=[Keys.LEDGER_SEEN], args=job_ids)


class Action(StrEnum):
    CLEAN = "clean"  # it has a final result: drop the entry
    KEEP = "keep"  # it may still wait in its lane: check again a grace later
    REQUEUE = "requeue"  # nobody holds it: push its message again


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger value, read: the lane the job was pushed to, its tenant and the message to push again."""

    lane: str
    tenant: str
    message: bytes

    @classmethod
    def parse(cls, job_id: str, raw: bytes) -> LedgerEntry | None:
        """The entry of ``job_id`` from its ledger value, or None if the value is unreadable.

        Current producers store the job's fields as a JSON array (the message is rebuilt from them); older
        ones stored ``lane\\ntenant\\nexact message`` (a lane name never starts with ``[``)."""
        try:
            if raw.startswith(b"["):
                return cls(*wire.message_from_ledger(job_id, raw))
            lane, tenant, message = raw.split(b"\n", 2)
            return cls(lane.decode(), tenant.decode(), message)
        except ValueError:  # not JSON, not a job's fields, not three parts, not UTF-8
            return None


@dataclass(frozen=True)
class SweepReport:
    checked: int = 0
    finished_cleaned: int = 0
    still_queued: int = 0
    requeued: int = 0


def decide(*, finished: bool, seen: float, lane_empty: bool, head_seen: float | None) -> Action:
    """What to do with a job untouched for a grace: ``head_seen`` is the ledger score of its lane's next
    message (None when that message is not a ledger job)."""
    if finished:
        return Action.CLEAN
    if not lane_empty and (head_seen is None or head_seen <= seen):
        return Action.KEEP
    return Action.REQUEUE


def message_id(raw: bytes | None) -> str | None:
    """The task id (our job id) of a kombu envelope, or None if it is not one."""
    if raw is None:
        return None
    try:
        job_id = json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return job_id if isinstance(job_id, str) else None


def redis_clock(client: Any) -> Callable[[], float]:
    """Now, from the Redis clock (the one every ledger score comes from)."""

    def now() -> float:
        seconds, micros = client.time()
        return float(seconds) + float(micros) / 1_000_000

    return now


class LedgerSweeper:
    """Checks ledger entries untouched for ``grace_s`` (see the module doc); ``batch`` bounds one sweep."""

    def __init__(self, client: Any, grace_s: float, batch: int = 500, clock: Callable[[], float] | None = None) -> None:
        if grace_s <= 0 or batch < 1:
            raise ValueError("grace_s must be > 0 and batch >= 1")
        self.client = client
        self.grace_s = grace_s
        self.batch = batch
        self.clock = clock or redis_clock(client)
        self._requeue = client.register_script(_REQUEUE_LUA)

    def sweep_once(self) -> SweepReport:
        """One pass over at most ``batch`` stale entries; returns what it did."""
        now = self.clock()
        stale: list[tuple[bytes, float]] = self.client.zrangebyscore(
            Keys.LEDGER_SEEN, "-inf", f"({now - self.grace_s}", start=0, num=self.batch, withscores=True
        )
        if not stale:
            return SweepReport()
        ids = [job_id.decode() for job_id, _ in stale]
        raws = self.client.hmget(Keys.LEDGER, ids)
        entries = {j: LedgerEntry.parse(j, raw) if raw is not None else None for j, raw in zip(ids, raws, strict=True)}
        live = {j: e for j, e in entries.items() if e is not None}
        finished, heads = self._probe(live)

        counts = dict.fromkeys(Action, 0)
        # index of the requeue script's reply -> the job and the seen score it was judged by
        pushed: dict[int, tuple[str, float]] = {}
        with self.client.pipeline(transaction=False) as pipe:
            for job_id, (_, seen) in zip(ids, stale, strict=True):
                entry = live.get(job_id)
                if entry is None:  # gone from the hash (finished meanwhile) or unreadable: drop its score
                    pipe.zrem(Keys.LEDGER_SEEN, job_id)
                    counts[Action.CLEAN] += 1
                    continue
                lane_empty, head_seen = heads[entry.lane]
                action = decide(finished=finished[job_id], seen=seen, lane_empty=lane_empty, head_seen=head_seen)
                counts[action] += 1
                if action is Action.CLEAN:
                    pipe.hdel(Keys.LEDGER, job_id)
                    pipe.zrem(Keys.LEDGER_SEEN, job_id)
                elif action is Action.KEEP:
                    pipe.zadd(Keys.LEDGER_SEEN, {job_id: now}, xx=True, gt=True)
                else:
                    pushed[len(pipe)] = (job_id, seen)
                    self._requeue(
                        keys=[Keys.LEDGER, Keys.LEDGER_SEEN, entry.lane],
                        args=[job_id, repr(seen), entry.message, repr(now)],
                        client=pipe,
                    )
            replies = pipe.execute()
        requeued = 0
        for index, (job_id, seen) in pushed.items():
            if replies[index]:
                requeued += 1
                log.warning(
                    "job %s re-queued by the ledger: in no lane, no delivery for %.0fs and no result "
                    "(its message was lost, e.g. by a worker killed as it took it)",
                    job_id,
                    now - seen,
                )
        return SweepReport(
            checked=len(ids),
            finished_cleaned=counts[Action.CLEAN],
            still_queued=counts[Action.KEEP],
            requeued=requeued,
        )

    def _probe(self, live: dict[str, LedgerEntry]) -> tuple[dict[str, bool], dict[str, tuple[bool, float | None]]]:
        """Which jobs have a result, and per lane: (empty?, ledger score of its next message or None)."""
        lanes = sorted({e.lane for e in live.values()})
        with self.client.pipeline(transaction=False) as pipe:
            for job_id, entry in live.items():
                pipe.exists(Keys.result(entry.tenant, job_id))
            for lane in lanes:
                pipe.lindex(lane, -1)
            replies = pipe.execute()
        finished = {job_id: bool(n) for job_id, n in zip(live, replies, strict=False)}
        head_raws = dict(zip(lanes, replies[len(live) :], strict=True))
        head_ids = {lane: message_id(raw) for lane, raw in head_raws.items()}
        known = [h for h in head_ids.values() if h is not None]
        scores = dict(zip(known, self.client.zmscore(Keys.LEDGER_SEEN, known), strict=True)) if known else {}
        heads = {
            lane: (head_raws[lane] is None, scores.get(h) if h is not None else None) for lane, h in head_ids.items()
        }
        return finished, heads


class SweepThread:
    """Runs ``sweeper.sweep_once`` every ``interval_s`` on a daemon thread, in one worker of the fleet at a
    time: the worker that takes ``Keys.LEDGER_LOCK`` (``SET NX PX interval``) sweeps; the lock is left to
    expire, so the fleet sweeps about once per interval whichever worker does it."""

    def __init__(
        self,
        sweeper: LedgerSweeper,
        interval_s: float,
        on_report: Callable[[SweepReport], None] | None = None,
        owner: str | None = None,
    ) -> None:
        self.sweeper = sweeper
        self.interval_s = interval_s
        self.on_report = on_report
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-sweeper", daemon=True)

    def start(self) -> SweepThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def tick(self) -> SweepReport | None:
        """Sweep once if this worker wins the lock for this interval; None if another worker has it."""
        px = max(1, int(self.interval_s * 1000))
        if not self.sweeper.client.set(Keys.LEDGER_LOCK, self.owner, nx=True, px=px):
            return None
        report = self.sweeper.sweep_once()
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # Redis down or a bad entry: the next interval tries again
                log.warning("ledger sweep failed; retrying in %.0fs", self.interval_s, exc_info=True)
