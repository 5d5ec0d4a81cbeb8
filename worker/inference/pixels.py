"""Image bytes / RGB PIL image -> normalised model input as a numpy array, without torch.

The same arithmetic as :func:`worker.inference.preprocess.to_tensor` (the reference ``Resize((s, s))`` ->
``ToTensor`` -> ``Normalize``): Pillow's own resize on the PIL image (what torchvision's ``Resize`` calls for
PIL inputs), then ``uint8 -> float32 / 255`` and ``(x - mean) / std`` in float32. The values equal the torch
path's bit for bit on the tests' corpus (asserted within 1e-6), so scores keep their parity bounds.

This is what the ONNX backend uses in ``exact`` and ``fast`` modes: a process whose ONNX graph is cached
(:mod:`worker.inference.graph_cache`) then imports neither torch (~3 s here) nor timm (~3.7 s). The ``tensor``
mode decodes with torchvision and stays in :mod:`worker.inference.preprocess`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.core.registry import Preprocessing
from worker.inference.imaging import DecodePolicy, decode

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def to_array(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A (3, size, size) float32 array for ``img`` (which must be RGB: see ``worker.inference.imaging.to_rgb``)."""
    if img.mode != "RGB":
        raise ValueError(f"to_array needs an RGB image, got mode {img.mode}")
    resized = img.resize((pre.size_px, pre.size_px), _RESAMPLE[pre.interpolation])
    chw = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
    x = chw.astype(np.float32)
    x /= np.float32(255)
    x -= np.asarray(pre.mean, dtype=np.float32).reshape(3, 1, 1)
    x /= np.asarray(pre.std, dtype=np.float32).reshape(3, 1, 1)
    return x


def from_bytes(data: bytes, policy: DecodePolicy, pre: Preprocessing) -> np.ndarray:
    """Decode (``exact`` or ``fast`` by ``policy.mode``) + preprocess ``data``; PermanentError with a code on bad
    input, exactly as :func:`worker.inference.preprocess.from_bytes` (both decode through ``imaging``)."""
    if policy.mode == "tensor":
        raise ValueError("the tensor mode decodes with torch: use worker.inference.preprocess.from_bytes")
    return to_array(decode(data, policy), pre)
