"""RGB PIL image -> normalised model input, exactly as the reference pipeline computes it.

The reference is ``transforms.Compose([Resize((s, s)), ToTensor(), Normalize(mean, std)])`` on the PIL
image (timm's eval transform with ``crop_mode="squash"``, ``crop_pct=1.0`` is the same thing for the 2.0
model). We call the same torchvision functions on the PIL image, so the resize is Pillow's (antialiased)
and the arithmetic is the same: ``uint8 -> float32 / 255``, then ``(x - mean) / std`` in place. The only
change is skipping ToTensor's extra ``contiguous()`` copy; the values are identical (tests assert it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from worker.models.registry import Preprocessing

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def to_tensor(img: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """A (3, size, size) float32 tensor for ``img`` (which must be RGB: see ``worker.imaging.to_rgb``)."""
    if img.mode != "RGB":
        raise ValueError(f"to_tensor needs an RGB image, got mode {img.mode}")
    resized = F.resize(img, [pre.size_px, pre.size_px], interpolation=_INTERPOLATION[pre.interpolation])
    tensor = F.pil_to_tensor(resized).to(torch.float32).div_(255)
    normalised: torch.Tensor = F.normalize(tensor, list(pre.mean), list(pre.std), inplace=True)
    return normalised


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An (N, 3, H, W) batch of same-sized inputs."""
    if not tensors:
        raise ValueError("cannot stack an empty batch")
    return torch.stack(list(tensors))
