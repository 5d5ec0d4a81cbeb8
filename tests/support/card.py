"""The model card's pipeline, written from the card and not from our code: the parity tests' reference
and the benchmark's baseline.

``PreTrainedPipeline`` of the Sumsub FFS repos: a plain module (timm backbone + two-layer head), a plain
``load_state_dict(torch.load(path))``, then per image ``Resize((s, s))`` -> ``ToTensor`` -> ``Normalize`` (timm's
eval transform for 2.0) -> ``unsqueeze(0)`` -> forward with autograd on (the card does not disable it) ->
softmax, index 1 = "by AI". No batching, NCHW, torch's default thread count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data.transforms_factory import create_transform
from torch import nn
from torchvision import transforms

from worker.core.registry import DetectorSpec, Preprocessing


class CardDetector(nn.Module):
    """The model class of the model card."""

    def __init__(self, arch: str, features: int) -> None:
        super().__init__()
        self.model = timm.create_model(arch, pretrained=False, num_classes=0)
        self.clf = nn.Sequential(nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.clf(self.model(image))  # type: ignore[no-any-return]


class CardPipeline:
    """``CardPipeline(weights, spec)(pil_image) -> [{"label": "by AI", ...}, {"label": "by human", ...}]``."""

    def __init__(self, weights: Path, spec: DetectorSpec) -> None:
        self.model = CardDetector(spec.arch, spec.num_features)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()
        pre = spec.preprocessing
        if spec.version == "2.0":
            self.transforms: Callable[[Image.Image], torch.Tensor] = create_transform(
                input_size=(3, pre.size_px, pre.size_px), interpolation="bicubic", mean=pre.mean, std=pre.std,
                crop_pct=1.0, crop_mode="squash",
            )  # fmt: skip
        else:
            self.transforms = transforms.Compose(
                [transforms.Resize((pre.size_px, pre.size_px)), transforms.ToTensor(),
                 transforms.Normalize(pre.mean, pre.std)]
            )  # fmt: skip

    def __call__(self, image: Image.Image) -> list[dict[str, float | str]]:
        probs = torch.softmax(self.model(self.transforms(image).unsqueeze(0)), dim=1)[0]
        return [{"label": "by AI", "score": probs[1].item()}, {"label": "by human", "score": probs[0].item()}]

    def score_file(self, path: Path | str) -> float:
        """P(AI) of one file, converted to RGB first (the card breaks on other modes; its users convert)."""
        with warnings.catch_warnings(), Image.open(path) as opened:
            # Pillow warns about palette transparency given as bytes; users of the card would see it too.
            warnings.simplefilter("ignore", UserWarning)
            image = opened.convert("RGB")
        return float(self(image)[0]["score"])

    def score_files(self, paths: list[str]) -> list[float]:
        """P(AI) per file, one image at a time, exactly the card's usage (no mode conversion): the baseline."""
        return [float(self(Image.open(p))[0]["score"]) for p in paths]


def reference_transform(pre: Preprocessing) -> transforms.Compose:
    """torchvision's own ``Resize((s, s))`` -> ``ToTensor`` -> ``Normalize`` with the spec's interpolation: what
    our preprocessing must equal bit for bit (tests/unit/test_preprocess.py, test_pixels.py)."""
    mode = {
        "bilinear": transforms.InterpolationMode.BILINEAR,
        "bicubic": transforms.InterpolationMode.BICUBIC,
    }
    return transforms.Compose(
        [
            transforms.Resize((pre.size_px, pre.size_px), interpolation=mode[pre.interpolation]),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
