"""The torch-free preprocessing (Pillow + numpy) gives the torch path's model inputs, value for value."""

from __future__ import annotations

import numpy as np
import pytest

from producers.errors import PermanentError
from tests.support.card import reference_transform
from tests.support.images import corpus, encode, photo, truncated
from worker.core import registry
from worker.inference import pixels, preprocess
from worker.inference.imaging import DecodePolicy

SIZES = [(320, 240), (97, 311), (224, 224), (640, 480), (50, 50), (1000, 30), (1024, 1024), (7, 900)]


@pytest.mark.parametrize("name", ["ffs-mj-5m", "ffs-v2"])  # bilinear 224 and bicubic 384 with CLIP mean/std
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_same_values_as_the_torch_path(name: str, width: int, height: int) -> None:
    pre = registry.get(name).preprocessing
    img = photo(width, height, width + height)
    got = pixels.to_array(img, pre)
    expected = reference_transform(pre)(img).numpy()  # torchvision, not our torch path (which shares ours)
    assert got.dtype == np.float32 and got.shape == expected.shape == (3, pre.size_px, pre.size_px)
    assert np.array_equal(got, expected)  # bit for bit: the lookup repeats the reference's float32 steps
    assert float(np.abs(expected).max()) > 1.0  # normalised, not trivially zero


@pytest.mark.parametrize("mode", ["exact", "fast", "tensor"])
def test_pixels_from_bytes_over_the_corpus(mode: str) -> None:
    """The ONNX backend's 8-bit pixels, normalised, are the torch path's input bit for bit, in every mode."""
    pre = registry.get("ffs-mj-5m").preprocessing
    policy = DecodePolicy(mode=mode)  # type: ignore[arg-type]
    decode = preprocess.pixels_from_bytes if mode == "tensor" else pixels.pixels_from_bytes
    for case in corpus():
        got = decode(case.data, policy, pre)
        assert got.dtype == np.uint8 and got.shape == (pre.size_px, pre.size_px, 3), case
        expected = preprocess.from_bytes(case.data, policy, pre).numpy()
        assert np.array_equal(pixels.normalise(got, pre), expected), case


@pytest.mark.parametrize("name", ["ffs-mj-5m", "ffs-v2"])
def test_every_8bit_level_normalises_bit_for_bit(name: str) -> None:
    from PIL import Image

    pre = registry.get(name).preprocessing
    side = pre.size_px  # no resize at the model's own size: every level reaches the normalisation as it is
    rng = np.random.default_rng(3)
    levels = np.resize(np.arange(256, dtype=np.uint8), side * side * 3)
    img = Image.fromarray(rng.permutation(levels).reshape(side, side, 3), "RGB")
    for c in range(3):
        assert len(np.unique(np.asarray(img)[:, :, c])) == 256
    assert np.array_equal(pixels.to_array(img, pre), reference_transform(pre)(img).numpy())


@pytest.mark.parametrize("mode", ["exact", "tensor"])
def test_bad_input_gets_the_same_code(mode: str) -> None:
    pre = registry.get("ffs-mj-5m").preprocessing
    policy = DecodePolicy(max_pixels=10_000, mode=mode)  # type: ignore[arg-type]
    decode = preprocess.pixels_from_bytes if mode == "tensor" else pixels.pixels_from_bytes
    for data in (b"", b"not an image", truncated(encode(photo(64, 64), "JPEG")), encode(photo(200, 200), "PNG")):
        with pytest.raises(PermanentError) as ours:
            decode(data, policy, pre)
        with pytest.raises(PermanentError) as theirs:
            preprocess.from_bytes(data, policy, pre)
        assert ours.value.code == theirs.value.code


def test_rgb_only_and_no_tensor_mode() -> None:
    pre = registry.get("ffs-mj-5m").preprocessing
    with pytest.raises(ValueError, match="RGB"):
        pixels.to_array(photo(10, 10).convert("L"), pre)
    with pytest.raises(ValueError, match="tensor"):
        pixels.pixels_from_bytes(encode(photo(10, 10), "JPEG"), DecodePolicy(mode="tensor"), pre)
