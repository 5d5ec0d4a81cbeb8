"""The ONNX graph cache: keys, atomic entries, stale/corrupt entries rebuilt, and a warm start without export."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.checkpoints import seeded_module, seeded_state, write_snapshot
from tests.support.images import photo
from worker.core import registry
from worker.inference import onnx_export
from worker.inference.graph_cache import OPSET, GraphCache, GraphKey
from worker.inference.loader import LoadedDetector, weights_sha256
from worker.inference.onnx_classifier import export_graph
from worker.inference.onnx_start import load_onnx
from worker.inference.pixels import to_pixels

pytest.importorskip("onnxruntime")

SPEC = registry.get("ffs-mj-5m")
KEY = GraphKey.of(SPEC, "ab" * 32)


def test_key_names_everything_the_graph_depends_on() -> None:
    assert KEY.torch == torch.__version__.split("+")[0] or KEY.torch.startswith(torch.__version__.split("+")[0])
    assert KEY.opset == onnx_export.OPSET == OPSET  # the key names the opset the exporter writes
    digests = {
        KEY.digest,
        replace(KEY, weights_sha256="cd" * 32).digest,
        replace(KEY, arch="other").digest,
        replace(KEY, size_px=384).digest,
        replace(KEY, torch="9.9").digest,
        replace(KEY, timm="9.9").digest,
        replace(KEY, onnxruntime="9.9").digest,
        replace(KEY, opset=18).digest,
        replace(KEY, mean=(0.5, 0.5, 0.5)).digest,
        replace(KEY, format=1).digest,
        GraphKey.of(registry.get("ffs-v2"), "ab" * 32).digest,
    }
    assert len(digests) == 11
    assert GraphKey.of(SPEC, "ab" * 32).digest == KEY.digest  # stable


def test_store_then_load_leaves_no_partial_files(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path / "c")
    assert cache.load(KEY) is None
    assert cache.store(KEY, b"graph bytes")
    assert cache.load(KEY) == b"graph bytes"
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".onnx"]


def test_an_upgrade_removes_the_entries_it_supersedes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A new torch/timm/onnxruntime/opset/format for the same model replaces its entry; other models' stay."""
    cache = GraphCache(tmp_path)
    older = [replace(KEY, torch="2.0.0"), replace(KEY, format=1), replace(KEY, onnxruntime="1.0", opset=13)]
    others = [replace(KEY, weights_sha256="cd" * 32), GraphKey.of(registry.get("ffs-v2"), "ab" * 32)]
    for i, key in enumerate(older + others):  # each stored alone (storing one supersedes the others)
        assert GraphCache(tmp_path / f"one{i}").store(key, key.digest.encode())
        for path in (tmp_path / f"one{i}").glob("*.*"):
            path.rename(tmp_path / path.name)
    (tmp_path / "notes.json").write_text("{}")  # not an entry: left alone
    with caplog.at_level(logging.INFO, logger="worker.inference.graph_cache"):
        assert cache.store(KEY, b"graph")
    left = {p.name for p in tmp_path.iterdir() if p.is_file()}
    assert left == {"notes.json"} | {f"{k.digest}{ext}" for k in [KEY, *others] for ext in (".onnx", ".json")}
    assert all(cache.load(k) == k.digest.encode() for k in others) and cache.load(KEY) == b"graph"
    assert caplog.text.count("superseded by") == len(older)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda g, m: g.write_bytes(b"graph bytez"), "corrupt"),
        (lambda g, m: m.write_text(json.dumps({**json.loads(m.read_text()), "key": {"arch": "x"}})), "stale"),
        (lambda g, m: m.write_text("{not json"), "unreadable"),
    ],
    ids=["flipped-graph", "stale-key", "broken-sidecar"],
)
def test_damaged_entry_is_logged_and_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, why) -> None:  # type: ignore[no-untyped-def]
    cache = GraphCache(tmp_path)
    cache.store(KEY, b"graph bytes")
    graph_path, meta_path = cache.paths(KEY)
    damage(graph_path, meta_path)
    with caplog.at_level(logging.WARNING):
        assert cache.load(KEY) is None
    assert why in caplog.text
    assert not graph_path.exists() and not meta_path.exists()


def test_unwritable_directory_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert GraphCache(blocker / "sub").store(KEY, b"g") is False


