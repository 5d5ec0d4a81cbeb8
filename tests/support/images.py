"""A varied, deterministic image corpus and hostile-bytes factories for decode/parity tests.

Images are photo-like (smooth gradients + blobs + sensor-like noise, seeded) and encoded in each mode and
format the decoder must handle. Hostile inputs are built from real encoders and then damaged, so each
error code is produced by bytes a real client could send.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with gradients, soft blobs and noise: exercises resize filters like a photo does."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x /= max(width - 1, 1)
    y /= max(height - 1, 1)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        base = 128 + 90 * (a * x + b * y) + 40 * np.sin(6.0 * c * x + 3.0 * y)
        for _blob in range(3):
            cx, cy, r, amp = (
                rng.uniform(0, 1),
                rng.uniform(0, 1),
                rng.uniform(0.05, 0.4),
                rng.uniform(-80, 80),
            )
            base += amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        base += rng.normal(0, 8, size=base.shape)
        channels.append(base)
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


@dataclass(frozen=True)
class Case:
    """One corpus entry: its name, encoded bytes, file suffix, and the mode Pillow opens it in."""

    name: str
    data: bytes
    suffix: str
    mode: str


def _sixteen_bit_grey(width: int, height: int, seed: int) -> Image.Image:
    grey = np.asarray(photo(width, height, seed).convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(grey)  # mode I;16


def _palette_with_transparency(seed: int) -> Image.Image:
    img = photo(120, 90, seed).quantize(64)
    img.info["transparency"] = bytes([0, 128] + [255] * 62)  # tRNS as bytes, like many PNG encoders
    return img


def _gif_animation(seed: int) -> bytes:
    frames = [photo(96, 64, seed + i).quantize(128) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def corpus(seed: int = 0) -> list[Case]:
    """Every format x mode combination the decoder supports, odd sizes included."""
    rgb = photo(320, 240, seed)
    rgba = photo(257, 129, seed + 1).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    la = photo(150, 100, seed + 2).convert("LA")
    cases = [
        Case("jpeg-rgb", encode(rgb, "JPEG", quality=90), ".jpg", "RGB"),
        Case(
            "jpeg-progressive",
            encode(photo(400, 300, seed + 3), "JPEG", quality=85, progressive=True),
            ".jpg",
            "RGB",
        ),
        Case("jpeg-grey", encode(photo(200, 300, seed + 4).convert("L"), "JPEG"), ".jpeg", "L"),
        Case("jpeg-cmyk", encode(photo(180, 120, seed + 5).convert("CMYK"), "JPEG"), ".jpg", "CMYK"),
        Case("jpeg-1023x17", encode(photo(1023, 17, seed + 6), "JPEG"), ".jpg", "RGB"),
        Case("png-rgb", encode(rgb, "PNG"), ".png", "RGB"),
        Case("png-rgba", encode(rgba, "PNG"), ".png", "RGBA"),
        Case("png-la", encode(la, "PNG"), ".png", "LA"),
        Case("png-p-transparency", encode(_palette_with_transparency(seed + 7), "PNG"), ".png", "P"),
        Case("png-grey", encode(photo(77, 33, seed + 8).convert("L"), "PNG"), ".png", "L"),
        Case("png-1bit", encode(photo(64, 48, seed + 9).convert("1"), "PNG"), ".png", "1"),
        Case("png-16bit-grey", encode(_sixteen_bit_grey(90, 60, seed + 10), "PNG"), ".png", "I;16"),
        Case("png-1x1", encode(photo(1, 1, seed + 11), "PNG"), ".png", "RGB"),
        Case("png-3x999", encode(photo(3, 999, seed + 12), "PNG"), ".png", "RGB"),
        Case("webp-lossy", encode(photo(300, 200, seed + 13), "WEBP", quality=80), ".webp", "RGB"),
        Case("webp-lossless-rgba", encode(rgba, "WEBP", lossless=True), ".webp", "RGBA"),
        Case("gif-animated", _gif_animation(seed + 14), ".gif", "P"),
        Case("bmp-rgb", encode(photo(131, 67, seed + 15), "BMP"), ".bmp", "RGB"),
        Case("tiff-rgb", encode(photo(111, 222, seed + 16), "TIFF"), ".tiff", "RGB"),
    ]
    return cases


# --- hostile bytes --------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` (a decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def gif_header_only(width: int, height: int) -> bytes:
    """A GIF whose logical screen is ``width`` x ``height`` (max 65535 each) with a 1x1 frame."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame + b"\x3b"


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def hostile() -> dict[str, tuple[Callable[[], bytes], str]]:
    """name -> (factory, expected error code)."""
    jpeg = encode(photo(256, 256, 1), "JPEG", quality=90)
    png = encode(photo(256, 256, 2), "PNG")
    return {
        "zero-bytes": (lambda: b"", "not-an-image"),
        "html-named-jpg": (
            lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
            "not-an-image",
        ),
        "random-bytes": (lambda: np.random.default_rng(3).bytes(4096), "not-an-image"),
        "pdf": (lambda: b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "not-an-image"),
        "ico": (lambda: encode(photo(32, 32, 4), "ICO"), "unsupported-format"),
        "ppm": (lambda: encode(photo(32, 32, 5), "PPM"), "unsupported-format"),
        "psd-signature": (lambda: b"8BPS\x00\x01" + b"\x00" * 64, "unsupported-format"),
        "truncated-jpeg": (lambda: truncated(jpeg), "corrupt-image"),
        "truncated-png": (lambda: truncated(png), "corrupt-image"),
        "jpeg-signature-only": (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 8, "corrupt-image"),
        "png-bad-crc": (lambda: png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], "corrupt-image"),
        "png-bomb-10gpx": (lambda: png_header_only(100_000, 100_000), "too-many-pixels"),
        "png-over-policy": (lambda: png_header_only(9_000, 9_000), "too-many-pixels"),
        "gif-bomb-4gpx": (lambda: gif_header_only(65_535, 65_535), "too-many-pixels"),
    }


def webp_header_only(width: int, height: int) -> bytes:
    """A lossless WebP (VP8L) whose header claims ``width`` x ``height`` (max 16384 each)."""
    bits = (width - 1) | ((height - 1) << 14)  # alpha hint 0, version 0
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def with_dimensions(data: bytes, width: int, height: int) -> bytes:
    """A real baseline JPEG or BMP with only its header's size patched (giant dimensions, tiny file)."""
    patched = bytearray(data)
    if data[:2] == b"\xff\xd8":
        at = data.index(b"\xff\xc0") + 5  # SOF0: length(2) precision(1) height(2) width(2)
        patched[at : at + 4] = struct.pack(">HH", height, width)
    elif data[:2] == b"BM":
        patched[18:26] = struct.pack("<ii", width, height)
    else:
        raise ValueError("with_dimensions handles baseline JPEG and BMP only")
    return bytes(patched)


def png_rgb16(width: int, height: int, seed: int = 0) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, which Pillow can read but not write."""
    pixels = np.asarray(photo(width, height, seed)).astype(">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def zip_archive(members: dict[str, bytes] | None = None) -> bytes:
    """A ZIP file (what a JAR/DOCX/APK is) holding ``members``."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in (members or {"payload.txt": b"not an image\n" * 20}).items():
            archive.writestr(name, data)
    return buf.getvalue()
