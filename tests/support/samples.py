"""Writes the provenance samples of docs/samples: ``python -m tests.support.samples docs/samples``.

- ``sample-5-c2pa-signed.jpg``: a C2PA manifest claiming ``trainedAlgorithmicMedia``, signed by a *test* CA made
  here (valid 50 years, so the committed file keeps validating). Nobody's trust anchors hold that CA: it
  validates ``valid``, not ``trusted``, and still decides (a forged claim of AI only hurts its forger).
- ``sample-6-sdxl-watermark.webp``: SDXL's invisible watermark, embedded by invisible-watermark's own encoder,
  saved as lossless WebP (blurred first so the file stays small; the mark still clears its threshold).

Each run makes new keys and new bytes; tests/unit/test_evidence_samples.py checks the committed files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import ImageFilter

from tests.support import evidence as ev
from tests.support.images import encode, photo
from worker.evidence.watermark import SCHEMES

SAMPLE_CA_DAYS = 50 * 365


def c2pa_sample() -> bytes:
    ca = ev.signing_ca(SAMPLE_CA_DAYS)
    return ev.c2pa_signed(encode(photo(320, 240, seed=5), "JPEG", quality=85), ca=ca)


def watermark_sample() -> bytes:
    sdxl = next(s for s in SCHEMES if s.name == "sdxl")
    marked = ev.watermarked(sdxl.bits, base=photo(320, 320, seed=3).filter(ImageFilter.GaussianBlur(1.5)))
    return encode(marked, "WEBP", lossless=True, quality=100, method=6)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/samples")
    (out / "sample-5-c2pa-signed.jpg").write_bytes(c2pa_sample())
    (out / "sample-6-sdxl-watermark.webp").write_bytes(watermark_sample())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
