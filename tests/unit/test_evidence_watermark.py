"""The numpy "dwtDct" decoder against invisible-watermark itself, and the watermark check in the evidence reader.

The library (a test-only dependency) is the oracle: its encoder makes the fixtures, its decoder must read the
same bits as ours from the same pixels, mark or no mark.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from producers.contract import Band, Label, Verdict
from tests.support import evidence as ev
from tests.support.images import encode, photo
from worker.core.evidence import fuse
from worker.evidence import watermark as wm
from worker.evidence.reader import EvidencePolicy, EvidenceReader

SCHEME = {s.name: s for s in wm.SCHEMES}
HUMAN = Verdict(score=0.05, label=Label.HUMAN, band=Band.HUMAN, model="m@1")


@pytest.fixture(scope="module", params=[s.name for s in wm.SCHEMES])
def marked(request: pytest.FixtureRequest) -> tuple[wm.Scheme, Image.Image]:
    scheme = SCHEME[request.param]
    return scheme, ev.watermarked(scheme.bits)


def _pixels(img: Image.Image, fmt: str, **params: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encode(img, fmt, **params))).convert("RGB"))


def test_messages_as_the_embedders_write_them() -> None:
    assert {s.name: s.length for s in wm.SCHEMES} == {"sd1": 136, "sd2": 32, "sdxl": 48, "flux": 46}
    assert bytes(np.packbits(SCHEME["sd1"].bits)) == b"StableDiffusionV1"
    assert bytes(np.packbits(SCHEME["sd2"].bits)) == b"SDV2"
    assert SCHEME["sdxl"].bits[:8] == (1, 0, 1, 1, 0, 0, 1, 1)
    assert SCHEME["flux"].bits[:6] == (1, 0, 1, 0, 1, 0)  # 0b0010101...: the leading zeros are not embedded


def test_thresholds_are_rare_by_chance_and_above_the_report_floor() -> None:
    for s in wm.SCHEMES:
        assert s.chance(s.threshold) <= 2e-6, s.name
        assert s.chance(s.threshold - 1) > 1e-6, s.name  # the fewest such matches, not more
        assert s.report_floor < s.threshold


def test_u_channel_is_opencvs_for_every_colour() -> None:
    import cv2

    every = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(every >> 16) & 255, (every >> 8) & 255, every & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    ours = wm.u_channel(rgb)
    theirs = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2YUV)[..., 1]
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("shape", [(8, 8), (256, 384), (390, 518)])
def test_haar_ll_is_pywavelets_to_the_last_bit(shape: tuple[int, int]) -> None:
    import pywt

    x = np.random.default_rng(shape[0]).integers(0, 256, shape).astype(np.int32)
    ll, _ = pywt.dwt2(x.astype(np.uint8), "haar")
    assert np.array_equal(wm.haar_ll(x), ll)


CASES = [(256, 256, "PNG"), (517, 389, "PNG"), (640, 480, "JPEG"), (256, 256, "JPEG"), (517, 389, "JPEG")]


@pytest.mark.parametrize(("width", "height", "fmt"), CASES)
def test_decoder_reads_the_librarys_bits(width: int, height: int, fmt: str) -> None:
    scheme = wm.SCHEMES[(width + height) % len(wm.SCHEMES)]
    images = {
        "marked": ev.watermarked(scheme.bits, width, height, seed=width),
        "unmarked": photo(width, height, seed=height),
    }
    for name, img in images.items():
        rgb = _pixels(img, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        for s in wm.SCHEMES:
            assert wm.decode(rgb, s.length).tolist() == ev.library_bits(rgb, s.length), (name, s.name)


def test_each_scheme_is_found_in_a_lossless_file_and_decides(marked: tuple[wm.Scheme, Image.Image]) -> None:
    scheme, img = marked
    for fmt, params in (("PNG", {}), ("WEBP", {"lossless": True})):
        entries = EvidenceReader()(encode(img, fmt, **params))
        assert [e["scheme"] for e in entries] == [scheme.name], (fmt, entries)
        (entry,) = entries
        assert entry["kind"] == "watermark" and entry["of"] == scheme.length
        assert scheme.threshold <= entry["matched_bits"] <= scheme.length
        assert entry["threshold"] == scheme.threshold and entry["reading"] in ("8bit", "float")
        v, fields = fuse(HUMAN, entries)
        assert (v.score, v.band, v.label, fields["decided_by"]) == (0.05, Band.AI, Label.AI, "provenance")


@pytest.mark.parametrize("name", ["sdxl", "flux"])
def test_a_mark_made_on_float_pixels_is_found_in_the_float_reading(name: str) -> None:
    scheme = SCHEME[name]
    img = ev.watermarked(
        scheme.bits, base=photo(512, 512, seed=6).filter(ImageFilter.GaussianBlur(1.5)), float_pixels=True
    )
    as_the_library_reads = wm.decode(np.asarray(img), scheme.length)
    assert int((as_the_library_reads == np.asarray(scheme.bits, dtype=bool)).sum()) < scheme.report_floor
    (entry,) = EvidenceReader()(encode(img, "PNG"))
    assert (entry["scheme"], entry["reading"]) == (name, "float")
    assert entry["matched_bits"] >= scheme.threshold


def test_a_partial_match_is_reported_and_decides_nothing() -> None:
    scheme = SCHEME["sdxl"]
    pixels = np.asarray(ev.watermarked(scheme.bits)).copy()
    pixels[:448] = np.asarray(photo(768, 512, seed=3))[:448]  # the unmarked original over all but 64 rows
    (entry,) = EvidenceReader()(encode(Image.fromarray(pixels), "PNG"))
    assert entry["scheme"] == "sdxl"
    assert scheme.report_floor <= entry["matched_bits"] < scheme.threshold
    v, fields = fuse(HUMAN, [entry])
    assert (v.band, fields["decided_by"]) == (Band.HUMAN, "model")


def test_unmarked_images_report_nothing() -> None:
    read = EvidenceReader()
    for img in (photo(512, 512, seed=21), photo(512, 512, seed=22).convert("L"), Image.new("RGB", (300, 300))):
        assert read(encode(img, "PNG")) == []
    grey = np.asarray(photo(512, 512, seed=22).convert("L").convert("RGB"))
    assert not wm.block_bits(grey).any()  # no chroma: every block reads 0, so no message is matched


@pytest.mark.parametrize(
    ("when", "fmt", "params", "checked"),
    [
        ("lossless", "PNG", {}, True),
        ("lossless", "WEBP", {"lossless": True}, True),
        ("lossless", "WEBP", {"quality": 90}, False),
        ("lossless", "JPEG", {"quality": 95}, False),
        ("always", "JPEG", {"quality": 95}, True),
        ("off", "PNG", {}, False),
    ],
)
def test_when_the_check_runs(
    monkeypatch: pytest.MonkeyPatch, when: str, fmt: str, params: dict[str, Any], checked: bool
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(wm, "read", lambda data, max_px: calls.append(max_px) or [])
    EvidenceReader(EvidencePolicy(watermark=when, watermark_max_px=1234567))(encode(photo(64, 64), fmt, **params))
    assert calls == ([1234567] if checked else [])


def test_policy_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="lossless, always, off"):
        EvidencePolicy(watermark="sometimes")


def test_size_limits() -> None:
    png = encode(ev.watermarked(SCHEME["sdxl"].bits), "PNG")  # 768 x 512
    assert wm.read(png, 768 * 512)[0]["scheme"] == "sdxl"
    assert wm.read(png, 768 * 512 - 1) == []  # over the pixel cap: not decoded
    assert not wm.readable(255, 256) and wm.readable(256, 256)
    assert wm.read(encode(photo(255, 256), "PNG"), 1 << 30) == []


def test_undecodable_pixels_are_one_coded_entry() -> None:
    png = encode(ev.watermarked(SCHEME["sdxl"].bits), "PNG")
    (entry,) = wm.read(png[: len(png) // 2], 1 << 30)
    assert entry["kind"] == "watermark" and entry["error"] == "metadata-unreadable"
