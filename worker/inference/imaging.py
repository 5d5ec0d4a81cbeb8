"""Bytes -> RGB PIL image, safely. Pillow only (no torch).

Policy, in the order :func:`decode` applies it:

1. ``max_bytes`` (when set): larger inputs are ``too-large`` (the fetcher caps bytes while streaming; this
   re-checks inputs that did not come through a fetcher).
2. Empty input is ``not-an-image``.
3. The header is read with ``Image.open(..., formats=policy.formats)``. Bytes no allowed format can read
   are sniffed with Pillow's own signature checks: an allowed format's signature means the header is
   broken (``corrupt-image``); another signature Pillow knows (ICO, PSD, PPM, ...) is
   ``unsupported-format``; no signature is ``not-an-image``. Formats without a signature (TGA, ...) are
   not sniffed, so they read as ``not-an-image`` rather than letting random bytes pass for TGA. Pillow
   cannot read PDF at all, so a PDF is ``not-an-image`` too.
4. Width x height from the header is checked against ``max_pixels`` *before* any pixel is decoded
   (``too-many-pixels``). Pillow's own ``DecompressionBombWarning`` is turned into an error while
   decoding as a second guard; note Pillow refuses outright (``DecompressionBombError``) images over
   2 x ``Image.MAX_IMAGE_PIXELS`` (about 179 Mpx by default), so a ``max_pixels`` above that has no effect.
5. Pixels are decoded with ``.load()`` and never half: ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay
   False, and a truncated or damaged file is ``corrupt-image``.
6. Conversion to RGB: RGBA/LA drop alpha (the colour under transparent pixels is kept, as
   ``Image.convert("RGB")`` does — what a caller of the reference pipeline would write); palette images
   with transparency go through RGBA (same colours, without Pillow's warning); CMYK uses Pillow's
   conversion; 16/32-bit greyscale (``I;16*``, ``I``) is scaled to 8 bits (``round(v / 257)``) instead of
   Pillow's clipping at 255, which would turn most 16-bit images white; 1-bit and greyscale are expanded.
   Animated GIF/WebP/PNG: the first frame.

EXIF orientation is **not** applied, in either mode: the reference pipeline (the model card's
``PreTrainedPipeline``) feeds the stored pixel grid to the model, and the detectors were evaluated that
way, so ``exact`` must not rotate. ``fast`` keeps the same rule so that it differs from ``exact`` only by
the DCT-domain downscale.

``fast`` mode: for JPEG (and MPO) only, ``Image.draft`` decodes at 1/2, 1/4 or 1/8 scale in the DCT
domain, choosing the largest reduction that keeps both sides >= ``draft_factor * target_px``. Small JPEGs
(under twice that size) are decoded in full, as are all other formats. The score difference this makes is
measured by ``bench/fast_mode.py`` (figures in its docstring).

``tensor`` mode: this module decodes exactly as in ``exact``; ``worker.inference.preprocess.from_bytes`` takes plain
JPEGs (Pillow mode RGB or L) past it to a torch decode + resize (see there). Decoding goes through
:func:`open_checked` first either way, so limits and error codes do not depend on the mode.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageFile, UnidentifiedImageError

from producers.errors import ErrorCode, PermanentError

log = logging.getLogger(__name__)

# Pillow allocates pixels in blocks of 16 MiB by default. Once glibc's dynamic mmap threshold has risen (up to
# 32 MiB, after the first large free) such blocks come from per-thread malloc arenas and stay there after
# free: with many job threads each decoding a large image now and then, a worker's RSS climbed ~200 MB per
# pass of the hostile corpus (1.1 -> 2.8 GB in four passes of three 49 Mpx PNGs). Blocks over 32 MiB are
# always mmap-ed and go back to the OS when the image is freed (measured: +28 MB instead of +590 MB).
# Small images are unaffected (a block is never larger than the image). An explicit PILLOW_BLOCK_SIZE wins.
PILLOW_BLOCK_BYTES = 64 * 1024 * 1024
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(PILLOW_BLOCK_BYTES)  # type: ignore[attr-defined]  # Pillow's C module

DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# What Pillow's plugins raise on damaged data. Anything else is a bug and becomes ``internal`` upstream.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)

DecodeMode = Literal["exact", "tensor", "fast"]


@dataclass(frozen=True)
class DecodePolicy:
    """Limits and mode of :func:`decode`; built once per process from settings."""

    max_pixels: int = 64_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS
    mode: DecodeMode = "exact"
    target_px: int = 224
    draft_factor: int = 2
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be >= 1")
        if self.mode not in ("exact", "tensor", "fast"):
            raise ValueError(f"mode must be 'exact', 'tensor' or 'fast', got {self.mode!r}")
        if self.target_px < 1 or self.draft_factor < 1:
            raise ValueError("target_px and draft_factor must be >= 1")
        unknown = [f for f in self.formats if f != f.upper()]
        if unknown:
            raise ValueError(f"format names are upper case Pillow names, got {unknown}")


def decode(data: bytes, policy: DecodePolicy) -> Image.Image:
    """Decode ``data`` into a fully loaded RGB image, or raise :class:`PermanentError` with a code."""
    return load_rgb(open_checked(data, policy), policy)


def load_rgb(img: ImageFile.ImageFile, policy: DecodePolicy) -> Image.Image:
    """Steps 5-6 of :func:`decode` on an image from :func:`open_checked`: its pixels, as RGB."""
    with _bomb_guard():
        if policy.mode == "fast" and img.format in _JPEG_FORMATS:
            side = policy.draft_factor * policy.target_px
            img.draft("RGB", (side, side))
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PermanentError(ErrorCode.TOO_MANY_PIXELS, str(exc)) from None
        except _DECODE_ERRORS as exc:
            raise PermanentError(
                ErrorCode.CORRUPT_IMAGE, f"cannot decode {img.format} image: {type(exc).__name__}: {exc}"
            ) from None
    return to_rgb(img)


def open_checked(data: bytes, policy: DecodePolicy) -> ImageFile.ImageFile:
    """Steps 1-4 of the policy: the image with its header read and checked, no pixel decoded yet.

    For decoders other than Pillow's (``worker.inference.preprocess`` decodes plain JPEGs with libjpeg-turbo through
    torchvision): they get bytes whose format, size and pixel count passed the same checks.
    """
    if policy.max_bytes is not None and len(data) > policy.max_bytes:
        raise PermanentError(
            ErrorCode.TOO_LARGE, f"image is {len(data)} bytes, more than the limit of {policy.max_bytes}"
        )
    if not data:
        raise PermanentError(ErrorCode.NOT_AN_IMAGE, "empty input (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped Pillow's global: we would hand half-grey images to the model. Refuse loudly.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; fakesake requires it False")
    with _bomb_guard():
        img = _open(data, policy)
    width, height = img.size
    if width * height > policy.max_pixels:
        raise PermanentError(
            ErrorCode.TOO_MANY_PIXELS,
            f"image is {width}x{height} = {width * height} pixels, more than the limit of {policy.max_pixels}",
        )
    return img


@contextlib.contextmanager
def _bomb_guard() -> Iterator[None]:
    with warnings.catch_warnings():
        # Defence in depth: the explicit max_pixels check is the real guard (catch_warnings is process-global
        # state, so under threads this filter may briefly leak; it only ever adds "error").
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def without_png_text(data: bytes) -> bytes:
    """``data`` without its PNG text chunks (other inputs unchanged; no copy when there are none).

    Text never changes a pixel, but Pillow fails the whole image on a text chunk that inflates past
    ``PngImagePlugin.MAX_TEXT_CHUNK`` or on text over ``MAX_TEXT_MEMORY`` (a zlib bomb in metadata would make a
    good picture ``corrupt-image``). Provenance is read from the original bytes, by ``worker.evidence``.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return data
    keep: list[tuple[int, int]] = []
    pos, start, dropped = len(_PNG_SIGNATURE), 0, False
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind in _PNG_TEXT_CHUNKS:
            keep.append((start, pos))
            start, dropped = min(end, len(data)), True
        if kind == b"IEND" or end > len(data):
            break
        pos = end
    if not dropped:
        return data
    keep.append((start, len(data)))
    return b"".join(data[a:b] for a, b in keep)


