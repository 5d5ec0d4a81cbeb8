"""Invisible watermarks of open image models, decoded in numpy: the "dwtDct" scheme of ``invisible-watermark``.

Stable Diffusion 1.x/2.x reference scripts, SDXL (``sgm``, diffusers) and FLUX.1 (``flux``) write a fixed message
with ``imwatermark.WatermarkEncoder().encode(bgr, "dwtDct")``. That scheme (``imwatermark/maxDct.py``, despite its
name no DCT is involved) works on the U channel of OpenCV's 8-bit BGR->YUV conversion: one level of a Haar DWT,
its LL band cut into 4x4 blocks in raster order, block ``n`` carrying message bit ``n % len``. In each block the
largest non-DC coefficient (by magnitude, first on ties) is quantised so that ``|c| mod 36`` falls in the upper
half for a 1 and the lower half for a 0. Decoding reads that half per block and takes each bit's majority
(mean * 255 > 127, the library's own rule).

The library is not a dependency: importing it imports torch and OpenCV (its rivaGan module), and its per-block
Python loop costs several times this vectorised pass. Tests check :func:`decode` bit for bit against the library's
decoder. The arithmetic is kept where exactness matters: OpenCV's fixed-point (14-bit) U conversion, PyWavelets'
Haar filter (each output ``c*x1 + c*x0`` in float64, rows first), so a coefficient at exactly a multiple of 18
lands on the same side of the boundary as in the library.

The messages, and where each was read:

- ``sd1``: the bytes ``"StableDiffusionV1"`` (136 bits), CompVis/stable-diffusion ``scripts/txt2img.py``.
- ``sd2``: the bytes ``"SDV2"`` (32 bits), Stability-AI/stablediffusion ``scripts/txt2img.py``.
- ``sdxl``: ``WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110`` (48 bits),
  Stability-AI/generative-models ``sgm/inference/helpers.py`` and diffusers
  ``pipelines/stable_diffusion_xl/watermark.py``.
- ``flux``: ``WATERMARK_MESSAGE = 0b001010101111111010000111100111001111010100101110``, black-forest-labs/flux
  ``src/flux/util.py``. Its bits are ``bin(message)[2:]``, which drops the two leading zeros: 46 bits are
  embedded, not 48, and the block-to-bit mapping follows that length.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from math import comb

import numpy as np
import numpy.typing as npt

from producers.errors import ErrorCode
from worker.core.evidence import Entry, failed

SCALE = 36.0  # the library's default U-channel scale ([0, 36, 36]: Y untouched, only U read; V never)
BLOCK = 4
MIN_PIXELS = 256 * 256  # the library refuses smaller images; SDXL's pipeline does not mark them
_HAAR = 0.7071067811865476  # pywt.Wavelet("haar").dec_lo, both taps


def _bits_of_bytes(data: bytes) -> tuple[int, ...]:
    return tuple(int(b) for b in np.unpackbits(np.frombuffer(data, dtype=np.uint8)))


def _bits_of_int(message: int) -> tuple[int, ...]:
    return tuple(int(b) for b in bin(message)[2:])  # as the embedders do: leading zeros dropped


@dataclass(frozen=True)
class Scheme:
    """One model family's message and the number of matching bits that decides (``threshold``)."""

    name: str
    bits: tuple[int, ...]
    threshold: int

    @property
    def length(self) -> int:
        return len(self.bits)

    def chance(self, matched: int) -> float:
        """P(at least ``matched`` of the bits agree) for an image whose decoded bits are fair coin flips."""
        n = self.length
        return float(sum(comb(n, k) for k in range(matched, n + 1))) / float(2**n)

    @cached_property
    def report_floor(self) -> int:
        """Fewest matches worth reporting without deciding (chance <= 1e-4): a watermark a JPEG save half
        erased, for a reviewer; below it the match is noise and nothing is reported."""
        return next(k for k in range(self.length + 1) if self.chance(k) <= 1e-4)


# Thresholds: the fewest matches whose chance (binomial tail, 1/2 per bit) is about 1e-6 or less per scheme and
# reading, so at most about 1e-5 for an unmarked image over four schemes and two readings, and above every count
# measured on real photos (README,
# "Invisible watermarks": the command and the counts). A watermark decides a verdict on its own, so its false
# positives must be rarer than the model's by orders of magnitude; marks a lossless save kept match 44-48 of 48.
SCHEMES: tuple[Scheme, ...] = (
    Scheme("sd1", _bits_of_bytes(b"StableDiffusionV1"), 96),  # chance 8.7e-7
    Scheme("sd2", _bits_of_bytes(b"SDV2"), 29),  # 1.3e-6
    Scheme("sdxl", _bits_of_int(0b101100111110110010010000011110111011000110011110), 40),  # 1.7e-6
    Scheme("flux", _bits_of_int(0b001010101111111010000111100111001111010100101110), 39),  # 9.2e-7
)


@dataclass(frozen=True)
class Match:
    scheme: Scheme
    matched: int
    reading: str = "8bit"


