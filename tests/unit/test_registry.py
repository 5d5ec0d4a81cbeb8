"""The registry holds the published facts of each FFS variant (from the FFS model repos)."""

from __future__ import annotations

import pytest

from producers.errors import ConfigError, ErrorCode
from worker.core import registry
from worker.core.registry import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, Thresholds

MOBILENET, CONVNEXT = "tf_mobilenetv3_large_100", "convnext_large_mlp"

# name, version, arch, features, weights file, hub repo, size, interpolation, mean, std
TABLE = [
    ("ffs-mj-5m", "1.0", MOBILENET, 1280, "midjourney5M.pt", "Sumsub/Sumsub-ffs-synthetic-1.0_mj_5", 224,
     "bilinear", IMAGENET_MEAN, IMAGENET_STD),
    ("ffs-sd-5m", "1.0", MOBILENET, 1280, "diffusions5M.pt", "Sumsub/Sumsub-ffs-synthetic-1.0_sd_5", 224,
     "bilinear", IMAGENET_MEAN, IMAGENET_STD),
    ("ffs-mj-200m", "1.0", CONVNEXT, 1536, "midjourney200M.pt", "Sumsub/Sumsub-ffs-synthetic-1.0_mj_200", 640,
     "bilinear", IMAGENET_MEAN, IMAGENET_STD),
    ("ffs-sd-200m", "1.0", CONVNEXT, 1536, "diffusions200M.pt", "Sumsub/Sumsub-ffs-synthetic-1.0_sd_200", 640,
     "bilinear", IMAGENET_MEAN, IMAGENET_STD),
    ("ffs-v2", "2.0", CONVNEXT, 1536, "synthetic.pt", "Sumsub/Sumsub-ffs-synthetic-2.0", 384, "bicubic",
     CLIP_MEAN, CLIP_STD),
]  # fmt: skip


def test_names_are_the_five_variants() -> None:
    assert registry.names() == sorted(row[0] for row in TABLE)


FIELDS = ("name", "version", "arch", "features", "weights", "repo", "size", "interp", "mean", "std")


@pytest.mark.parametrize(FIELDS, TABLE, ids=[row[0] for row in TABLE])
def test_spec_matches_published_facts(
    name: str, version: str, arch: str, features: int, weights: str, repo: str, size: int, interp: str,
    mean: tuple[float, ...], std: tuple[float, ...],
) -> None:  # fmt: skip
    spec = registry.get(name)
    assert (spec.version, spec.arch, spec.num_features, spec.weights_file, spec.hub_repo) == (
        version, arch, features, weights, repo,
    )  # fmt: skip
    assert spec.preprocessing == Preprocessing(size_px=size, interpolation=interp, mean=mean, std=std)  # type: ignore[arg-type]
    # Head Linear(F,128)-ReLU-Linear(128,2); softmax index 1 is "by AI" (not the config.json map).
    assert (spec.hidden, spec.num_classes, spec.ai_index) == (128, 2, 1)
    assert spec.labels[spec.ai_index] == "by AI"
    assert spec.ref == f"{name}@{version}"
    assert spec.thresholds.human_max < 0.5 < spec.thresholds.ai_min


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        registry.get("ffs-nope")
    assert info.value.code is ErrorCode.UNKNOWN_MODEL
    for name in registry.names():
        assert name in info.value.message


def test_custom_spec_for_fine_tuned_checkpoints() -> None:
    spec = registry.custom("resnet18", 512, "mine.pt", name="kyc-ft", version="3")
    assert (spec.arch, spec.num_features, spec.weights_file, spec.hub_repo, spec.ref) == (
        "resnet18", 512, "mine.pt", None, "kyc-ft@3",
    )  # fmt: skip
    assert spec.preprocessing == Preprocessing(size_px=224)


def test_with_overrides_keeps_other_fields() -> None:
    spec = registry.get("ffs-v2")
    small = spec.with_overrides(arch="test_convnext", num_features=64)
    assert (small.arch, small.num_features) == ("test_convnext", 64)
    assert small.preprocessing == spec.preprocessing and small.weights_file == spec.weights_file


@pytest.mark.parametrize(("human_max", "ai_min"), [(0.7, 0.6), (-0.1, 0.5), (0.5, 1.1)])
def test_thresholds_must_be_ordered_in_unit_interval(human_max: float, ai_min: float) -> None:
    with pytest.raises(ValueError, match="human_max <= ai_min"):
        Thresholds(human_max=human_max, ai_min=ai_min)
