"""Image bytes / RGB PIL image -> normalised model input as a numpy array, without torch.

The same arithmetic as :func:`worker.inference.preprocess.to_tensor` (the reference ``Resize((s, s))`` ->
``ToTensor`` -> ``Normalize``): Pillow's own resize on the PIL image (what torchvision's ``Resize`` calls for
PIL inputs), then ``uint8 -> float32 / 255`` and ``(x - mean) / std`` in float32, looked up per 8-bit level
(:func:`_levels`). The values equal the torch path's bit for bit (asserted for every level and on the tests'
corpus), so scores keep their parity bounds.

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
def _levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of every 8-bit level per channel, by the reference's own float32
    steps (``level / 255``, then ``- mean``, then ``/ std``). Each output value depends on its level alone, so
    looking it up gives the same bits as computing it per pixel, at one gather instead of four array passes."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    mean_ = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    std_ = np.asarray(std, dtype=np.float32).reshape(3, 1)
    table = (levels - mean_) / std_
    table.setflags(write=False)
    return table


def to_array(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A (3, size, size) float32 array for ``img`` (which must be RGB: see ``worker.inference.imaging.to_rgb``)."""
    if img.mode != "RGB":
        raise ValueError(f"to_array needs an RGB image, got mode {img.mode}")
    resized = img.resize((pre.size_px, pre.size_px), _RESAMPLE[pre.interpolation])
    hwc = np.asarray(resized, dtype=np.uint8)
    table = _levels(tuple(pre.mean), tuple(pre.std))
    out = np.empty((3, pre.size_px, pre.size_px), dtype=np.float32)
    for c in range(3):
        np.take(table[c], hwc[:, :, c], out=out[c])
    return out


def from_bytes(data: bytes, policy: DecodePolicy, pre: Preprocessing) -> np.ndarray:
    """Decode (``exact`` or ``fast`` by ``policy.mode``) + preprocess ``data``; PermanentError with a code on bad
    input, exactly as :func:`worker.inference.preprocess.from_bytes` (both decode through ``imaging``)."""
    if policy.mode == "tensor":
        raise ValueError("the tensor mode decodes with torch: use worker.inference.preprocess.from_bytes")
    return to_array(decode(data, policy), pre)
