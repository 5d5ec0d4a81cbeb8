"""Image bytes / RGB PIL image -> normalised model input.

``exact`` (the default) is the reference pipeline: ``transforms.Compose([Resize((s, s)), ToTensor(),
Normalize(mean, std)])`` on the PIL image (timm's eval transform with ``crop_mode="squash"``,
``crop_pct=1.0`` is the same thing for the 2.0 model). The resize is Pillow's (antialiased), as torchvision's
``Resize`` does for a PIL image, and the arithmetic is the same: ``uint8 -> float32 / 255``, then
``(x - mean) / std`` in float32 (:mod:`worker.inference.pixels`, which this path shares); the values are identical
(tests assert it against torchvision's ``Compose``). :func:`pixels_from_bytes` stops before the normalisation:
the ONNX backend's input in ``tensor`` mode, whose graph normalises.

``tensor`` (opt-in, ``model.preprocess=tensor``): plain JPEGs (Pillow mode RGB or L, bilinear models) are
decoded by libjpeg-turbo through torchvision (pixel-identical to Pillow's decode: same library, same
settings) and resized with torch's antialiased uint8 bilinear kernel, ~6x faster than Pillow's resize
(1024^2 -> 224^2, one thread: ~1 ms vs ~6.6 ms). The resize is *not* bit-identical to Pillow's: torch's
kernel keeps fewer fixed-point bits, so values differ by at most one level (1/255, 0.0175 in normalised
units): ~0.16% of them on photo-like downscales to 224^2, up to ~12% on an upscale (200x300 -> 224^2).
On the tests' seeded random-weight checkpoints that moved P(AI) by up to 0.042 (40 photo-like JPEGs,
224..4032 px), far over the 1e-5 that ``exact`` promises, which is why it is not the
default; the seeded models over-react to invisible changes (see ``bench/fast_mode.py``), so measure on
the real checkpoint before relying on it. Anything else (PNG, WebP, CMYK JPEG, a decode failure...) takes
the ``exact`` path, so error codes are the same in both modes.

On CUDA (``device`` given, the torch backend on a GPU), ``tensor`` decodes those JPEGs with nvJPEG
(``torchvision.io.decode_jpeg(device="cuda")``'s op; libjpeg-turbo on the CPU if nvJPEG refuses the file) and
resizes on the GPU with ``torch.nn.functional.interpolate(antialias=True)`` in float, one axis at a time rounded
to 8-bit levels as Pillow does (:func:`resize_float`): run on the CPU in the tests, within one level (1/255) of
Pillow's resize, on about as few values as the CPU kernel. Inputs that take the ``exact`` path are
moved to the device, so a batch never mixes devices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.io  # noqa: F401  # loads torchvision's image ops (torch.ops.image)
import torchvision.transforms.functional as F
import torchvision.transforms.v2.functional as F2
from PIL import Image, ImageFile
from torchvision.io import ImageReadMode

from worker.core.registry import Preprocessing
from worker.inference.imaging import DecodePolicy, load_rgb, open_checked
from worker.inference.pixels import to_array, to_pixels

log = logging.getLogger(__name__)

# Pillow modes of JPEGs whose libjpeg RGB output equals Pillow's decode + convert("RGB") (CMYK/YCCK do not).
_TENSOR_JPEG_MODES = frozenset({"RGB", "L"})


def to_tensor(img: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """A (3, size, size) float32 tensor for ``img`` (which must be RGB: see ``worker.inference.imaging.to_rgb``).

    The numpy path's array, shared without a copy: the same Pillow resize, normalised per 8-bit level by the
    reference's float32 steps (:func:`worker.inference.pixels.to_array`), bit for bit what ``ToTensor`` +
    ``Normalize`` give (tests/unit/test_preprocess.py compares with torchvision's ``Compose``) at a fraction of
    their four passes over the image."""
    if img.mode != "RGB":
        raise ValueError(f"to_tensor needs an RGB image, got mode {img.mode}")
    return torch.from_numpy(to_array(img, pre))


def _torch_decodes(img: ImageFile.ImageFile, policy: DecodePolicy, pre: Preprocessing) -> bool:
    """Whether ``tensor`` mode decodes this (header-checked) image with torchvision rather than Pillow."""
    torch_path = pre.interpolation == "bilinear" and img.format == "JPEG" and img.mode in _TENSOR_JPEG_MODES
    return policy.mode == "tensor" and torch_path


def pixels_from_bytes(data: bytes, policy: DecodePolicy, pre: Preprocessing) -> np.ndarray:
    """Decode + resize ``data`` by ``policy.mode`` to (size, size, 3) 8-bit pixels on the CPU: the ONNX backend's
    input in ``tensor`` mode (its graph normalises, see :mod:`worker.inference.pixels`); the same levels
    :func:`from_bytes` normalises, and the same error codes."""
    img = open_checked(data, policy)
    if _torch_decodes(img, policy, pre) and (decoded := _decode_jpeg(data)) is not None:
        resized = F2.resize(decoded, [pre.size_px, pre.size_px], antialias=True)
        hwc: np.ndarray = resized.permute(1, 2, 0).numpy()
        return hwc
    return to_pixels(load_rgb(img, policy), pre)


def from_bytes(data: bytes, policy: DecodePolicy, pre: Preprocessing, device: str | None = None) -> torch.Tensor:
    """Decode + preprocess ``data`` by ``policy.mode``; raises PermanentError with a code on bad input.
    ``device`` (``tensor`` mode on a GPU): decode and resize there, and return a tensor on it."""
    img = open_checked(data, policy)  # format allow-list, byte/pixel limits and their error codes
    if _torch_decodes(img, policy, pre):
        if device is not None and device.startswith("cuda"):
            pixels = _decode_jpeg_cuda(data, device)
            if pixels is None and (pixels := _decode_jpeg(data)) is not None:
                pixels = pixels.to(device, non_blocking=True)
            if pixels is not None:
                return _normalise(resize_float(pixels, pre.size_px), pre)
        elif (pixels := _decode_jpeg(data)) is not None:
            resized = F2.resize(pixels, [pre.size_px, pre.size_px], antialias=True)
            return _normalise(resized, pre)
    tensor = to_tensor(load_rgb(img, policy), pre)  # the header is read once, whichever decoder runs
    return tensor.to(device, non_blocking=True) if device is not None else tensor


def resize_float(pixels: torch.Tensor, size_px: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) antialiased bilinear on the tensor's device, in float.

    Two passes, each rounded to 8-bit levels, in Pillow's order (horizontal, then vertical): Pillow rounds its
    intermediate image to uint8, and copying that brings the share of values one level off Pillow's from ~9% (one
    float pass) to ~0.06% on photo-like 1024^2 JPEGs (measured on the CPU; tests/unit/test_preprocess_tensor.py).
    """
    height = pixels.shape[-2]
    x = pixels.unsqueeze(0).to(torch.float32)
    x = torch.nn.functional.interpolate(x, size=(height, size_px), mode="bilinear", antialias=True)
    x = torch.nn.functional.interpolate(
        x.round_().clamp_(0, 255), size=(size_px, size_px), mode="bilinear", antialias=True
    )
    return x.round_().clamp_(0, 255)[0]


def _decode_jpeg_cuda(data: bytes, device: str) -> torch.Tensor | None:
    """(3, H, W) uint8 RGB decoded by nvJPEG on ``device``, or None (no nvJPEG, or it refused the file)."""
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        decoded: list[torch.Tensor] = torch.ops.image.decode_jpegs_cuda([raw], ImageReadMode.RGB.value, device)
    except (RuntimeError, AttributeError) as exc:
        log.debug("nvJPEG decode failed (%s); decoding on the CPU", exc)
        return None
    return decoded[0]


def _decode_jpeg(data: bytes) -> torch.Tensor | None:
    """(3, H, W) uint8 RGB from libjpeg-turbo, or None: the caller then decodes with Pillow, which gives a
    damaged file the same ``corrupt-image`` it gets in ``exact`` mode (torchvision raises on a premature
    end of data, where Pillow also fails; both pass the same recoverable corruption through)."""
    # The op behind torchvision.io.decode_jpeg, called directly: that wrapper emits a DeprecationWarning per
    # call (torchvision 0.29 deprecates its image I/O for TorchCodec), and silencing it per call would need
    # warnings.catch_warnings, which is not thread-safe. If a future torchvision drops the op, Pillow decodes.
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        pixels: torch.Tensor = torch.ops.image.decode_jpeg(raw, ImageReadMode.RGB.value, False)
    except (RuntimeError, AttributeError) as exc:
        log.debug("torchvision JPEG decode failed (%s); decoding with Pillow", exc)
        return None
    return pixels


def _normalise(pixels: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    tensor = pixels.to(torch.float32).div_(255)
    normalised: torch.Tensor = F.normalize(tensor, list(pre.mean), list(pre.std), inplace=True)
    return normalised


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """An (N, 3, H, W) batch of same-sized inputs."""
    if not tensors:
        raise ValueError("cannot stack an empty batch")
    return torch.stack(list(tensors))
