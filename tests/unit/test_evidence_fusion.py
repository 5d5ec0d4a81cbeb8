"""The fusion rule: evidence only ever raises the band to ai, never touches the score, never lowers anything."""

from __future__ import annotations

from typing import Any

import pytest

from producers.contract import Band, Label, Verdict
from worker.core.evidence import failed, fuse, source_type_name

C2PA_AI = {"kind": "c2pa", "digital_source_type": "trainedAlgorithmicMedia", "validation": "trusted"}
XMP = {"kind": "xmp"}


def _v(band: Band) -> Verdict:
    label = {Band.AI: Label.AI, Band.HUMAN: Label.HUMAN, Band.UNCERTAIN: None}[band]
    return Verdict(score=0.42, label=label, band=band, model="m@1")


# (entries, decided_by, ai_edited)
CASES: dict[str, tuple[list[dict[str, Any]], str, bool]] = {
    "nothing": ([], "model", False),
    "c2pa trusted ai": ([C2PA_AI], "provenance", False),
    "c2pa valid (untrusted signer) ai": ([{**C2PA_AI, "validation": "valid"}], "provenance", False),
    "c2pa invalid ai": ([{**C2PA_AI, "validation": "invalid"}], "model", False),
    "c2pa algorithmicMedia": ([{**C2PA_AI, "digital_source_type": "algorithmicMedia"}], "provenance", False),
    "c2pa digitalCapture": ([{**C2PA_AI, "digital_source_type": "digitalCapture"}], "model", False),
    "c2pa composite": ([{**C2PA_AI, "digital_source_type": "compositeWithTrainedAlgorithmicMedia"}], "model", True),
    "c2pa invalid composite": (
        [{**C2PA_AI, "digital_source_type": "compositeWithTrainedAlgorithmicMedia", "validation": "invalid"}],
        "model",
        False,
    ),
    "c2pa remote (coded)": ([failed("c2pa", "remote-manifest", "not fetched")], "model", False),
    "xmp trained": ([{**XMP, "digital_source_type": "trainedAlgorithmicMedia"}], "provenance", False),
    "xmp composite": ([{**XMP, "digital_source_type": "compositeWithTrainedAlgorithmicMedia"}], "model", True),
    "xmp capture": ([{**XMP, "digital_source_type": "digitalCapture"}], "model", False),
    "xmp unsafe": ([failed("xmp", "metadata-unsafe", "DTD")], "model", False),
    "generator": ([{"kind": "generator-metadata", "tool": "comfyui", "key": "prompt"}], "provenance", False),
    "watermark over": ([{"kind": "watermark", "matched_bits": 46, "of": 48, "threshold": 40}], "provenance", False),
    "watermark under": ([{"kind": "watermark", "matched_bits": 33, "of": 48, "threshold": 40}], "model", False),
    "watermark at threshold": (
        [{"kind": "watermark", "scheme": "sdxl", "matched_bits": 40, "of": 48, "threshold": 40}],
        "provenance",
        False,
    ),
    "watermark unreadable": ([failed("watermark", "metadata-unreadable", "truncated")], "model", False),
    "capture beside a generator": (
        [{**XMP, "digital_source_type": "digitalCapture"}, {"kind": "generator-metadata", "tool": "novelai"}],
        "provenance",
        False,
    ),
    "unknown kind": ([{"kind": "something-new", "digital_source_type": "trainedAlgorithmicMedia"}], "model", False),
}


@pytest.mark.parametrize("band", list(Band))
@pytest.mark.parametrize("name", list(CASES))
def test_fusion_table(name: str, band: Band) -> None:
    entries, decided_by, ai_edited = CASES[name]
    before = _v(band)
    after, evidence = fuse(before, entries)
    assert evidence == {"provenance": entries, "decided_by": decided_by, "ai_edited": ai_edited}
    assert after.score == before.score  # the score is the model's, always
    if decided_by == "provenance":
        assert (after.band, after.label) == (Band.AI, Label.AI)
    else:
        assert after == before  # absence, capture claims, composites, invalid manifests: nothing moves


def test_not_inspected_is_the_model_deciding() -> None:
    v = _v(Band.UNCERTAIN)
    assert fuse(v, None) == (v, {"provenance": [], "decided_by": "model", "ai_edited": False})


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia", "trainedAlgorithmicMedia"),
        ("  trainedAlgorithmicMedia ", "trainedAlgorithmicMedia"),
        ("https://example.org/vocab/digitalCapture/", "digitalCapture"),
    ],
)
def test_source_type_names(value: str, name: str) -> None:
    assert source_type_name(value) == name
