"""Engine processes (``batch.processes``): same contract and scores as the one-process engine; dead children.

Children are real ``spawn`` processes. The contract tests share one pool whose children build a fake engine
from this module (no model load); the parity test runs the seeded checkpoint in children per backend. Children
import this module, so what only the parent needs (timm, the fetch stack) is imported inside the tests.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from producers.contract import Status
from producers.errors import ConfigError
from tests.support.fetchers import MemoryFetcher
from tests.support.images import corpus, encode, photo
from tests.support.pipelines import make_pipeline
from worker.core import registry
from worker.core.pipeline import Outcome, Pipeline
from worker.inference import process_pool as engine_pool
from worker.inference.imaging import DecodePolicy
from worker.inference.process_pool import EnginePool, resolve_processes
from worker.service.settings import WorkerSettings

SPEC = registry.get("ffs-mj-5m")
CHUNK = 4
GOOD = {f"mem://{c.name}": c.data for c in corpus()}


class MeanClassifier:
    """Score = sigmoid(4 * mean): deterministic, no model. The mean is numpy's float64 pairwise sum: torch's
    float32 mean depends on the process's intra-op thread count, which differs between parent and children
    (and with what earlier tests set), and moved scores by ~6e-8."""

    def predict(self, batch: Sequence[torch.Tensor]) -> list[float]:
        return [1 / (1 + math.exp(-4 * float(np.asarray(t, dtype=np.float64).mean()))) for t in batch]


def _kill_self() -> bytes:
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    raise AssertionError("unreachable")


def fake_engine() -> Pipeline:
    """Built in each child (spawn imports this module): a fake model; ``mem://die`` kills the child."""
    items: dict[str, Any] = {**GOOD, "mem://die": _kill_self}
    return make_pipeline(SPEC, MeanClassifier(), MemoryFetcher(items), DecodePolicy(), batch_size=CHUNK)


def broken_engine() -> Pipeline:
    raise ConfigError("weights not found: /nowhere.pt")


def _summary(outcomes: list[Outcome]) -> list[tuple[str, str, float | None]]:
    return [(o.source, o.error.code if o.error else "ok", o.score) for o in outcomes]


@pytest.fixture(scope="module")
def pool() -> Iterator[EnginePool]:
    p = EnginePool(fake_engine, 2, chunk_size=CHUNK, model_ref=SPEC.ref)
    yield p
    p.close()


def test_same_outcomes_in_order_as_one_process(pool: EnginePool) -> None:
    sources = [*GOOD, "mem://missing", *GOOD, "mem://nothing", *GOOD]
    expected = _summary(list(fake_engine().classify(sources)))
    assert _summary(list(pool.classify(sources))) == expected
    assert {code for _, code, _ in expected} == {"ok", "not-found"}
    assert pool.started == 2 and os.getpid() not in pool.pids
    pids = pool.pids
    assert _summary(list(pool.classify(sources))) == expected
    assert pool.pids == pids  # children are reused across calls
    assert list(pool.classify([])) == []


def test_a_dead_child_fails_its_chunk_only_and_is_replaced(pool: EnginePool) -> None:
    good = list(GOOD)[:CHUNK]
    sources = [*good, *good[:2], "mem://die", good[0], *good]
    outcomes = list(pool.classify(sources))
    assert [o.source for o in outcomes] == sources
    statuses = [o.status for o in outcomes]
    assert statuses == [Status.OK] * CHUNK + [Status.ERROR] * CHUNK + [Status.OK] * CHUNK
    error = outcomes[CHUNK].error
    assert error is not None and error.code == "internal" and not error.retryable
    assert "engine process" in error.message and "died (signal SIGKILL)" in error.message
    assert outcomes[CHUNK].model == SPEC.ref
    assert all(o.ok for o in pool.classify(good * 3))  # a fresh child took the dead one's place
    assert pool.started <= 2


def test_abandoned_classify_leaves_children_idle(pool: EnginePool) -> None:
    stream = pool.classify(list(GOOD) * 4)
    first = next(stream)
    with pytest.raises(RuntimeError, match="one classify at a time"):
        next(pool.classify(list(GOOD)))
    stream.close()
    assert first.source == next(iter(GOOD))
    assert [o.source for o in pool.classify(list(GOOD))] == list(GOOD)


def test_children_start_lazily_one_per_chunk_and_stop_on_close() -> None:
    p = EnginePool(fake_engine, 2, chunk_size=CHUNK, model_ref=SPEC.ref)
    assert p.started == 0
    assert [o.status for o in p.classify(list(GOOD)[:CHUNK])] == [Status.OK] * CHUNK
    [child] = p._children  # one chunk, one child
    p.close()
    assert child.process.exitcode == 0 and p.started == 0


