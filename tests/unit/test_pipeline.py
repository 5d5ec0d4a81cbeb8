"""The scan pipeline: one outcome per input, in order; per-item and per-batch error isolation; records.

Real decoding (Pillow, torch preprocessing) with a fake classifier; the builder tests load seeded weights."""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

from producers.contract import Band, Label, Status
from producers.errors import ConfigError, ErrorCode, FakesakeError, TransientError
from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.fetchers import MemoryFetcher
from tests.support.images import corpus, encode, hostile
from worker.core import registry
from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.core.pipeline import Outcome, Pipeline, Prepared, Preparer, judge
from worker.core.registry import Thresholds
from worker.inference.imaging import DecodePolicy
from worker.inference.preprocess import from_bytes
from worker.service import builder, loading
from worker.service.scan import outcome_record
from worker.service.settings import BatchSettings, ModelSettings, WorkerSettings

SPEC = registry.get("ffs-mj-5m")
GOOD = {f"mem://{c.name}": c.data for c in corpus()}
POISON_RGB = (1, 2, 3)
POISON = encode(Image.new("RGB", (64, 64), POISON_RGB), "PNG")  # the classifier fake fails on this input


def _is_poison(t: torch.Tensor) -> bool:
    expected = (POISON_RGB[0] / 255 - SPEC.preprocessing.mean[0]) / SPEC.preprocessing.std[0]
    return float(t.flatten(1).std(1).max()) == 0.0 and abs(float(t[0, 0, 0]) - expected) < 1e-5


class FakeClassifier:
    """Score = sigmoid(mean); raises on a batch holding the POISON image; records batch sizes."""

    def __init__(self, output: str = "ok") -> None:
        self.batches: list[int] = []
        self.output = output

    def predict(self, batch: Sequence[torch.Tensor]) -> list[float]:
        self.batches.append(len(batch))
        if any(_is_poison(t) for t in batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        scores = [float(torch.sigmoid(t.mean() * 4)) for t in batch]
        return {"ok": scores, "short": scores[:-1], "nan": [math.nan] * len(batch)}[self.output]


def _boom() -> bytes:
    raise KeyError("a bug in some adapter")


def _transient() -> bytes:
    raise TransientError(ErrorCode.FETCH_FAILED, "503 SlowDown")


def _preparer(fetcher: MemoryFetcher) -> Preparer:
    return Preparer(fetcher, partial(from_bytes, policy=DecodePolicy(), pre=SPEC.preprocessing))


def _engine(
    fetcher: MemoryFetcher,
    classifier: FakeClassifier | None = None,
    *,
    batch_size: int = 16,
    thresholds: Thresholds | None = None,
) -> Pipeline:
    batcher = Batcher((classifier or FakeClassifier()).predict, BatchPolicy(batch_size, max_wait_s=0.5)).start()
    return Pipeline(SPEC, _preparer(fetcher), batcher, window=2 * batch_size, thresholds=thresholds)


def test_one_outcome_per_input_in_order_with_codes() -> None:
    bad = {f"mem://{name}": factory() for name, (factory, _code) in hostile().items()}
    items: dict[str, object] = {**GOOD, **bad, "mem://boom": _boom, "mem://slow": _transient}
    sources = [*GOOD, "mem://missing", *bad, "mem://boom", "mem://slow", *GOOD]
    classifier = FakeClassifier()
    outcomes = list(_engine(MemoryFetcher(items), classifier, batch_size=4).classify(sources))  # type: ignore[arg-type]
    assert [o.source for o in outcomes] == sources
    expected = {
        **{s: "ok" for s in GOOD},
        "mem://missing": "not-found",
        **{f"mem://{n}": code for n, (_f, code) in hostile().items()},
        "mem://boom": "internal",
        "mem://slow": "fetch-failed",
    }
    assert {o.source: (o.error.code if o.error else "ok") for o in outcomes} == expected
    assert all(1 <= size <= 4 for size in classifier.batches)
    slow = next(o for o in outcomes if o.source == "mem://slow")
    assert slow.error is not None and slow.error.retryable


def test_a_failing_batch_fails_only_its_own_items() -> None:
    sources = [f"mem://{i}" for i in range(12)]
    items = {s: GOOD["mem://jpeg-rgb"] for s in sources} | {"mem://5": POISON}
    classifier = FakeClassifier()
    outcomes = list(_engine(MemoryFetcher(items), classifier, batch_size=4).classify(sources))
    failed_batches = [size for size in classifier.batches]  # every batch, in order; exactly one raised
    errors = [o for o in outcomes if o.status is Status.ERROR]
    assert outcomes[5].status is Status.ERROR and sum(failed_batches) == 12
    # the poisoned batch (at most 4 items) failed, every other batch scored
    assert 1 <= len(errors) <= 4 and len(errors) in failed_batches
    failed = outcomes[5]
    assert failed.error is not None and failed.error.code == "internal" and "illegal memory" in failed.error.message
    assert failed.timings.inference_ms is not None


@pytest.mark.parametrize("output", ["short", "nan"])
def test_invalid_classifier_output_is_internal_for_that_batch(output: str) -> None:
    outcomes = list(_engine(MemoryFetcher(GOOD), FakeClassifier(output), batch_size=8).classify(list(GOOD)))
    assert len(outcomes) == len(GOOD)
    assert {o.error.code for o in outcomes if o.error} == {"internal"}


def test_unknown_exceptions_are_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="worker.core.pipeline"):
        [outcome] = _engine(MemoryFetcher({"mem://boom": _boom})).classify(["mem://boom"])
    assert outcome.error is not None and outcome.error.code == "internal" and "KeyError" in outcome.error.message
    record = next(r for r in caplog.records if "mem://boom" in r.getMessage())
    assert record.exc_info is not None