def test_weights_hash_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    cache = GraphCache(tmp_path / "c")
    calls: list[Path] = []

    def count(path: Path) -> str:
        calls.append(path)
        return weights_sha256(path)

    first = cache.weights_sha256(weights, count)
    assert cache.weights_sha256(weights, count) == first == weights_sha256(weights)
    assert len(calls) == 1
    weights.write_bytes(b"two, longer")
    assert cache.weights_sha256(weights, count) == weights_sha256(weights) != first
    assert len(calls) == 2


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_snapshot(SPEC, tmp_path_factory.mktemp("w"), seeded_state(SPEC, 0))


def _loader(calls: list[int]):  # type: ignore[no-untyped-def]
    def load() -> LoadedDetector:
        calls.append(1)
        return LoadedDetector(SPEC, seeded_module(SPEC, 0).eval(), torch.device("cpu"))

    return load


def _in_process(load: Callable[[], LoadedDetector], ref: str) -> bytes:
    return export_graph(load())  # the closures above count calls, so they run here, not in a child process


def _counted(calls: list[int]) -> dict[str, Any]:
    return {"load": _loader(calls), "export": _in_process}


def test_second_start_uses_the_cache_and_scores_the_same(tmp_path: Path, weights: Path) -> None:
    calls: list[int] = []
    inputs = [to_pixels(photo(300 + 40 * i, 200, i), SPEC.preprocessing) for i in range(4)]
    cold = load_onnx(SPEC, weights, weights_sha256(weights), threads=1, cache_dir=tmp_path, **_counted(calls))
    warm = load_onnx(SPEC, weights, weights_sha256(weights), threads=1, cache_dir=tmp_path, **_counted(calls))
    assert calls == [1]  # exported once
    assert warm.detector is None and warm.graph == cold.graph
    assert warm.predict(inputs) == cold.predict(inputs)


def test_graph_onnxruntime_refuses_is_rebuilt(tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    cache = GraphCache(tmp_path)
    key = GraphKey.of(SPEC, weights_sha256(weights))
    cache.store(key, b"not an onnx graph")  # consistent sidecar: only ORT can tell
    with caplog.at_level(logging.WARNING):
        classifier = load_onnx(SPEC, weights, weights_sha256(weights), threads=1, cache_dir=tmp_path, **_counted(calls))
    assert calls == [1] and "refused by onnxruntime" in caplog.text
    assert cache.load(key) == classifier.graph


def test_no_cache_dir_exports_every_time(tmp_path: Path, weights: Path) -> None:
    calls: list[int] = []
    load_onnx(SPEC, weights, weights_sha256(weights), threads=1, cache_dir=None, **_counted(calls))
    load_onnx(SPEC, weights, weights_sha256(weights), threads=1, cache_dir=None, **_counted(calls))
    assert calls == [1, 1]


def test_device_setting_decided_without_torch_when_no_gpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.inference import onnx_start

    assert onnx_start.runs_on_cpu("cpu") and not onnx_start.runs_on_cpu("cuda")
    monkeypatch.setattr(onnx_start.os.path, "exists", lambda path: False)
    monkeypatch.setattr("worker.inference.loader.resolve_device", lambda device: pytest.fail("asked torch"))
    assert onnx_start.runs_on_cpu("auto")
    monkeypatch.setattr(onnx_start.os.path, "exists", lambda path: True)  # a GPU node: torch decides
    monkeypatch.setattr("worker.inference.loader.resolve_device", lambda device: torch.device("cuda"))
    assert not onnx_start.runs_on_cpu("auto")


def test_a_warm_start_takes_the_weights_hash_from_the_cache(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identity stamp, the calibration check and the graph key share one hash, and a warm start takes it
    from the cache's memo instead of reading the whole checkpoint again (large models take seconds)."""
    from worker.inference import loader
    from worker.service import loading
    from worker.service.settings import WorkerSettings

    settings = WorkerSettings.model_validate(
        {"model": {"weights": str(weights), "backend": "onnx", "onnx_cache_dir": str(tmp_path)}}
    )
    first = loading.load_model(settings)  # cold: hashes, exports, stores the graph and the hash
    hashed: list[Path] = []
    real = loader.weights_sha256
    monkeypatch.setattr(loader, "weights_sha256", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(loading, "_HASHED", {})  # a fresh process
    warm = loading.load_model(settings)
    assert hashed == [] and warm.spec.identity == first.spec.identity
    assert warm.spec.weights_sha256 == real(weights)
