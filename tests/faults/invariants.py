"""The one invariant every fault scenario must keep, and the figures each scenario reports.

**Every accepted job has exactly one final result (ok, or error with a code); no job is lost; no result is
overwritten by a different one; the DLQ holds exactly the jobs that should be there.**

:class:`ResultRecorder` watches results as they appear, from outside the workers: it subscribes to the
tenant's notify channel (the result store publishes a job id once per successful ``SET NX``) and sweeps all
tracked result keys with ``MGET`` a few times a second. It keeps the first value seen per job and flags any
later, different value (an overwrite) and any second announcement (a second final write). It survives Redis
restarts by reconnecting.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from producers.contract import JobResult, Keys

log = logging.getLogger(__name__)

FIGURES_PATH = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults.json"


class ResultRecorder:
    """Records every final result of ``tenant`` as it appears (first value, later changes, announcements)."""

    def __init__(
        self,
        redis_url: str,
        tenant: str,
        sweep_s: float = 0.25,
        connect: Callable[[], redis.Redis] | None = None,
    ) -> None:
        self.redis_url = redis_url
        # a Sentinel group needs a client that asks the Sentinels for the primary (producers.connections)
        self._connect = connect or (
            lambda: redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=1)
        )
        self.tenant = tenant
        self.sweep_s = sweep_s
        self.first: dict[str, bytes] = {}
        self.first_at: dict[str, float] = {}
        self.changed: dict[str, list[bytes]] = {}
        self.announced: Counter[str] = Counter()
        self.disconnects = 0
        self._tracked: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-recorder", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> ResultRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def track(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            self._tracked.extend(job_ids)

    # -- queries --------------------------------------------------------------------------------------
    def done(self) -> int:
        with self._lock:
            return len(self.first)

    def pending(self) -> list[str]:
        with self._lock:
            return [j for j in self._tracked if j not in self.first]

    def wait_all(self, timeout_s: float) -> bool:
        """Wait until every tracked job has a result; True if they all did in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.pending():
                time.sleep(2 * self.sweep_s)  # one more sweep: a late overwrite would show up here
                return True
            time.sleep(0.1)
        return False

    def wait_done(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.done() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.done()} of {count} results after {timeout_s}s")
            time.sleep(0.05)

    def last_result_at(self, job_ids: Iterable[str] | None = None) -> float:
        with self._lock:
            ids = self.first_at if job_ids is None else job_ids
            return max((self.first_at[j] for j in ids if j in self.first_at), default=float("nan"))

    def first_result_after(self, t: float) -> float:
        with self._lock:
            return min((at for at in self.first_at.values() if at > t), default=float("nan"))

    # -- the watcher ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            client = self._connect()
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(Keys.notify(self.tenant))
                while not self._stop.is_set():
                    next_sweep = time.monotonic() + self.sweep_s
                    while (left := next_sweep - time.monotonic()) > 0:
                        message = pubsub.get_message(timeout=left)
                        if message is not None and message["type"] == "message":
                            data = message["data"]
                            self.announced[data.decode() if isinstance(data, bytes) else data] += 1
                    self._sweep(client)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self.disconnects += 1
                self._stop.wait(0.2)
            finally:
                pubsub.close()
                client.close()
        # a last sweep so the final state is recorded even if the loop slept through it
        try:
            with self._connect() as client:
                self._sweep(client)
        except redis.RedisError:
            pass

    def _sweep(self, client: redis.Redis) -> None:
        with self._lock:
            ids = list(self._tracked)
        now = time.monotonic()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            values = cast(list[bytes | None], client.mget([Keys.result(self.tenant, j) for j in chunk]))
            with self._lock:
                for job_id, raw in zip(chunk, values, strict=True):
                    if raw is None:
                        continue
                    if job_id not in self.first:
                        self.first[job_id] = raw
                        self.first_at[job_id] = now
                    elif raw != self.first[job_id] and raw not in self.changed.get(job_id, []):
                        self.changed.setdefault(job_id, []).append(raw)