def test_sources_are_consumed_lazily() -> None:
    consumed = 0

    def sources() -> Iterator[str]:
        nonlocal consumed
        for _ in range(1000):
            consumed += 1
            yield "mem://png-1x1"

    stream = _engine(MemoryFetcher(GOOD), batch_size=4).classify(sources())
    next(stream)
    assert consumed <= 3 * 4  # the batch being predicted + at most two batches prepared ahead
    assert sum(1 for _ in itertools.islice(stream, 99)) == 99
    stream.close()  # an abandoned scan must not wait for the other 900


def test_empty_input() -> None:
    assert list(_engine(MemoryFetcher({})).classify([])) == []


def test_ok_record_fields() -> None:
    [outcome] = _engine(MemoryFetcher(GOOD)).classify(["mem://png-rgb"])
    record = json.loads(json.dumps(outcome_record(outcome)))
    fields = {"source", "status", "score", "label", "band", "model", "error", "timings", "source_version", "etag"}
    assert set(record) == fields | {"evidence"}
    assert record["source_version"] is None and record["etag"] is None  # not an S3 object
    assert record["status"] == "ok" and record["model"] == "ffs-mj-5m@1.0" and record["error"] is None
    assert 0.0 <= record["score"] <= 1.0
    assert record["label"] == {"ai": "ai", "human": "human", "uncertain": None}[record["band"]]
    assert {"fetch_ms", "decode_ms", "inference_ms", "total_ms"} <= set(record["timings"])


def test_error_record_fields() -> None:
    [outcome] = _engine(MemoryFetcher({})).classify(["mem://gone"])
    record = json.loads(json.dumps(outcome_record(outcome)))
    assert record["status"] == "error" and record["score"] is None and record["label"] is None
    assert record["error"] == {"code": "not-found", "message": "no such source: mem://gone"}
    assert record["model"] == "ffs-mj-5m@1.0" and "fetch_ms" not in record["timings"]


def test_a_decode_error_keeps_the_fetch_timing() -> None:
    [outcome] = _engine(MemoryFetcher({"mem://html": b"<html>"})).classify(["mem://html"])
    assert outcome.error is not None and outcome.error.code == "not-an-image"
    assert outcome.timings.fetch_ms is not None and outcome.timings.decode_ms is None
    assert outcome.timings.inference_ms is None and outcome.timings.total_ms is not None


