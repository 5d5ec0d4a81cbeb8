"""Several detectors across a fleet: lanes per detector set, worker advertisements, refusal at submit.

Two real workers on one Redis database: ``mj`` serves the default detector alone, ``pair`` serves ffs-mj-5m and
ffs-sd-5m (two seeded checkpoints). A job only reaches a worker that serves all of its detectors: were an
ffs-sd-5m job taken by ``mj``, it would finish as ``unknown-model``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from producers import serving
from producers.contract import Fusion, Status, queue_name
from producers.errors import ErrorCode, PermanentError
from tests.integration.conftest import Stack, new_stack, start_workers
from tests.support.images import encode, photo
from tests.support.servers import HttpServer, RedisServer, S3Server
from tests.support.workers import WorkerProcess

PAIR = "ffs-mj-5m,ffs-sd-5m"
# Two workers, three model loads: the first test also pays their start (minutes on a loaded 2-core machine).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One snapshot folder with both detectors' files, from different seeds (they disagree)."""
    from tests.support.checkpoints import seeded_state, write_snapshot
    from worker.core import registry

    root = tmp_path_factory.mktemp("pair")
    for name, seed in (("ffs-mj-5m", 0), ("ffs-sd-5m", 1)):
        spec = registry.get(name)
        write_snapshot(spec, root, seeded_state(spec, seed))
    return root


@pytest.fixture(scope="module")
def fleet(
    redis_srv: RedisServer, s3_srv: S3Server, queue_http: HttpServer, weights: Path
) -> Iterator[tuple[Stack, list[WorkerProcess]]]:
    stack = new_stack(redis_srv, s3_srv, queue_http, weights)
    torch = {"FAKESAKE_MODEL__BACKEND": "torch"}  # no ONNX export at start: routing, not speed, is under test
    envs = [stack.env(torch), stack.env({"FAKESAKE_MODEL__NAMES": PAIR, **torch})]
    with start_workers(envs, ["mj", "pair"], ready_s=600) as workers:
        yield stack, workers


def _sources(stack: Stack, n: int) -> list[str]:
    client = stack.s3.client()  # type: ignore[no-untyped-call]
    out = []
    for i in range(n):
        key = f"route/{i}.jpg"
        client.put_object(Bucket=stack.bucket, Key=key, Body=encode(photo(80 + 9 * i, 72, seed=300 + i), "JPEG"))
        out.append(f"s3://{stack.bucket}/{key}")
    return out


def test_workers_advertise_what_they_serve(fleet: tuple[Stack, list[WorkerProcess]]) -> None:
    stack, _ = fleet
    served = {a.detectors for a in serving.live(stack.client(), 30)}
    assert served == {frozenset({"ffs-mj-5m"}), frozenset({"ffs-mj-5m", "ffs-sd-5m"})}


def test_jobs_reach_only_workers_that_serve_their_detectors(fleet: tuple[Stack, list[WorkerProcess]]) -> None:
    stack, _ = fleet
    producer = stack.producer("routing")
    sources = _sources(stack, 6)
    ids = {
        model: producer.submit_many(sources, model=model)
        for model in ("ffs-mj-5m", "ffs-sd-5m", PAIR, "ffs-sd-5m,ffs-mj-5m")
    }
    mean = producer.submit_many(sources, model=PAIR, priority="bulk")  # the other priority's lane of the pair
    results = producer.wait([j for group in (*ids.values(), mean) for j in group], timeout_s=120)
    assert len(results) == 5 * len(sources)
    assert all(r.status is Status.OK for r in results.values()), [r.error for r in results.values() if r.error]
    for n in range(len(sources)):
        mj, sd = results[ids["ffs-mj-5m"][n]], results[ids["ffs-sd-5m"][n]]
        assert mj.detectors is None and sd.detectors is None  # single-detector results keep their shape
        assert mj.model is not None and sd.model is not None and "+" in mj.model and mj.model != sd.model
        for both in (results[ids[PAIR][n]], results[ids["ffs-sd-5m,ffs-mj-5m"][n]], results[mean[n]]):
            parts = {d.model: d for d in both.detectors or []}
            assert set(parts) == {mj.model, sd.model} and both.fusion is Fusion.MAX
            # the same weights score the same bytes alike, alone or in an ensemble (float32 batch noise aside)
            assert parts[mj.model].score == pytest.approx(mj.score, abs=1e-5)
            assert parts[sd.model].score == pytest.approx(sd.score, abs=1e-5)
            assert both.score == pytest.approx(max(mj.score or 0, sd.score or 0), abs=1e-5)


def test_a_job_no_live_worker_serves_is_refused_at_submit_unless_queued_anyway(
    fleet: tuple[Stack, list[WorkerProcess]],
) -> None:
    stack, _ = fleet
    producer = stack.producer("refusal")
    source = _sources(stack, 1)[0]
    for model in ("ffs-v2", "ffs-sd-5m,ffs-v2"):
        with pytest.raises(PermanentError) as info:
            producer.submit(source, model=model)
        assert info.value.code is ErrorCode.UNSERVED_MODEL and "live workers serve" in info.value.message
    lane = queue_name("interactive", ["ffs-v2"])
    assert stack.client().llen(lane) == 0
    job_id = producer.submit(source, model="ffs-v2", queue_anyway=True)
    assert stack.client().llen(lane) == 1  # waits in its own lane for a worker that serves ffs-v2
    assert producer.get_result(job_id) is None


def test_a_cached_nobody_is_read_again_before_a_job_is_accepted(
    redis_srv: RedisServer, s3_srv: S3Server, queue_http: HttpServer, weights: Path
) -> None:
    """The producer reuses an advert read for a second; an empty one ("no live worker, so accept") must not hide
    a worker that advertised since, or its first submits would queue jobs nobody will take."""
    stack = new_stack(redis_srv, s3_srv, queue_http, weights)
    producer = stack.producer("cached")
    producer.check_detectors([("ffs-sd-5m",)])  # no worker at all: accepted, and "nobody" is cached
    advert = serving.Advert("late-worker", frozenset({"ffs-mj-5m"}))
    serving.advertise(stack.client(), advert, forget_s=60)
    with pytest.raises(PermanentError) as info:
        producer.check_detectors([("ffs-sd-5m",)])  # within the second: must read again, then refuse
    assert info.value.code is ErrorCode.UNSERVED_MODEL
    producer.check_detectors([("ffs-mj-5m",)])  # served: accepted
