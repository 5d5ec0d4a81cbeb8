from __future__ import annotations

import pytest

from producers.contract import Band, Label
from worker.core import registry
from worker.core.registry import Thresholds
from worker.core.verdict import band_of, label_of, verdict


@pytest.mark.parametrize(
    ("score", "band"),
    [
        (0.0, Band.HUMAN),
        (0.3499, Band.HUMAN),
        (0.35, Band.UNCERTAIN),
        (0.5, Band.UNCERTAIN),
        (0.6499, Band.UNCERTAIN),
        (0.65, Band.AI),
        (1.0, Band.AI),
    ],
)
def test_bands_follow_default_thresholds(score: float, band: Band) -> None:
    assert band_of(score, Thresholds()) is band


@pytest.mark.parametrize(
    ("score", "label", "band"),
    [
        (0.0, Label.HUMAN, Band.HUMAN),
        (0.3499, Label.HUMAN, Band.HUMAN),
        (0.35, None, Band.UNCERTAIN),
        (0.514, None, Band.UNCERTAIN),  # the record a reviewer found saying "label: ai, band: uncertain"
        (0.65, Label.AI, Band.AI),
        (1.0, Label.AI, Band.AI),
    ],
)
def test_label_is_the_bands_verdict_and_none_when_uncertain(score: float, label: Label | None, band: Band) -> None:
    v = verdict(score, registry.get("ffs-mj-5m"))
    assert (v.label, v.band) == (label, band)
    assert label_of(band) is label


@pytest.mark.parametrize("score", [i / 100 for i in range(101)])
def test_label_never_contradicts_the_band(score: float) -> None:
    v = verdict(score, registry.get("ffs-mj-5m"), Thresholds(human_max=0.2, ai_min=0.4))
    assert v.label is None if v.band is Band.UNCERTAIN else v.label.value == v.band.value  # type: ignore[union-attr]


def test_verdict_carries_model_ref_and_override_thresholds() -> None:
    spec = registry.get("ffs-mj-5m")
    v = verdict(0.7, spec, Thresholds(human_max=0.1, ai_min=0.9))
    assert (v.model, v.label, v.band) == ("ffs-mj-5m@1.0", None, Band.UNCERTAIN)
    assert verdict(0.7, spec, Thresholds(human_max=0.1, ai_min=0.6)).label is Label.AI


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        Thresholds(human_max=0.8, ai_min=0.2)