def u_channel(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """U of OpenCV's ``COLOR_BGR2YUV`` for 8-bit input, in its fixed-point form (BT.601, 14-bit coefficients,
    rounded): Y = (4899 R + 9617 G + 1868 B + 2^13) >> 14, U = ((B - Y) 8061 + 128 * 2^14 + 2^13) >> 14.
    Always within 0..255, so OpenCV's saturation never applies."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    return ((b - y) * 8061 + (128 << 14) + (1 << 13)) >> 14


def haar_ll(x: npt.NDArray[np.int32]) -> npt.NDArray[np.float64]:
    """The LL band of ``pywt.dwt2(x, "haar")`` for an array of even sides, with PyWavelets' float64 rounding."""
    f = x.astype(np.float64)
    rows = _HAAR * f[1::2, :] + _HAAR * f[0::2, :]
    return _HAAR * rows[:, 1::2] + _HAAR * rows[:, 0::2]


def ll_blocks(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """The U channel's LL band cut into 4x4 blocks, one row of 16 coefficients per block, in the library's order."""
    height, width = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    ll = haar_ll(u_channel(rgb[:height, :width]))
    nr, nc = ll.shape[0] // BLOCK, ll.shape[1] // BLOCK
    return ll[: nr * BLOCK, : nc * BLOCK].reshape(nr, BLOCK, nc, BLOCK).swapaxes(1, 2).reshape(nr * nc, BLOCK**2)


def block_bits(
    rgb: npt.NDArray[np.uint8], offset: float = 0.0, blocks: npt.NDArray[np.float64] | None = None
) -> npt.NDArray[np.bool_]:
    """Each 4x4 LL block's reading (upper half of the quantisation step = 1), in the library's block order.
    ``offset`` is subtracted from the LL band first (:data:`READINGS`); ``blocks`` spares recomputing the band."""
    blocks = ll_blocks(rgb) if blocks is None else blocks
    ac = np.abs(blocks[:, 1:] - offset) if offset else np.abs(blocks[:, 1:])
    peak = ac[np.arange(len(ac)), np.argmax(ac, axis=1)]
    return np.asarray(np.remainder(peak, SCALE) > 0.5 * SCALE)


def bits_from_blocks(blocks: npt.NDArray[np.bool_], length: int) -> npt.NDArray[np.bool_]:
    """A message of ``length`` bits from block readings: bit ``i`` is the majority of blocks ``n % length == i``."""
    slot = np.arange(len(blocks)) % length
    ones = np.bincount(slot[blocks], minlength=length)
    total = np.bincount(slot, minlength=length)
    return np.asarray(ones / total * 255 > 127)


def decode(rgb: npt.NDArray[np.uint8], length: int) -> npt.NDArray[np.bool_]:
    """The bits ``WatermarkDecoder("bits", length).decode(bgr, "dwtDct")`` returns for the same pixels (RGB here)."""
    return bits_from_blocks(block_bits(rgb), length)


def readable(height: int, width: int) -> bool:
    """Whether an image is large enough: the library's pixel floor, and a block for every bit of every message."""
    blocks = (height // 4 * 2 // BLOCK) * (width // 4 * 2 // BLOCK)
    return height * width >= MIN_PIXELS and blocks >= max(s.length for s in SCHEMES)


# How the pixels are read. ``8bit`` is the library's own decode. ``float``: SDXL (sgm, diffusers) and FLUX embed
# on float32 arrays, for which OpenCV's U offset is 0.5 where 8-bit pixels have 128, so their mark sits 2 x 127.5
# = 255 below the LL band that 8-bit pixels give; read as the library does, it survives only in blocks whose U was
# positive. Two readings double the odds of a chance match (README: measured, and the rule).
READINGS: tuple[tuple[str, float], ...] = (("8bit", 0.0), ("float", 255.0))


def match(rgb: npt.NDArray[np.uint8], schemes: tuple[Scheme, ...] = SCHEMES) -> list[Match]:
    """Matched bits of every scheme in every reading (one pass over the blocks per reading)."""
    out = []
    band = ll_blocks(rgb)
    for reading, offset in READINGS:
        blocks = block_bits(rgb, offset, band)
        for scheme in schemes:
            bits = bits_from_blocks(blocks, scheme.length)
            matched = int(np.count_nonzero(bits == np.asarray(scheme.bits, dtype=bool)))
            out.append(Match(scheme, matched, reading))
    return out


WHEN = ("lossless", "always", "off")
"""When the check runs: ``lossless`` (PNG and lossless WebP: the files a generator writes and the only ones in
which the mark reliably survives), ``always`` (any format Pillow opens: JPEG keeps part of the mark at best, and
4:2:0 chroma subsampling usually erases it), ``off``."""


def read(data: bytes, max_px: int) -> list[Entry]:
    """The watermark entry of an image file: the best-matching scheme (least likely by chance), when it reaches its
    report floor. One only: a mark of one scheme read with another's length matches it above chance (SD2's ASCII
    "SDV2" read as SD 1.x's 136 bits agrees on every byte's top bit). None when the image is too small, larger
    than ``max_px`` (the cost grows with the pixels) or matches nothing."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_px or not readable(height, width):
                return []
            rgb = np.asarray(im.convert("RGB"))  # alpha dropped, as cv2.imread does for the library's users
    except Exception as exc:  # the model's decode accepted these bytes; anything Pillow raises here is one entry
        return [failed("watermark", ErrorCode.METADATA_UNREADABLE.value, f"{type(exc).__name__}: {exc}")]
    best = min(match(rgb), key=lambda m: m.scheme.chance(m.matched))
    if best.matched < best.scheme.report_floor:
        return []
    entry: Entry = {"kind": "watermark", "scheme": best.scheme.name, "matched_bits": best.matched}
    entry |= {"of": best.scheme.length, "threshold": best.scheme.threshold, "reading": best.reading}
    return [entry]
