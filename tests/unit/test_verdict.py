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


@pytest.mark.parametrize(("score", "label"), [(0.0, Label.HUMAN), (0.5, Label.HUMAN), (0.5001, Label.AI)])
def test_label_is_the_softmax_argmax(score: float, label: Label) -> None:
    assert label_of(score) is label


def test_verdict_carries_model_ref_and_override_thresholds() -> None:
    spec = registry.get("ffs-mj-5m")
    v = verdict(0.7, spec, Thresholds(human_max=0.1, ai_min=0.9))
    assert (v.model, v.label, v.band) == ("ffs-mj-5m@1.0", Label.AI, Band.UNCERTAIN)


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        Thresholds(human_max=0.8, ai_min=0.2)
