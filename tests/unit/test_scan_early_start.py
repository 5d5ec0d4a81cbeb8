"""A scan of more than one batch starts its engine processes before this process loads its model, where the graph is
cached: same outcomes as a lazy start, and a failed load stops them (no orphan process).

Children are real processes (the fork server's); the ones of the failure tests cannot build their engine (their
weights are not a checkpoint), which is what a failed load looks like to them as well.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from producers.contract import Status
from producers.errors import ConfigError
from tests.support.images import encode, photo
from worker.core import registry
from worker.inference.graph_cache import GraphCache, GraphKey
from worker.inference.process_pool import EnginePool
from worker.service import builder, loading, scan
from worker.service.cli import build_parser
from worker.service.settings import WorkerSettings

pytest.importorskip("onnxruntime")

SPEC = registry.get("ffs-mj-5m")


def _settings(weights: Path, cache: Path, **model: Any) -> WorkerSettings:
    return WorkerSettings.model_validate(
        {
            "model": {
                "name": SPEC.name,
                "weights": str(weights),
                "device": "cpu",
                "onnx_cache_dir": str(cache),
                "threads": 1,
                **model,
            },
            "batch": {"max_size": 3, "processes": 2},
        }
    )


def _fake_cached(tmp_path: Path) -> WorkerSettings:
    """Settings whose graph cache holds an entry for their weights file (neither is a real model)."""
    weights, cache = tmp_path / "weights.pt", tmp_path / "graphs"
    weights.write_bytes(b"not a checkpoint")
    sha = loading.weights_sha256(weights, cache)
    graph = GraphCache(cache).paths(GraphKey.of(SPEC, sha))[0]
    graph.parent.mkdir(parents=True, exist_ok=True)
    graph.write_bytes(b"not a graph")
    return _settings(weights, cache)


def test_cached_graph_start_needs_one_local_detector_on_onnx_with_its_graph_cached(tmp_path: Path) -> None:
    settings = _fake_cached(tmp_path)
    assert builder.cached_graph_start(settings)
    for change in [
        {"backend": "torch"},
        {"preprocess": "tensor"},  # torchvision decode: the children import torch
        {"onnx_cache_dir": ""},  # no cache: every child exports
        {"weights": "hf-hub:someone/else"},  # never downloads here
        {"weights": str(tmp_path / "missing.pt")},  # the load reports it
        {"weights": __file__},  # another file: no graph cached for it
        {"names": f"{SPEC.name},ffs-sd-5m"},
    ]:
        changed = settings.model_copy(update={"model": settings.model.model_copy(update=change)})
        assert not builder.cached_graph_start(changed), change


def _spy_pools(monkeypatch: pytest.MonkeyPatch) -> list[EnginePool]:
    pools: list[EnginePool] = []
    real = builder.engine_pool

    def engine_pool(*args: Any, **kwargs: Any) -> EnginePool | None:
        pool = real(*args, **kwargs)
        if pool is not None:
            pools.append(pool)
        return pool

    monkeypatch.setattr(builder, "engine_pool", engine_pool)
    return pools


def test_a_failed_load_stops_the_engine_processes_started_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _fake_cached(tmp_path)
    pools = _spy_pools(monkeypatch)
    started_before_load = []

    def failing_load(_: WorkerSettings) -> list[Any]:
        started_before_load.append(bool(pools) and bool(pools[0]._starters))
        raise ConfigError("model ffs-mj-5m: weights unreadable")

    monkeypatch.setattr(builder, "load_models", failing_load)
    before = set(multiprocessing.active_children())
    with pytest.raises(ConfigError, match="weights unreadable"):
        builder.scanner(settings, start_early=True)
    assert started_before_load == [True]
    [pool] = pools
    assert pool.started == 0 and set(multiprocessing.active_children()) <= before
    with pytest.raises(RuntimeError, match="closed"):
        list(pool.classify(["x.jpg"]))


def test_without_start_early_or_a_cached_graph_the_pool_starts_after_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _fake_cached(tmp_path)
    pools = _spy_pools(monkeypatch)

    def failing_load(_: WorkerSettings) -> list[Any]:
        raise ConfigError("no")

    monkeypatch.setattr(builder, "load_models", failing_load)
    with pytest.raises(ConfigError):
        builder.scanner(settings)
    uncached = settings.model_copy(update={"model": settings.model.model_copy(update={"onnx_cache_dir": ""})})
    with pytest.raises(ConfigError):
        builder.scanner(uncached, start_early=True)
    assert pools == []


@pytest.mark.parametrize(
    ("count", "batch", "inputs", "early"),
    [(4, 3, "folder", True), (3, 3, "folder", False), (0, 1, "s3", False)],
)
def test_scan_starts_early_for_more_than_one_batch_of_local_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, batch: int, inputs: str, early: bool
) -> None:
    for i in range(count):
        (tmp_path / f"{i}.jpg").write_bytes(b"jpeg")
    seen: list[bool] = []

    def scanner(*_: Any, start_early: bool = False, **__: Any) -> Any:
        seen.append(start_early)
        raise ConfigError("stop here")

    monkeypatch.setattr(builder, "scanner", scanner)
    source = str(tmp_path) if inputs == "folder" else "s3://bucket/prefix/"  # not listed before the load
    args = build_parser().parse_args(["scan", "--no-progress", "--batch-size", str(batch), source])
    with pytest.raises(ConfigError, match="stop here"):
        scan.run_scan(args)
    assert seen == [early]


def test_early_start_scores_as_a_lazy_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.checkpoints import seeded_state, write_snapshot

    weights = write_snapshot(SPEC, tmp_path / "snapshot", seeded_state(SPEC, 0))
    sources = []
    for i in range(7):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(encode(photo(200 + 40 * i, 180, i), "JPEG"))
        sources.append(str(path))
    sources.insert(2, str(tmp_path / "missing.jpg"))
    settings = _settings(weights, tmp_path / "graphs", backend="onnx")

    lazy = builder.scanner(settings, start_early=True)  # nothing cached yet: exports, then starts lazily
    try:
        assert isinstance(lazy.pool, EnginePool) and lazy.pool.started == 0
        expected = [(o.source, o.status, o.score, o.model) for o in lazy.classify(sources)]
    finally:
        lazy.close()

    pools = _spy_pools(monkeypatch)
    real_load = loading.load_models
    started_before_load = []

    def load_models(s: WorkerSettings) -> Any:
        started_before_load.append(bool(pools) and bool(pools[0]._starters or pools[0].started))
        return real_load(s)

    monkeypatch.setattr(builder, "load_models", load_models)
    early = builder.scanner(settings, start_early=True)
    try:
        assert started_before_load == [True]
        assert isinstance(early.pool, EnginePool) and early.pool.model_ref == early.pipeline.model
        got = [(o.source, o.status, o.score, o.model) for o in early.classify(sources)]
        assert early.pool.started == 2
    finally:
        early.close()
    assert [g[:2] + g[3:] for g in got] == [e[:2] + e[3:] for e in expected]
    assert all((a is None) == (b is None) for (_, _, a, _), (_, _, b, _) in zip(got, expected, strict=True))
    assert all(abs(a - b) <= 1e-6 for (_, _, a, _), (_, _, b, _) in zip(got, expected, strict=True) if a and b)
    assert [s for _, s, _, _ in got].count(Status.ERROR) == 1
