"""``tensor`` preprocessing: plain JPEGs decoded by libjpeg-turbo (torchvision) and resized by torch.

Its decode must be Pillow's pixels exactly, its resize within one level of Pillow's, and every other input
(and every error) must go the ``exact`` way.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from producers.errors import PermanentError
from tests.support.images import corpus, encode, hostile, photo, truncated
from worker.core.registry import Preprocessing
from worker.inference import preprocess
from worker.inference.imaging import DecodePolicy
from worker.inference.preprocess import from_bytes

EXACT, TENSOR = DecodePolicy(mode="exact"), DecodePolicy(mode="tensor")
PRE = Preprocessing(size_px=224)  # bilinear, ImageNet mean/std (the 1.0 models)
ONE_LEVEL = 1 / 255 / min(PRE.std) + 1e-6  # one uint8 level in normalised units
CORPUS = {c.name: c for c in corpus()}
HOSTILE = hostile()
TAKES_TORCH = {"jpeg-rgb", "jpeg-progressive", "jpeg-grey", "jpeg-1023x17"}


@pytest.mark.parametrize("name", sorted(TAKES_TORCH))
def test_torch_decode_is_pillows_decode(name: str) -> None:
    data = CORPUS[name].data
    pixels = preprocess._decode_jpeg(data)
    assert pixels is not None
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(pixels.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("name", sorted(TAKES_TORCH))
def test_plain_jpegs_are_within_one_level_of_exact(name: str) -> None:
    ours, exact = from_bytes(CORPUS[name].data, TENSOR, PRE), from_bytes(CORPUS[name].data, EXACT, PRE)
    assert ours.shape == exact.shape == (3, 224, 224) and ours.dtype == torch.float32
    diff = (ours - exact).abs()
    assert float(diff.max()) <= ONE_LEVEL  # how many values differ depends on the scale (12% for 200x300)


def test_big_photo_like_jpeg_goes_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(photo(1024, 768, 9), "JPEG", quality=90)
    calls: list[int] = []
    real = preprocess._decode_jpeg

    def spy(raw: bytes) -> torch.Tensor | None:
        calls.append(len(raw))
        return real(raw)

    monkeypatch.setattr(preprocess, "_decode_jpeg", spy)
    ours = from_bytes(data, TENSOR, PRE)
    assert calls == [len(data)]
    diff = (ours - from_bytes(data, EXACT, PRE)).abs()
    assert float(diff.max()) <= ONE_LEVEL
    assert float((diff > 1e-6).float().mean()) < 0.01  # downscales: ~0.2% of values differ, by one level


@pytest.mark.parametrize("name", sorted(set(CORPUS) - TAKES_TORCH))
def test_other_inputs_are_exact(name: str) -> None:
    data = CORPUS[name].data
    assert torch.equal(from_bytes(data, TENSOR, PRE), from_bytes(data, EXACT, PRE))


def test_bicubic_models_stay_exact() -> None:
    pre = Preprocessing(size_px=64, interpolation="bicubic")
    data = CORPUS["jpeg-rgb"].data
    assert torch.equal(from_bytes(data, TENSOR, pre), from_bytes(data, EXACT, pre))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bytes_get_the_exact_codes(name: str) -> None:
    factory, code = HOSTILE[name]
    with pytest.raises(PermanentError) as info:
        from_bytes(factory(), DecodePolicy(mode="tensor", max_pixels=64_000_000), PRE)
    assert info.value.code.value == code


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpegs_are_corrupt(keep: float, progressive: bool) -> None:
    data = truncated(encode(photo(320, 240, 5), "JPEG", quality=90, progressive=progressive), keep)
    assert preprocess._decode_jpeg(data) is None  # libjpeg-turbo refuses a premature end, as Pillow does
    with pytest.raises(PermanentError) as info:
        from_bytes(data, TENSOR, PRE)
    assert info.value.code.value == "corrupt-image"


def test_limits_apply_before_the_torch_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "_decode_jpeg", lambda raw: pytest.fail("decoded past the limit"))
    data = CORPUS["jpeg-rgb"].data  # 320 x 240
    with pytest.raises(PermanentError) as info:
        from_bytes(data, DecodePolicy(mode="tensor", max_pixels=320 * 240 - 1), PRE)
    assert info.value.code.value == "too-many-pixels"
    with pytest.raises(PermanentError) as info:
        from_bytes(data, DecodePolicy(mode="tensor", formats=("PNG",)), PRE)
    assert info.value.code.value == "unsupported-format"  # JPEG not in the allow-list


def test_a_failing_torch_decode_falls_back_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "_decode_jpeg", lambda raw: None)
    data = CORPUS["jpeg-rgb"].data
    assert torch.equal(from_bytes(data, TENSOR, PRE), from_bytes(data, EXACT, PRE))
