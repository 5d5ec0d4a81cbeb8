"""Image bytes / RGB PIL image -> model input as numpy arrays, without torch.

Two forms of the same input, both from the reference steps (``Resize((s, s))`` -> ``ToTensor`` -> ``Normalize``):

- **8-bit pixels** (:func:`to_pixels`, :func:`pixels_from_bytes`): the image after Pillow's own resize (what
  torchvision's ``Resize`` calls for PIL inputs), as a ``(size, size, 3)`` uint8 array. This is what the ONNX
  backend is fed: its graph starts with the normalisation (:mod:`worker.inference.onnx_export`), so the job
  threads stop after the resize and hand the model a quarter of the bytes. The bench's stub worker (64 px JPEGs,
  bulk intake, driven in-process for 3,000 jobs) went from 3.7-4.0 to 3.2-3.4 ms of CPU per job with it.
- **Normalised floats** (:func:`to_array`): ``uint8 -> float32 / 255`` and ``(x - mean) / std`` in float32, in
  place, as a ``(3, size, size)`` array. The values equal the torch path's bit for bit (asserted for every level
  and on the tests' corpus); the torch backend's input (:func:`worker.inference.preprocess.to_tensor`) is this array.

The ONNX backend in ``exact`` and ``fast`` modes uses this module alone: a process whose ONNX graph is cached
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


def to_pixels(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """``img`` (which must be RGB: see ``worker.inference.imaging.to_rgb``) resized to the model's input, as
    (size, size, 3) uint8: the levels :func:`normalise` turns into the model's input."""
    if img.mode != "RGB":
        raise ValueError(f"the model input needs an RGB image, got mode {img.mode}")
    resized = img.resize((pre.size_px, pre.size_px), _RESAMPLE[pre.interpolation])
    return np.asarray(resized, dtype=np.uint8)


def normalise(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 levels -> the (3, H, W) float32 values ``ToTensor`` + ``Normalize`` give, bit for bit."""
    mean, std = _mean_std(tuple(pre.mean), tuple(pre.std))
    # The reference's float32 steps, each correctly rounded, so the same bits: level / 255, - mean, / std
    # (tests/unit/test_pixels.py checks every level). In place in one output array: numpy casts the uint8 levels
    # in small buffers. A gather through a per-level table was tried: it needs an 8-byte index per value, and
    # those fresh pages cost 4x this arithmetic's CPU per 224^2 image with 16 job threads here.
    height, width, _ = pixels.shape
    out = np.empty((3, height, width), dtype=np.float32)
    np.divide(pixels.transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32)
    out -= mean
    out /= std
    return out


def to_array(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A (3, size, size) float32 array for ``img``: :func:`to_pixels`, then :func:`normalise`."""
    return normalise(to_pixels(img, pre), pre)


def pixels_from_bytes(data: bytes, policy: DecodePolicy, pre: Preprocessing) -> np.ndarray:
    """Decode (``exact`` or ``fast`` by ``policy.mode``) + resize ``data`` to 8-bit pixels; PermanentError with a
    code on bad input, exactly as :func:`worker.inference.preprocess.from_bytes` (both decode through
    ``imaging``)."""
    if policy.mode == "tensor":
        raise ValueError("the tensor mode decodes with torch: use worker.inference.preprocess.pixels_from_bytes")
    return to_pixels(decode(data, policy), pre)