@dataclass
class Figures:
    """What one scenario reports (printed, and written to ``bench/results/faults.json``)."""

    scenario: str
    jobs: int
    faults: dict[str, int]
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    lost_in_transit: int = 0
    duplicates: int = 0
    overwrites: int = 0
    dlq: int = 0
    recover_s: float | None = None
    recover_what: str = ""
    wall_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def publish(self) -> None:
        """Print one line and merge this scenario into the JSON figures file."""
        print(f"\n[faults] {json.dumps(asdict(self), sort_keys=True)}")
        FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(FIGURES_PATH.read_text())
        except (OSError, ValueError):
            data = {}
        data[self.scenario] = asdict(self)
        FIGURES_PATH.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def check(
    recorder: ResultRecorder,
    client: redis.Redis,
    accepted: Iterable[str],
    figures: Figures,
    *,
    expected_errors: Mapping[str, str] | None = None,
    expected_dlq: Iterable[str] = (),
    tolerate_untraced_losses: int = 0,
) -> Figures:
    """Assert the invariant for ``accepted`` jobs and fill ``figures``.

    ``expected_errors`` maps job id -> the error code its final result must carry; every other accepted
    job must end ``ok``. ``expected_dlq`` is exactly the set of job ids the DLQ must hold.

    ``tolerate_untraced_losses``: scenarios that SIGKILL workers may lose up to this many jobs that left
    no trace at all (never started, in no lane, not in kombu's unacked hash): the message a killed worker
    had popped with BRPOP and not yet recorded as unacked (a known gap of kombu's Redis transport, see
    docs/RELIABILITY.md). They are counted as ``lost_in_transit``; any other loss fails.
    """
    accepted = list(accepted)
    expected_errors = dict(expected_errors or {})
    assert len(set(accepted)) == len(accepted), "a job id was accepted twice"
    stored = dict(zip(accepted, client.mget([Keys.result(recorder.tenant, j) for j in accepted]), strict=True))
    lost = [j for j in accepted if stored[j] is None]
    overwritten = {j for j in accepted if j in recorder.changed}
    # a stored value that differs from the first one the recorder saw is an overwrite too
    overwritten |= {j for j in accepted if stored[j] is not None and stored[j] != recorder.first.get(j, stored[j])}
    twice = [j for j in accepted if recorder.announced[j] > 1]
    statuses: Counter[str] = Counter()
    wrong: list[str] = []
    for job_id, raw in stored.items():
        if raw is None:
            continue
        result = JobResult.model_validate_json(raw)
        assert result.job_id == job_id and result.tenant == recorder.tenant
        want = expected_errors.get(job_id)
        if result.ok:
            statuses["ok"] += 1
            assert result.score is not None and result.band is not None and result.model is not None
            if want is not None:
                wrong.append(f"{job_id}: ok, expected {want}")
        else:
            assert result.error is not None and result.error.code, f"{job_id}: error result without a code"
            statuses[result.error.code] += 1
            if result.error.code != want:
                wrong.append(f"{job_id}: {result.error.code} ({result.error.message}), expected {want or 'ok'}")
    dlq_ids = {(k.decode() if isinstance(k, bytes) else k) for k in client.hkeys(Keys.DLQ)}

    figures.ok = statuses.pop("ok", 0)
    figures.errors = dict(statuses)
    in_transit = untraced(client, recorder.tenant, lost) if tolerate_untraced_losses else []
    figures.lost = len(lost)
    figures.lost_in_transit = len(in_transit)
    figures.overwrites = len(overwritten)
    figures.duplicates = len(twice)
    figures.dlq = len(dlq_ids)
    figures.publish()

    traced = [j for j in lost if j not in in_transit]
    assert not traced, f"{len(traced)} accepted jobs have no final result, e.g. {traced[:5]}"
    assert len(in_transit) <= tolerate_untraced_losses, f"{len(in_transit)} jobs lost without a trace"
    assert not overwritten, f"results overwritten: {sorted(overwritten)[:5]}"
    assert not twice, f"final results written twice: {twice[:5]}"
    assert not wrong, f"{len(wrong)} unexpected outcomes: {wrong[:5]}"
    assert dlq_ids == set(expected_dlq), (
        f"DLQ mismatch: unexpected {sorted(dlq_ids - set(expected_dlq))[:5]}, "
        f"missing {sorted(set(expected_dlq) - dlq_ids)[:5]}"
    )
    return figures


def untraced(client: redis.Redis, tenant: str, job_ids: Iterable[str]) -> list[str]:
    """Jobs of ``job_ids`` that are nowhere: in no lane, not in kombu's unacked hash, never started, and not
    in the ledger (whose sweeper re-queues a job lost in transit, worker/stores/ledger.py)."""
    from producers.contract import ALL_QUEUES

    held = [*(m for q in ALL_QUEUES for m in client.lrange(q, 0, -1)), *client.hvals("unacked")]
    return [
        j
        for j in job_ids
        if not any(j.encode() in m for m in held)
        and not client.exists(Keys.deliveries(j), Keys.attempts(j), Keys.result(tenant, j))
        and not client.hexists(Keys.LEDGER, j)
    ]
