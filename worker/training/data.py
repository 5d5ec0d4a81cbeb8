"""Images for fine-tuning: decoded with the project's decoder, augmented, then squash-resized and normalised
exactly as inference does.

Training images are kept as their fetched bytes and decoded on every use (a decoded 12 MP photo is 36 MB;
its JPEG a few), so rotation and crop act on the full picture as the inference resize does. Validation
images take the inference preprocessing alone and never change, so they are resized once and kept small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from worker.core.registry import Preprocessing
from worker.inference.imaging import DecodePolicy, decode
from worker.inference.preprocess import to_tensor
from worker.training.config import TrainConfig

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def dhash(img: Image.Image) -> str:
    """``dhash:`` + a 64-bit difference hash of the pixels: equal for re-encodes and resizes of one picture."""
    small = img.convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    px = small.tobytes()  # one byte per pixel, row by row
    bits = sum(1 << i for i in range(64) if px[(i // 8) * 9 + i % 8] > px[(i // 8) * 9 + i % 8 + 1])
    return f"dhash:{bits:016x}"


def squash(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """The inference resize alone (kept as an image, so :func:`to_tensor` later only normalises)."""
    return img.resize((pre.size_px, pre.size_px), _pil_filter(pre))


def _pil_filter(pre: Preprocessing) -> Image.Resampling:
    # torchvision's resize of a PIL image calls Image.resize with these filters
    return Image.Resampling.BILINEAR if pre.interpolation == "bilinear" else Image.Resampling.BICUBIC


def train_transform(pre: Preprocessing, config: TrainConfig) -> transforms.Compose:
    """Rotation + crop + squash resize for ``augment_prob`` of the images, the plain squash resize for the rest."""
    size = [pre.size_px, pre.size_px]
    interpolation = _INTERPOLATION[pre.interpolation]
    augmented = transforms.Compose(
        [
            transforms.RandomRotation(config.rotation_deg, interpolation=interpolation),
            # crop + resize to (size, size) ignoring aspect ratio: the squash of inference, on a crop
            transforms.RandomResizedCrop(size, scale=config.crop_scale, interpolation=interpolation),
        ]
    )
    plain = transforms.Resize(size, interpolation=interpolation)
    p = config.augment_prob
    return transforms.Compose(
        [
            transforms.RandomChoice([augmented, plain], p=[p, 1.0 - p]),
            transforms.RandomHorizontalFlip(),
        ]
    )


@dataclass(frozen=True)
class Example:
    """One decodable training image: its bytes, its class index and where it came from."""

    data: bytes
    target: int
    source: str


class TrainImages(Dataset[tuple[torch.Tensor, int]]):
    """Training examples: decode -> augment -> squash resize -> normalise (the inference arithmetic)."""

    def __init__(self, examples: Sequence[Example], pre: Preprocessing, policy: DecodePolicy, config: TrainConfig):
        self.examples = list(examples)
        self.pre = pre
        self.policy = policy
        self.transform = train_transform(pre, config)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        ex = self.examples[index]
        img = self.transform(decode(ex.data, self.policy))
        return to_tensor(img, self.pre), ex.target


class EvalImages(Dataset[tuple[torch.Tensor, int]]):
    """Images already squash-resized (:func:`squash`); only normalised on use, as inference normalises."""

    def __init__(self, images: Sequence[Image.Image], targets: Sequence[int], pre: Preprocessing):
        self.images, self.targets, self.pre = list(images), list(targets), pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.images[index], self.pre), self.targets[index]