def test_thresholds_decide_the_band() -> None:
    outcomes = {
        t: next(_engine(MemoryFetcher(GOOD), thresholds=t).classify(["mem://png-rgb"]))
        for t in (Thresholds(0.0, 0.0), Thresholds(1.0, 1.0))
    }
    assert [(o.band, o.label) for o in outcomes.values()] == [(Band.AI, Label.AI), (Band.HUMAN, Label.HUMAN)]
    assert len({o.score for o in outcomes.values()}) == 1


def test_prepare_returns_tensor_and_timings() -> None:
    prepared = _preparer(MemoryFetcher(GOOD)).prepare("mem://png-3x999")
    assert isinstance(prepared, Prepared) and prepared.tensor.shape == (3, 224, 224)
    assert prepared.fetch_ms >= 0 and prepared.decode_ms > 0
    with pytest.raises(FakesakeError) as info:
        _preparer(MemoryFetcher(GOOD)).prepare("mem://nope")
    assert info.value.code is ErrorCode.NOT_FOUND


def test_outcome_ok_property() -> None:
    assert Outcome("s", Status.OK, "m@1", 0.9, Label.AI, Band.AI).ok
    assert not Outcome("s", Status.ERROR, "m@1").ok


@pytest.mark.parametrize(("window", "prepare_threads"), [(0, 2), (16, 0)])
def test_constructor_validation(window: int, prepare_threads: int) -> None:
    batcher = Batcher(FakeClassifier().predict, BatchPolicy())
    with pytest.raises(ValueError):
        Pipeline(SPEC, _preparer(MemoryFetcher({})), batcher, window=window, prepare_threads=prepare_threads)


def _settings(weights: Path, **model: object) -> WorkerSettings:
    return WorkerSettings(
        model=ModelSettings(name="ffs-mj-5m", weights=str(weights), device="cpu", **model),
        batch=BatchSettings(max_size=5, prepare_threads=2),
    )


def test_from_settings_builds_a_working_engine(tmp_path: Path) -> None:
    write_snapshot(SPEC, tmp_path, seeded_state(SPEC))
    settings = _settings(tmp_path, human_max=0.2, preprocess="fast")
    loaded = loading.load_model(settings)
    assert loaded.device == "cpu" and loaded.decode.keywords["policy"].mode == "fast"  # type: ignore[attr-defined]
    engine = builder.pipeline(settings, MemoryFetcher(GOOD), loaded)
    assert engine.thresholds == Thresholds(human_max=0.2, ai_min=SPEC.thresholds.ai_min)
    assert (engine.window, engine.prepare_threads) == (10, 2)
    outcomes = list(engine.classify(list(GOOD)))
    assert all(o.ok for o in outcomes) and len({o.score for o in outcomes}) > 1
    engine.batcher.stop()


def test_from_settings_rejects_thresholds_crossing_the_spec(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="thresholds"):
        loading.load_model(_settings(tmp_path, human_max=0.9))


def test_judge_bands_the_score_then_lets_provenance_raise_it_and_names_the_bytes_read() -> None:
    """Scans and jobs both call judge(): the model's score is kept, a valid AI claim raises the band to ai, and
    the S3 version and ETag of what was read come along."""
    claim = {"kind": "c2pa", "digital_source_type": "trainedAlgorithmicMedia", "validation": "trusted"}
    meta = {"version_id": "v7", "etag": "e7"}
    plain = judge(0.2, SPEC, None, None, meta, [])
    assert (plain.verdict.score, plain.verdict.band, plain.evidence["decided_by"]) == (0.2, Band.HUMAN, "model")
    assert (plain.source_version, plain.etag) == ("v7", "e7")
    raised = judge(0.2, SPEC, None, None, {}, [claim])
    assert (raised.verdict.score, raised.verdict.band, raised.verdict.label) == (0.2, Band.AI, Label.AI)
    assert raised.evidence["decided_by"] == "provenance" and raised.source_version is None