def test_start_builds_every_child_in_the_background_for_the_next_classify() -> None:
    p = EnginePool(fake_engine, 2, chunk_size=CHUNK, model_ref=SPEC.ref)
    try:
        p.start()
        p.start()  # a second call starts nothing more
        sources = [*GOOD, "mem://missing", *GOOD]
        assert _summary(list(p.classify(sources))) == _summary(list(fake_engine().classify(sources)))
        assert p.started == 2 and len(set(p.pids)) == 2
    finally:
        p.close()
    assert p.started == 0


def test_close_during_a_background_start_leaves_no_child() -> None:
    before = set(multiprocessing.active_children())
    p = EnginePool(fake_engine, 2, chunk_size=CHUNK, model_ref=SPEC.ref)
    p.start()
    p.close()  # waits for the start, then stops what it started
    assert p.started == 0 and set(multiprocessing.active_children()) <= before
    with pytest.raises(RuntimeError, match="closed"):
        p.start()


def test_a_child_started_early_that_cannot_build_its_engine_fails_the_classify() -> None:
    broken = EnginePool(broken_engine, 2, chunk_size=CHUNK, model_ref=SPEC.ref)
    broken.start()
    with pytest.raises(ConfigError, match="weights not found"):
        list(broken.classify(list(GOOD) * 3))
    assert broken.started == 0


def test_a_child_that_cannot_build_its_engine_is_a_config_error() -> None:
    broken = EnginePool(broken_engine, 1, chunk_size=CHUNK, model_ref=SPEC.ref)
    with pytest.raises(ConfigError, match="weights not found"):
        list(broken.classify(list(GOOD)))
    assert broken.started == 0
    with pytest.raises(RuntimeError, match="closed"):
        list(broken.classify(list(GOOD)))


@pytest.mark.parametrize(
    ("setting", "device", "cores", "expected"),
    [
        (0, "cpu", 2, 2),
        (0, "cpu", 8, 8),
        (0, "cpu", 1, 1),
        (0, "cuda", 8, 1),
        (1, "cpu", 8, 1),
        (3, "cpu", 2, 3),
    ],
)
def test_resolve_processes(
    monkeypatch: pytest.MonkeyPatch, setting: int, device: str, cores: int, expected: int
) -> None:
    monkeypatch.setattr(engine_pool, "usable_cores", lambda: cores)
    assert resolve_processes(setting, device) == expected


# --- the real model: identical scores ------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from tests.support.checkpoints import seeded_state, write_snapshot

    root = tmp_path_factory.mktemp("pool")
    weights = write_snapshot(SPEC, root / "snapshot", seeded_state(SPEC, 0))
    sources = []
    for i, (w, h) in enumerate([(320, 240), (97, 311), (640, 480), (50, 50), (1000, 30), (256, 256), (33, 400)]):
        path = root / f"{i}.{'jpg' if i % 2 else 'png'}"
        path.write_bytes(encode(photo(w, h, 60 + i), "JPEG" if i % 2 else "PNG"))
        sources.append(str(path))
    (root / "notes.txt").write_text("not an image")
    return weights, [*sources[:3], str(root / "missing.jpg"), *sources[3:], str(root / "notes.txt")]


def _assert_same(got: list[tuple[str, str, float | None]], expected: list[tuple[str, str, float | None]]) -> None:
    """Same sources, codes and order; scores equal up to float noise (a batch's make-up may differ between one
    process and the engine processes, and CPU kernels round differently per batch size, by ~1e-7)."""
    assert [(s, c) for s, c, _ in got] == [(s, c) for s, c, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        assert (a is None) == (b is None) and (a is None or abs(a - (b or 0.0)) <= 1e-5)


@pytest.fixture()
def torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # from_settings sets it for model.threads


@pytest.mark.usefixtures("torch_threads")
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_scores_identical_to_one_process(files: tuple[Path, list[str]], backend: str) -> None:
    from worker.service import builder

    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    weights, sources = files

    def settings(processes: int) -> WorkerSettings:
        return WorkerSettings.model_validate(
            {
                "model": {
                    "name": SPEC.name,
                    "weights": str(weights),
                    "device": "cpu",
                    "backend": backend,
                    "threads": 1,
                },
                "batch": {"max_size": 3, "processes": processes},
            }
        )

    single = builder.scanner(settings(1))
    assert single.pool is None
    expected = _summary(list(single.classify(sources)))
    single.close()
    many = builder.scanner(settings(2))
    try:
        assert many.pool is not None and many.pool.processes == 2
        _assert_same(_summary(list(many.classify(sources[:3]))), expected[:3])
        assert many.pool.started == 0  # lazy; and one batch runs in this process
        _assert_same(_summary(list(many.classify(sources))), expected)  # errors, order, scores
        children = list(many.pool._children)
        assert len(children) == 2
    finally:
        many.close()
    assert all(c.process.exitcode == 0 for c in children) and many.pool.started == 0  # close() stopped them
    codes = [code for _, code, _ in expected]
    assert codes.count("ok") == 7 and codes[3] == "not-found" and codes[-1] == "not-an-image"
