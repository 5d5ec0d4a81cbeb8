"""Chance watermark matches on images that carry none: ``python -m bench.watermark_fpr [IMAGE ...]``.

Decodes every scheme of :mod:`worker.evidence.watermark` (in both readings, keeping the better) from real photos
and reports, per scheme, the highest match seen and how many decodes reached the report floor and the deciding
threshold. With no arguments it uses the photos that installed packages ship (scikit-learn's ``china.jpg`` and
``flower.jpg``, matplotlib's ``grace_hopper.jpg``, scikit-image's ``data/`` photos when it is installed). Each
photo is decoded whole, flipped, scaled to 3/4, and as 256^2 and 384x320 crops at offsets that are not multiples
of 8 px, so each crop puts a different grid of 4x4 LL blocks over the pixels: many decodes, but of few scenes, so
they are correlated.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from worker.evidence import watermark

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def shipped_photos() -> list[Path]:
    """Real photos found in installed packages."""
    found = [
        _package_file("sklearn", "datasets", "images", "china.jpg"),
        _package_file("sklearn", "datasets", "images", "flower.jpg"),
        _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        *(_package_file("skimage", "data", name) for name in SKIMAGE_PHOTOS),
    ]
    return [p for p in found if p is not None]


def views(rgb: npt.NDArray[np.uint8]) -> Iterator[npt.NDArray[np.uint8]]:
    """The whole image, flipped, scaled to 3/4, and crops at offsets off the 8 px block grid."""
    yield rgb
    yield np.ascontiguousarray(rgb[:, ::-1])
    h, w = rgb.shape[:2]
    small = np.asarray(Image.fromarray(rgb).resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BICUBIC))
    if watermark.readable(*small.shape[:2]):
        yield small
    for ch, cw in ((256, 256), (320, 384)):
        for y in range(0, h - ch + 1, 37):
            for x in range(0, w - cw + 1, 53):
                yield rgb[y : y + ch, x : x + cw]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path, help="photos (default: those shipped by installed packages)")
    args = parser.parse_args(argv)
    paths = args.images or shipped_photos()
    matched: dict[str, list[int]] = {s.name: [] for s in watermark.SCHEMES}
    for path in paths:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        if not watermark.readable(*rgb.shape[:2]):
            print(f"skipped (too small): {path}")
            continue
        for view in views(rgb):
            best: dict[str, int] = {}
            for m in watermark.match(view):  # a scheme's count is its best reading's: what a decision sees
                best[m.scheme.name] = max(best.get(m.scheme.name, 0), m.matched)
            for name, count in best.items():
                matched[name].append(count)
    decodes = len(matched[watermark.SCHEMES[0].name])
    print(f"{len(paths)} photos, {decodes} decodes per scheme")
    print("scheme  bits  max  floor  >=floor  threshold  >=threshold  chance(threshold)")
    for s in watermark.SCHEMES:
        counts = np.asarray(matched[s.name])
        print(
            f"{s.name:6}  {s.length:4}  {counts.max():3}  {s.report_floor:5}  {int((counts >= s.report_floor).sum()):7}"
            f"  {s.threshold:9}  {int((counts >= s.threshold).sum()):11}  {s.chance(s.threshold):.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
