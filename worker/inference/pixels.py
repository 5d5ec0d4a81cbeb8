"""Image bytes / RGB PIL image -> normalised model input as a numpy array, without torch.

The same arithmetic as :func:`worker.inference.preprocess.to_tensor` (the reference ``Resize((s, s))`` ->
``ToTensor`` -> ``Normalize``): Pillow's own resize on the PIL image (what torchvision's ``Resize`` calls for
PIL inputs), then ``uint8 -> float32 / 255`` and ``(x - mean) / std`` in float32, in place. The values equal the
torch path's bit for bit (asserted for every level and on the tests' corpus), so scores keep their parity bounds.

This is what the ONNX backend uses in ``exact`` and ``fast`` modes: a process whose ONNX graph is cached
(:mod:`worker.inference.graph_cache`) then imports neither torch (~3 s here) nor timm (~3.7 s). The ``tensor``
mode decodes with torchvision and stays in :mod:`worker.inference.preprocess`.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from worker.core.registry import Preprocessing
from worker.inference.imaging import DecodePolicy, decode

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``mean`` and ``std`` as float32 (3, 1, 1) arrays, as ``Normalize`` holds them."""
    mean_ = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_ = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    mean_.setflags(write=False)
    std_.setflags(write=False)
    return mean_, std_


def to_array(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A (3, size, size) float32 array for ``img`` (which must be RGB: see ``worker.inference.imaging.to_rgb``)."""
    if img.mode != "RGB":
        raise ValueError(f"to_array needs an RGB image, got mode {img.mode}")
    resized = img.resize((pre.size_px, pre.size_px), _RESAMPLE[pre.interpolation])
    hwc = np.asarray(resized, dtype=np.uint8)
    mean, std = _mean_std(tuple(pre.mean), tuple(pre.std))
    # The reference's float32 steps, each correctly rounded, so the same bits: level / 255, - mean, / std
    # (tests/unit/test_pixels.py checks every level). In place in one output array: numpy casts the uint8 levels
    # in small buffers. A gather through a per-level table was tried: it needs an 8-byte index per value, and
    # those fresh pages cost 4x this arithmetic's CPU per 224^2 image with 16 job threads here.
    out = np.empty((3, pre.size_px, pre.size_px), dtype=np.float32)
    np.divide(hwc.transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32)
    out -= mean
    out /= std
    return out


def from_bytes(data: bytes, policy: DecodePolicy, pre: Preprocessing) -> np.ndarray:
    """Decode (``exact`` or ``fast`` by ``policy.mode``) + preprocess ``data``; PermanentError with a code on bad
    input, exactly as :func:`worker.inference.preprocess.from_bytes` (both decode through ``imaging``)."""
    if policy.mode == "tensor":
        raise ValueError("the tensor mode decodes with torch: use worker.inference.preprocess.from_bytes")
    return to_array(decode(data, policy), pre)
