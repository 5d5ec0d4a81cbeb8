"""Preprocessing equals the reference transforms (torchvision Compose; timm's eval transform for 2.0)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.support.card import reference_transform
from tests.support.images import photo
from worker.core import registry
from worker.core.registry import Preprocessing
from worker.inference.preprocess import stack, to_tensor

IMAGES = {"landscape": photo(333, 200, 1), "portrait": photo(90, 260, 2), "tiny": photo(3, 5, 3)}
SPECS = ["ffs-mj-5m", "ffs-mj-200m", "ffs-v2"]


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("image", list(IMAGES))
def test_matches_torchvision_compose(name: str, image: str) -> None:
    pre = registry.get(name).preprocessing
    ours, ref = to_tensor(IMAGES[image], pre), reference_transform(pre)(IMAGES[image])
    assert ours.shape == (3, pre.size_px, pre.size_px) and ours.dtype == torch.float32
    assert torch.equal(ours, ref)  # bit for bit


def test_v2_matches_timm_eval_transform() -> None:
    """The 2.0 card uses timm's transform (384, bicubic, CLIP mean/std, crop_pct 1.0, squash)."""
    from timm.data.transforms_factory import create_transform

    pre = registry.get("ffs-v2").preprocessing
    timm_tf = create_transform(
        input_size=(3, 384, 384), interpolation="bicubic", mean=pre.mean, std=pre.std,
        crop_pct=1.0, crop_mode="squash",
    )  # fmt: skip
    for img in IMAGES.values():
        assert float((to_tensor(img, pre) - timm_tf(img)).abs().max()) <= 1e-6


def test_bilinear_and_bicubic_differ() -> None:
    """Guards the interpolation mapping itself (a swap would pass the parity test on flat images)."""
    img = IMAGES["landscape"]
    bilinear = to_tensor(img, Preprocessing(size_px=64))
    bicubic = to_tensor(img, Preprocessing(size_px=64, interpolation="bicubic"))
    assert float((bilinear - bicubic).abs().max()) > 1e-3


def test_needs_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(Image.new("L", (8, 8)), Preprocessing(size_px=8))


def test_stack() -> None:
    pre = Preprocessing(size_px=32)
    batch = stack([to_tensor(img, pre) for img in IMAGES.values()])
    assert batch.shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="empty"):
        stack([])
