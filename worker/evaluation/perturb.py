"""Perturbations of the fetched bytes, applied before the pipeline decodes them (Pillow).

:class:`PerturbingFetcher` wraps any :class:`~worker.core.ports.Fetcher`: it decodes the bytes with the
injected safe decoder (the pipeline's own, so the same inputs fail with the same codes), changes the pixels and
re-encodes them; the unchanged pipeline then scores the new bytes. JPEG re-encodes at quality ``q``; a resize
or crop is saved as PNG, which is lossless, so only the geometric change is measured.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from producers.errors import ConfigError
from worker.core.ports import Fetched, Fetcher

KINDS = ("jpeg", "resize", "crop")
DecodeImage = Callable[[bytes], Image.Image]


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: ``jpeg`` at a quality (1-95), ``resize`` by a factor (0-4], ``crop`` to a centre
    fraction of each side (0-1]."""

    kind: str
    amount: float

    @property
    def name(self) -> str:
        amount = int(self.amount) if self.kind == "jpeg" else self.amount
        return f"{self.kind}:{amount:g}"

    def apply(self, img: Image.Image) -> bytes:
        """The perturbed image as encoded bytes."""
        img = img.convert("RGB")
        w, h = img.size
        if self.kind == "resize":
            size = (max(1, round(w * self.amount)), max(1, round(h * self.amount)))
            img = img.resize(size, Image.Resampling.BICUBIC)
        elif self.kind == "crop":
            cw, ch = max(1, round(w * self.amount)), max(1, round(h * self.amount))
            left, top = (w - cw) // 2, (h - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        buf = io.BytesIO()
        if self.kind == "jpeg":
            img.save(buf, "JPEG", quality=int(self.amount))
        else:
            img.save(buf, "PNG")
        return buf.getvalue()


def parse_perturbations(specs: list[str]) -> list[Perturbation]:
    """``jpeg:95,75,50`` -> three perturbations; ``resize:0.5``; ``crop:0.9`` (ConfigError if malformed)."""
    out: list[Perturbation] = []
    for spec in specs:
        kind, sep, values = spec.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS or not sep or not values.strip():
            raise ConfigError(f"--perturb {spec!r}: expected jpeg:Q[,Q...], resize:F[,F...] or crop:F[,F...]")
        for value in values.split(","):
            try:
                amount = float(value)
            except ValueError:
                raise ConfigError(f"--perturb {spec!r}: {value!r} is not a number") from None
            ok = {
                "jpeg": 1 <= amount <= 95 and amount.is_integer(),
                "resize": 0 < amount <= 4,
                "crop": 0 < amount <= 1,
            }[kind]
            if not ok:
                limits = {"jpeg": "an integer quality 1-95", "resize": "a factor in (0, 4]", "crop": "in (0, 1]"}
                raise ConfigError(f"--perturb {spec!r}: {kind} takes {limits[kind]}, got {value}")
            p = Perturbation(kind, amount)
            if p not in out:
                out.append(p)
    return out


class PerturbingFetcher:
    """A :class:`~worker.core.ports.Fetcher` that perturbs what ``inner`` fetched (picklable when its parts
    are, so engine processes can build one)."""

    def __init__(self, inner: Fetcher, perturbation: Perturbation, decode: DecodeImage) -> None:
        self.inner = inner
        self.perturbation = perturbation
        self.decode = decode

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        fetched = self.inner.fetch(source, version=version)
        # decode raises the pipeline's codes (not-an-image, corrupt-image, too-many-pixels, ...)
        data = self.perturbation.apply(self.decode(fetched.data))
        content_type = "image/jpeg" if self.perturbation.kind == "jpeg" else "image/png"
        meta = {**fetched.meta, "perturbation": self.perturbation.name}
        return Fetched(data, fetched.source, content_type, meta)


@dataclass(frozen=True)
class Wrap:
    """``Wrap(p, decode)(fetcher)`` -> a :class:`PerturbingFetcher`: what the builder applies to each fetcher
    it makes, in this process or in an engine process."""

    perturbation: Perturbation
    decode: DecodeImage

    def __call__(self, inner: Fetcher) -> Fetcher:
        return PerturbingFetcher(inner, self.perturbation, self.decode)
