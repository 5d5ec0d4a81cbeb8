"""Decoding: every supported format/mode to RGB, every error code from real bytes, fast-mode drafting."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFile

from producers.errors import ErrorCode, FakesakeError, PermanentError
from tests.support.images import Case, corpus, encode, hostile, photo, png_header_only
from worker.inference.imaging import DecodePolicy, decode, sniff

CORPUS = corpus()
HOSTILE = hostile()
EXACT = DecodePolicy()


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corpus_decodes_to_rgb_at_stored_size(case: Case) -> None:
    original = _open(case.data)
    assert original.mode == case.mode  # the corpus really covers the mode it claims
    img = decode(case.data, EXACT)
    assert img.mode == "RGB" and img.size == original.size


@pytest.mark.parametrize(
    "name", ["jpeg-rgb", "jpeg-grey", "jpeg-cmyk", "png-rgba", "png-la", "png-1bit", "gif-animated"]
)
def test_conversion_matches_pillow_convert(name: str) -> None:
    """8-bit modes: the same pixels as ``Image.convert("RGB")`` (alpha dropped, not composited)."""
    case = next(c for c in CORPUS if c.name == name)
    assert np.array_equal(np.asarray(decode(case.data, EXACT)), np.asarray(_open(case.data).convert("RGB")))


def test_palette_with_transparency_keeps_palette_colours() -> None:
    case = next(c for c in CORPUS if c.name == "png-p-transparency")
    expected = _open(case.data).convert("RGBA").convert("RGB")
    assert np.array_equal(np.asarray(decode(case.data, EXACT)), np.asarray(expected))


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey = np.asarray(photo(40, 30, 5).convert("L"), dtype=np.uint16)
    data = encode(Image.fromarray(grey * 257), "PNG")  # 16-bit values v*257 -> back to v exactly
    assert _open(data).mode == "I;16"
    out = np.asarray(decode(data, EXACT))
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 0], out[..., 2])


def test_animated_gif_gives_the_first_frame() -> None:
    case = next(c for c in CORPUS if c.name == "gif-animated")
    first = _open(case.data).convert("RGB")
    assert np.array_equal(np.asarray(decode(case.data, EXACT)), np.asarray(first))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bytes_map_to_codes(name: str) -> None:
    factory, code = HOSTILE[name]
    with pytest.raises(PermanentError) as info:
        decode(factory(), EXACT)
    assert info.value.code.value == code
    assert info.value.message and not info.value.retryable


def test_corrupt_png_data_fails_on_load() -> None:
    data = bytearray(encode(photo(128, 128, 7), "PNG"))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # damage the deflate stream, headers intact
    with pytest.raises(PermanentError) as info:
        decode(bytes(data), EXACT)
    assert info.value.code is ErrorCode.CORRUPT_IMAGE


def test_pillow_bomb_warning_zone_is_an_error() -> None:
    """121 Mpx: over Pillow's warning limit (89 Mpx), under its hard limit; our policy allows 150 Mpx."""
    with pytest.raises(PermanentError) as info:
        decode(png_header_only(11_000, 11_000), DecodePolicy(max_pixels=150_000_000))
    assert info.value.code is ErrorCode.TOO_MANY_PIXELS


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(photo(100, 100, 8), "PNG")
    assert decode(data, DecodePolicy(max_pixels=10_000)).size == (100, 100)
    with pytest.raises(PermanentError) as info:
        decode(data, DecodePolicy(max_pixels=9_999))
    assert info.value.code is ErrorCode.TOO_MANY_PIXELS and "100x100" in info.value.message


def test_max_bytes_is_too_large() -> None:
    data = encode(photo(64, 64, 9), "PNG")
    decode(data, DecodePolicy(max_bytes=len(data)))
    with pytest.raises(PermanentError) as info:
        decode(data, DecodePolicy(max_bytes=len(data) - 1))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_allow_list_narrows_formats() -> None:
    jpeg = encode(photo(32, 32, 10), "JPEG")
    with pytest.raises(PermanentError) as info:
        decode(jpeg, DecodePolicy(formats=("PNG",)))
    assert info.value.code is ErrorCode.UNSUPPORTED_FORMAT and "JPEG" in info.value.message


def test_truncated_images_stay_refused_even_if_someone_flips_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode(encode(photo(16, 16, 11), "PNG"), EXACT)


def test_exif_orientation_is_not_applied() -> None:
    """The reference pipeline feeds the stored pixel grid; so do we (see worker.inference.imaging)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(photo(120, 40, 12), "JPEG", exif=exif.tobytes())
    assert _open(data).getexif()[0x0112] == 6
    assert decode(data, EXACT).size == (120, 40)
    assert decode(data, DecodePolicy(mode="fast", target_px=10)).size == (60, 20)


@pytest.mark.parametrize(
    ("make", "factor", "size"),
    [
        (lambda: encode(photo(1024, 1024, 13), "JPEG"), 2, (512, 512)),  # 1024 // 448 = 2
        (lambda: encode(photo(1024, 1024, 13), "JPEG"), 1, (256, 256)),  # 1024 // 224 = 4
        (lambda: encode(photo(400, 300, 14).resize((4000, 3000)), "JPEG"), 2, (1000, 750)),  # 3000 // 448 = 6 -> 1/4
        (lambda: encode(photo(300, 200, 15), "JPEG"), 2, (300, 200)),  # small: decoded in full
        (lambda: encode(photo(1024, 1024, 13), "PNG"), 2, (1024, 1024)),  # not JPEG: no draft
        (lambda: encode(photo(1023, 17, 16), "JPEG"), 2, (1023, 17)),  # a side under 448: no draft
    ],
    ids=["jpeg-1024-f2", "jpeg-1024-f1", "jpeg-12mp", "jpeg-small", "png-1024", "jpeg-thin"],
)
def test_fast_mode_drafts_only_big_jpegs(make: Callable[[], bytes], factor: int, size: tuple[int, int]) -> None:
    data = make()
    img = decode(data, DecodePolicy(mode="fast", target_px=224, draft_factor=factor))
    assert img.mode == "RGB" and img.size == size
    assert decode(data, EXACT).size == _open(data).size


@pytest.mark.parametrize(
    ("prefix", "name"),
    [(b"\xff\xd8\xff\xe0", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"8BPS", "PSD"), (b"<html>", None)],
)
def test_sniff(prefix: bytes, name: str | None) -> None:
    assert sniff(prefix + b"\x00" * 16) == name


@pytest.mark.parametrize("kwargs", [{"max_pixels": 0}, {"mode": "turbo"}, {"target_px": 0}, {"formats": ("jpeg",)}])
def test_policy_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DecodePolicy(**kwargs)  # type: ignore[arg-type]


def test_errors_are_fakesake_errors_with_stable_codes() -> None:
    with pytest.raises(FakesakeError) as info:
        decode(b"", EXACT)
    assert info.value.to_dict()["code"] == "not-an-image"


def test_imaging_does_not_import_torch() -> None:
    code = "import sys, worker.inference.imaging; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
