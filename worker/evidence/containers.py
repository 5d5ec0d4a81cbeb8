"""Metadata blocks of JPEG, PNG and WebP files, walked from the raw bytes with hard bounds. Standard library only.

Why not Pillow's ``im.info``: PNG text after the image data appears there only after ``load()`` (a full pixel
decode), Pillow's own text limits (``PngImagePlugin.MAX_TEXT_CHUNK`` 1 MiB per chunk, ``MAX_TEXT_MEMORY`` 64 MiB
in all) raise on a hostile file instead of skipping one chunk, and it keeps every chunk. This walk reads chunk
headers only, seeks over the pixel data, stops at a count and decompresses with ``max_length``, so a zlib bomb
costs at most the cap. Each problem is recorded (``problems``) and the walk goes on with what it has.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from producers.errors import ErrorCode

XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_JPEG_HEADER = b"Exif\x00\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_XMP_KEY = "XML:com.adobe.xmp"


@dataclass(frozen=True)
class Limits:
    """Bounds of one walk: blocks kept, bytes per block (after decompression), bytes in all."""

    max_blocks: int = 64
    max_block_bytes: int = 1 << 20
    max_total_bytes: int = 4 << 20


@dataclass
class Metadata:
    """What a file carries beside its pixels."""

    format: str | None = None  # jpeg | png | webp | None (not one we read)
    text: list[tuple[str, str]] = field(default_factory=list)  # PNG tEXt/zTXt/iTXt (key, value), XMP excluded
    xmp: list[bytes] = field(default_factory=list)
    exif: list[bytes] = field(default_factory=list)  # TIFF-headed EXIF blocks
    c2pa: bool = False  # a C2PA/JUMBF box is present (JPEG APP11, PNG caBX, WebP C2PA)
    lossless: bool = False  # PNG, or WebP whose image is VP8L: pixels as the writer left them
    problems: list[tuple[str, str]] = field(default_factory=list)  # (error code, message)
    _total: int = 0

    def problem(self, code: ErrorCode, message: str) -> None:
        if len(self.problems) < 8 and (code.value, message) not in self.problems:
            self.problems.append((code.value, message))

    def full(self, limits: Limits) -> bool:
        """No room for another block (checked before inflating one: a thousand bombs cost nothing once full)."""
        if (
            len(self.text) + len(self.xmp) + len(self.exif) >= limits.max_blocks
            or self._total >= limits.max_total_bytes
        ):
            self.problem(ErrorCode.METADATA_TOO_LARGE, "metadata over the block or byte cap; rest skipped")
            return True
        return False

    def take(self, size: int, limits: Limits, what: str) -> bool:
        """Whether one more block of ``size`` bytes fits the limits (records why not)."""
        if self.full(limits):
            return False
        if size > limits.max_block_bytes or self._total + size > limits.max_total_bytes:
            self.problem(ErrorCode.METADATA_TOO_LARGE, f"{what} of {size} bytes over the cap; skipped")
            return False
        self._total += size
        return True


def read(data: bytes, limits: Limits | None = None) -> Metadata:
    """The metadata blocks of ``data`` (an empty :class:`Metadata` for other formats)."""
    limits = limits or Limits()
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data, limits)
    if data.startswith(PNG_SIGNATURE):
        return _png(data, limits)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, limits)
    return Metadata()


def _jpeg(data: bytes, limits: Limits) -> Metadata:
    meta = Metadata("jpeg")
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            meta.problem(ErrorCode.METADATA_UNREADABLE, f"JPEG marker expected at byte {pos}")
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: metadata comes before the pixels
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker == 0xE1 and body.startswith(XMP_JPEG_HEADER):
            if meta.take(len(body), limits, "XMP"):
                meta.xmp.append(body[len(XMP_JPEG_HEADER) :])
        elif marker == 0xE1 and body.startswith(EXIF_JPEG_HEADER):
            if meta.take(len(body), limits, "EXIF"):
                meta.exif.append(body[len(EXIF_JPEG_HEADER) :])
        elif marker == 0xEB and body[:2] == b"JP":  # APP11 JUMBF: where C2PA lives in JPEG
            meta.c2pa = True
    return meta


def _png(data: bytes, limits: Limits) -> Metadata:
    meta = Metadata("png", lossless=True)
    pos, end = len(PNG_SIGNATURE), len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if len(body) < length:
            meta.problem(ErrorCode.METADATA_UNREADABLE, f"truncated {kind!r} chunk")
            break
        if kind == b"IEND":
            break
        if kind == b"caBX":
            meta.c2pa = True
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            _png_text(meta, kind, body, limits)
    return meta


def _png_text(meta: Metadata, kind: bytes, body: bytes, limits: Limits) -> None:
    key_raw, sep, rest = body.partition(b"\x00")
    if not sep or not 1 <= len(key_raw) <= 79:
        meta.problem(ErrorCode.METADATA_UNREADABLE, f"{kind.decode()} chunk without a keyword")
        return
    key = key_raw.decode("latin-1")
    if meta.full(limits):
        return
    compressed = False
    if kind == b"zTXt":
        compressed, rest = True, rest[1:]
    elif kind == b"iTXt":
        if len(rest) < 2:
            meta.problem(ErrorCode.METADATA_UNREADABLE, f"short iTXt chunk {key!r}")
            return
        compressed = rest[0] == 1
        _lang, _, rest = rest[2:].partition(b"\x00")
        _translated, _, rest = rest.partition(b"\x00")
    if compressed:
        inflated = _inflate(meta, rest, limits, key)
        if inflated is None:
            return
        rest = inflated
    if not meta.take(len(rest), limits, f"text chunk {key!r}"):
        return
    if key == PNG_XMP_KEY:
        meta.xmp.append(rest)
    elif kind == b"iTXt":
        meta.text.append((key, rest.decode("utf-8", "replace")))
    else:
        meta.text.append((key, rest.decode("latin-1")))


def _inflate(meta: Metadata, raw: bytes, limits: Limits, key: str) -> bytes | None:
    """zlib with a ceiling: a bomb stops at ``max_block_bytes`` + 1 and is reported, never expanded further."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(raw, limits.max_block_bytes + 1)
    except zlib.error as exc:
        meta.problem(ErrorCode.METADATA_UNREADABLE, f"text chunk {key!r}: {exc}")
        return None
    if len(out) > limits.max_block_bytes or inflater.unconsumed_tail:
        meta._total += len(out)  # the work spent counts: a file of many bombs stops inflating at the byte cap
        meta.problem(ErrorCode.METADATA_TOO_LARGE, f"text chunk {key!r} inflates past {limits.max_block_bytes} bytes")
        return None
    return out


def _webp(data: bytes, limits: Limits) -> Metadata:
    meta = Metadata("webp")
    pos, end = 12, min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while pos + 8 <= end:
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)
        if len(body) < length:
            meta.problem(ErrorCode.METADATA_UNREADABLE, f"truncated {kind!r} chunk")
            break
        if kind == b"XMP " and meta.take(length, limits, "XMP"):
            meta.xmp.append(body)
        elif kind == b"EXIF" and meta.take(length, limits, "EXIF"):
            meta.exif.append(body[len(EXIF_JPEG_HEADER) :] if body.startswith(EXIF_JPEG_HEADER) else body)
        elif kind == b"C2PA":
            meta.c2pa = True
        elif kind == b"VP8L":
            meta.lossless = True
    return meta
