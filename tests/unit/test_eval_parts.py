"""The pure parts of ``fakesake eval`` around the metrics: labelled inputs, perturbations, the report."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from producers.errors import ConfigError, ErrorCode, PermanentError
from tests.support.images import encode, photo
from worker.core.ports import Fetched
from worker.core.registry import Thresholds
from worker.evaluation import dataset
from worker.evaluation.perturb import Perturbation, PerturbingFetcher, parse_perturbations
from worker.evaluation.report import build_report, render_markdown, score_row
from worker.inference.imaging import DecodePolicy, decode


def test_labelled_inputs_from_every_flag(tmp_path: Path) -> None:
    csv_manifest = tmp_path / "labels.csv"
    csv_manifest.write_text("source,label,dataset\na.jpg,fake,sd\nb.jpg,real,\n")
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text('{"source": "s3://b/c.png", "label": "ai"}\n\n{"source": "d.png", "label": 0}\n')
    inputs = dataset.labelled_inputs(
        real=["r/"], ai=["x.png"], datasets=["mj=s3://bucket/mj/:ai"], manifests=[csv_manifest, jsonl]
    )
    assert [(i.source, i.label, i.dataset) for i in inputs] == [
        ("r/", "human", "real"),
        ("x.png", "ai", "ai"),
        ("s3://bucket/mj/", "ai", "mj"),
        ("a.jpg", "ai", "sd"),
        ("b.jpg", "human", "real"),
        ("s3://b/c.png", "ai", "ai"),
        ("d.png", "human", "real"),
    ]


@pytest.mark.parametrize("spec", ["mj", "mj=folder", "=folder:ai", "mj=folder:maybe", "mj=:ai"])
def test_malformed_dataset_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        dataset.parse_dataset(spec)


def test_a_manifest_without_labels_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("source\na.jpg\n")
    with pytest.raises(ConfigError, match="'label'"):
        dataset.read_manifest(path)


def test_expand_keeps_label_and_dataset_for_each_expanded_source() -> None:
    def expand(items: Iterable[str]) -> Iterator[str]:
        for item in items:
            yield from (f"{item}/1.jpg", f"{item}/2.jpg")

    out = list(dataset.expand([dataset.LabelledInput("d", "ai", "mj")], expand))
    assert [(s.source, s.label, s.dataset) for s in out] == [("d/1.jpg", "ai", "mj"), ("d/2.jpg", "ai", "mj")]


def test_perturbation_specs() -> None:
    got = parse_perturbations(["jpeg:95,75,50", "resize:0.5", "crop:0.9", "jpeg:75"])
    assert [p.name for p in got] == ["jpeg:95", "jpeg:75", "jpeg:50", "resize:0.5", "crop:0.9"]
    for bad in ["jpeg:101", "jpeg:7.5", "blur:2", "resize:0", "crop:1.5", "crop:", "jpeg:x"]:
        with pytest.raises(ConfigError):
            parse_perturbations([bad])


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        return Fetched(self.data, source, "image/png", {"etag": "e"})


_DECODE = DecodePolicy()


def _fetch(p: Perturbation, data: bytes) -> Image.Image:
    fetched = PerturbingFetcher(_Bytes(data), p, lambda b: decode(b, _DECODE)).fetch("x")
    assert fetched.meta == {"etag": "e", "perturbation": p.name}
    return Image.open(io.BytesIO(fetched.data))


def test_perturbing_fetcher_reencodes_the_fetched_bytes() -> None:
    png = encode(photo(120, 80, 3), "PNG")
    jpeg = _fetch(Perturbation("jpeg", 50), png)
    assert (jpeg.format, jpeg.size) == ("JPEG", (120, 80))
    assert _fetch(Perturbation("resize", 0.5), png).size == (60, 40)
    crop = _fetch(Perturbation("crop", 0.5), png)
    assert (crop.format, crop.size) == ("PNG", (60, 40))
    # the centre crop holds the centre pixels, unchanged (PNG is lossless)
    assert crop.getpixel((0, 0)) == photo(120, 80, 3).getpixel((30, 20))


def test_perturbing_fetcher_fails_like_the_pipeline_on_bad_bytes() -> None:
    with pytest.raises(PermanentError) as info:
        _fetch(Perturbation("jpeg", 75), b"plain text, not an image")
    assert info.value.code is ErrorCode.NOT_AN_IMAGE


def _row(truth: str, dataset_name: str, score: float | None, perturbation: str | None = None) -> dict:
    error = None if score is not None else ("not-an-image", "bad bytes")
    record = {
        "source": f"{dataset_name}/{score}",
        "status": "ok" if error is None else "error",
        "score": score,
        "label": None,
        "band": None,
        "model": "ffs-mj-5m@1.0",
        "error": None if error is None else {"code": error[0], "message": error[1]},
    }
    return score_row(record, truth, dataset_name, perturbation)


def test_report_on_single_class_sets_says_auc_is_undefined() -> None:
    rows = [_row("ai", "mj", v) for v in (0.2, 0.7, 0.9)]
    report = build_report(rows, model="ffs-mj-5m@1.0", thresholds=Thresholds(0.35, 0.65), resamples=10)
    o = report["overall"]
    assert o["auc"] is None and o["average_precision"] is None and "single-class" in o["undefined_reason"]
    assert o["tpr_at_fpr"]["0.01"]["tpr"] is None
    (row,) = report["datasets"]
    assert row["name"] == "mj" and row["label"] == "ai" and row["auc"] is None and row["auc_undefined_reason"]
    assert row["accuracy"] == pytest.approx(2 / 3)  # argmax: 0.7 and 0.9 are called ai
    assert row["band"]["counts"] == {"ai": 2, "uncertain": 0, "human": 1}
    json.dumps(report, allow_nan=False)
    assert "undefined" in render_markdown(report)


def test_report_decisions_failures_and_perturbations() -> None:
    rows = [_row("human", "real", v) for v in (0.1, 0.4, 0.5, 0.8)] + [_row("human", "real", None)]
    rows += [_row("ai", "ai", v) for v in (0.3, 0.6, 0.9, 0.95)]
    rows += [_row("ai", "ai", 0.05, "jpeg:50"), _row("human", "real", 0.1, "jpeg:50")]
    report = build_report(
        rows, model="ffs-mj-5m@1.0", thresholds=Thresholds(0.35, 0.65), perturbations=["jpeg:50"], resamples=50
    )
    o = report["overall"]
    assert (o["n"], o["n_real"], o["n_ai"], o["n_failed"]) == (9, 5, 4, 1)
    # argmax 0.5: 0.5 itself is human (argmax takes the first class on a tie)
    assert o["confusion"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
    assert o["accuracy"] == 0.75
    # band: 0.4, 0.5, 0.6 abstain; decided: 0.1 h ok, 0.8 ai wrong, 0.3 h wrong, 0.9/0.95 ai ok
    assert o["band"]["abstention_rate"] == pytest.approx(3 / 8)
    assert o["band"]["accuracy_decided"] == pytest.approx(3 / 5)
    assert o["auc"] is not None and o["auc_ci95"]["low"] <= o["auc"] <= o["auc_ci95"]["high"]
    assert set(o["tpr_at_fpr"]) == {"0.01", "0.001"} and o["tpr_at_fpr"]["0.01"]["certifiable"] is False
    assert report["failures"]["by_code"] == {"not-an-image": 1}
    assert report["failures"]["items"][0]["source"] == "real/None"
    (p,) = report["perturbations"]
    assert p["name"] == "jpeg:50" and p["overall"]["auc"] == 0.0
    md = render_markdown(report, ["roc.png"])
    assert "## Perturbations" in md and "jpeg:50" in md and "(-" in md and "![roc.png](roc.png)" in md


def test_the_fetcher_wrap_pickles_for_engine_processes() -> None:
    import pickle
    from functools import partial

    from worker.evaluation.perturb import Wrap

    wrap = pickle.loads(pickle.dumps(Wrap(Perturbation("resize", 0.5), partial(decode, policy=_DECODE))))
    fetched = wrap(_Bytes(encode(photo(40, 20, 1), "PNG"))).fetch("x")
    assert Image.open(io.BytesIO(fetched.data)).size == (20, 10)
