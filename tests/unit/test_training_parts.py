"""The pure parts of fine-tuning: group split, early stopping, the promotion gate, the recipe and the card."""

from __future__ import annotations

import math

import pytest

from producers.errors import ConfigError
from worker.training import card, gate, split
from worker.training.config import TrainConfig
from worker.training.gate import SetMetrics
from worker.training.history import EpochRecord
from worker.training.stopping import EarlyStopping


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("photos/cat.jpg", "photos/cat (1).jpg"),
        ("photos/cat.jpg", "photos/Cat_copy.png"),
        ("photos/cat.jpg", "photos/cat-512x512.webp"),
        ("photos/cat.jpg", "photos/cat@2x.jpg"),
        ("s3://b/x/cat.jpg?versionId=3", "s3://b/x/cat_thumb.jpg"),
    ],
)
def test_copies_share_a_name_key(a: str, b: str) -> None:
    assert split.name_key(a) == split.name_key(b)


@pytest.mark.parametrize(("a", "b"), [("p/img_001.jpg", "p/img_002.jpg"), ("p/cat.jpg", "q/cat.jpg")])
def test_different_pictures_keep_their_own_key(a: str, b: str) -> None:
    assert split.name_key(a) != split.name_key(b)


def test_groups_are_connected_components_of_shared_keys() -> None:
    keys = [["a", "x"], ["b"], ["x", "y"], ["y", "b"], ["c"]]
    assert split.groups(keys) == [0, 0, 0, 0, 1]  # 0-2 share x, 2-3 share y, 3-1 share b


def _corpus(n: int = 40) -> tuple[list[str], list[int]]:
    labels = ["ai" if i % 2 else "human" for i in range(n)]
    # pairs of near-duplicates: items 2k and 2k+2 are one group (same label)
    group_of = [i // 4 * 2 + i % 2 for i in range(n)]
    return labels, group_of


def test_split_is_deterministic_stratified_and_never_straddles_a_group() -> None:
    labels, group_of = _corpus()
    s = split.split(labels, group_of, 0.25, seed=7)
    assert s == split.split(labels, group_of, 0.25, seed=7)
    assert s != split.split(labels, group_of, 0.25, seed=8)
    assert set(s.train) | set(s.val) == set(range(len(labels))) and not set(s.train) & set(s.val)
    assert {group_of[i] for i in s.train}.isdisjoint({group_of[i] for i in s.val})
    for label in ("ai", "human"):
        assert sum(labels[i] == label for i in s.val) == 6  # 25% of 20, in groups of two
    assert s.val_groups == 6 and s.train_groups == 14


def test_split_refuses_one_label_or_one_group() -> None:
    with pytest.raises(ConfigError, match="both labels"):
        split.split(["ai", "ai"], [0, 1], 0.5, 0)
    with pytest.raises(ConfigError, match="one group of near-duplicates"):
        split.split(["ai", "ai", "human", "human"], [0, 0, 1, 2], 0.5, 0)


def test_early_stopping_prefers_auc_then_loss_and_stops_after_patience() -> None:
    stop = EarlyStopping(patience=2)
    assert stop.update(0, 0.5, 0.69)
    assert stop.update(1, 0.9, 0.80)  # higher AUC wins despite a higher loss
    assert stop.update(2, 0.9, 0.50)  # same AUC, lower loss
    assert not stop.update(3, 0.9, 0.50) and not stop.should_stop
    assert not stop.update(4, 0.8, 0.10) and stop.should_stop
    assert stop.best_epoch == 2
    assert EarlyStopping.from_state(stop.state()) == stop


def test_undefined_auc_never_beats_a_defined_one() -> None:
    stop = EarlyStopping(patience=1)
    stop.update(0, 0.6, 1.0)
    assert not stop.better(None, 0.0) and not stop.better(math.nan, 0.0)


def test_gate_refuses_a_drop_beyond_the_allowance_and_says_why() -> None:
    base = SetMetrics(100, 0.90, 0.8)
    assert gate.decide(base, SetMetrics(100, 0.895, 0.7), 0.01).passed
    refused = gate.decide(base, SetMetrics(100, 0.85, 0.9), 0.01)
    assert not refused.passed and refused.metric == "auc" and "0.8500 vs 0.9000" in refused.reason


def test_gate_uses_accuracy_on_a_single_class_set() -> None:
    decision = gate.decide(SetMetrics(50, None, 0.9), SetMetrics(50, None, 0.7), 0.05)
    assert decision.metric == "accuracy" and not decision.passed
    assert not gate.decide(SetMetrics(0, None, None), SetMetrics(0, None, None), 0.05).passed


@pytest.mark.parametrize(
    "changes", [{"batch_size": 31}, {"epochs": 0}, {"val_fraction": 1.0}, {"patience": 0}, {"crop_scale": (0.9, 0.5)}]
)
def test_recipe_refuses_bad_values(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**changes)  # type: ignore[arg-type]


def test_default_learning_rate_depends_on_what_trains() -> None:
    assert TrainConfig(freeze_backbone=True).learning_rate == 1e-3
    assert TrainConfig().learning_rate == 1e-4
    assert TrainConfig(lr=0.0).learning_rate == 0.0


def test_card_states_weights_data_recipe_and_gate() -> None:
    history = [EpochRecord(0, 0.5, 0.69, 0.5, True), EpochRecord(1, 0.9, 0.3, 0.8, True, 0.4, 1e-3, 64, 2.0, 32.0)]
    facts = card.CardFacts(
        model_ref="ffs-mj-5m@1.0",
        arch="tf_mobilenetv3_large_100",
        size_px=224,
        base_weights="hf-hub:Sumsub/x",
        base_sha256="b" * 64,
        weights_sha256="n" * 64,
        counts={"train": {"human": 30, "ai": 34}, "validation": {"human": 8, "ai": 8}},
        groups={"train": 60, "validation": 16},
        failed=2,
        recipe=TrainConfig(freeze_backbone=True).as_dict(),
        device="cpu",
        history=history,
        best_epoch=1,
        stopped_early=False,
        before={"auc": 0.5, "accuracy": 0.5, "n": 16},
        after={"auc": 0.9, "accuracy": 0.8, "n": 16},
        calibration="not written: too few images",
        gate=gate.decide(SetMetrics(10, 0.9, 0.8), SetMetrics(10, 0.5, 0.5), 0.01),
    )
    text = card.render(facts)
    for expected in ("b" * 64, "n" * 64, "64 (30 human, 34 ai; 60 groups)", "head only", "ROC AUC", "REFUSED"):
        assert expected in text
    assert "| 1 (best) | 0.4000 | 0.3000 | 0.9000 |" in text