def _open(data: bytes, policy: DecodePolicy) -> ImageFile.ImageFile:
    try:
        img = Image.open(io.BytesIO(without_png_text(data)), formats=list(policy.formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentError(ErrorCode.TOO_MANY_PIXELS, str(exc)) from None
    except UnidentifiedImageError:
        raise _unidentified(data, policy) from None
    except _DECODE_ERRORS as exc:
        raise PermanentError(
            ErrorCode.CORRUPT_IMAGE, f"cannot read image header: {type(exc).__name__}: {exc}"
        ) from None
    assert isinstance(img, ImageFile.ImageFile)
    return img


def sniff(prefix: bytes) -> str | None:
    """The Pillow format whose signature ``prefix`` carries, or None. Only formats with a signature."""
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        if accept is not None and accept(prefix[:16]):
            return name
    return None


def _unidentified(data: bytes, policy: DecodePolicy) -> PermanentError:
    allowed = ", ".join(policy.formats)
    name = sniff(data)
    if name is None:
        return PermanentError(ErrorCode.NOT_AN_IMAGE, f"not an image Pillow can identify (accepted: {allowed})")
    if name in policy.formats:
        return PermanentError(ErrorCode.CORRUPT_IMAGE, f"{name} signature but an unreadable header")
    return PermanentError(ErrorCode.UNSUPPORTED_FORMAT, f"{name} images are not accepted (accepted: {allowed})")


def to_rgb(img: Image.Image) -> Image.Image:
    """An RGB version of ``img`` (see the module docstring for each mode's rule)."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_GREY_MODES:
        # Scale the 16-bit range to 8 bits with rounding; point() on "I" takes linear functions only.
        grey = img.convert("I").point(lambda v: v * (1 / 257) + 0.5).convert("L")
        return grey.convert("RGB")
    if img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA"):
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise PermanentError(
            ErrorCode.UNSUPPORTED_FORMAT, f"image mode {img.mode} cannot be converted to RGB: {exc}"
        ) from None
