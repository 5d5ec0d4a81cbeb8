"""Bench inputs: photo-like image files in each measured format, a seeded checkpoint, worker settings, and
the scan path they are measured through.

Images come from ``tests.support.images.photo`` (gradients, blobs, noise). Rendering it at 12 MP takes
seconds, so large images are rendered at 1/4 size, upscaled (bicubic) and given fresh per-pixel noise at full
size: the entropy a JPEG/PNG/WebP decoder works through is then photo-like at every size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.support.images import encode, photo
from worker.core.pipeline import Outcome, Pipeline, Prepared, Scanner
from worker.core.registry import DetectorSpec
from worker.service import builder, loading
from worker.service.loading import LoadedModel

SPEC_NAME = "ffs-mj-5m"


@dataclass(frozen=True)
class ImageSet:
    """Files of one format and size."""

    name: str
    paths: tuple[Path, ...]
    width: int
    height: int

    @property
    def sources(self) -> list[str]:
        return [str(p) for p in self.paths]

    @property
    def uris(self) -> list[str]:
        return [p.as_uri() for p in self.paths]


# name -> (width, height, Pillow format, save params, suffix)
FORMATS: dict[str, tuple[int, int, str, dict[str, Any], str]] = {
    "jpeg-1024": (1024, 1024, "JPEG", {"quality": 90}, ".jpg"),
    "jpeg-4032x3024": (4032, 3024, "JPEG", {"quality": 90}, ".jpg"),
    "png-1024": (1024, 1024, "PNG", {}, ".png"),
    "webp-1024": (1024, 1024, "WEBP", {"quality": 80}, ".webp"),
}


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image of any size, cheap to make."""
    small = photo(max(16, width // 4), max(16, height // 4), seed).resize((width, height), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed + 7919)
    noise = rng.integers(-6, 7, size=(height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(small, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def image_set(root: Path, name: str, count: int, seed: int = 0) -> ImageSet:
    """``count`` files of format ``name`` (see :data:`FORMATS`) under ``root/name`` (made once, reused)."""
    width, height, fmt, params, suffix = FORMATS[name]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}{suffix}"
        if not path.exists():
            path.write_bytes(encode(photo_like(width, height, seed + i), fmt, **params))
        paths.append(path)
    return ImageSet(name, tuple(paths), width, height)


def weights_file(root: Path) -> Path:
    """A seeded checkpoint of the bench model in the published layout (a plain state_dict)."""
    from tests.support.checkpoints import seeded_state, write_snapshot
    from worker.core import registry

    spec = registry.get(SPEC_NAME)
    path = root / "weights" / spec.weights_file
    if not path.exists():
        write_snapshot(spec, path.parent, seeded_state(spec, 0))
    return path


def worker_settings(weights: Path, device: str = "cpu", **groups: dict[str, Any]) -> Any:
    """The code's default WorkerSettings with the bench's weights, ``device`` and overrides per group."""
    from worker.service.settings import WorkerSettings

    data: dict[str, Any] = {k: dict(v) for k, v in groups.items()}
    data["model"] = {"name": SPEC_NAME, "weights": str(weights), "device": device, **data.get("model", {})}
    data.setdefault("fetch", {}).setdefault("allow_local_files", True)
    return WorkerSettings.model_validate(data)


@dataclass
class ScanRig:
    """The scan path under test and the model it runs: ``classify`` is ``fakesake scan``'s, and the sections
    also probe the model and the per-image preparation on their own."""

    model: LoadedModel
    scanner: Scanner
    batch_size: int

    @property
    def pipeline(self) -> Pipeline:
        return self.scanner.pipeline

    @property
    def pool(self) -> Any:
        """The engine processes (``EnginePool``), or None when everything runs in this process."""
        return self.scanner.pool

    @property
    def classifier(self) -> Any:
        # Any, not the Classifier protocol: the sections reach its backend's own attributes (detector, graph).
        return self.model.classifier

    @property
    def spec(self) -> DetectorSpec:
        return self.model.spec

    def classify(self, sources: Iterable[str]) -> Iterator[Outcome]:
        return self.scanner.classify(sources)

    def prepare(self, source: str) -> Prepared:
        """Fetch, decode and preprocess one source on this thread."""
        return self.pipeline.preparer.prepare(source)

    def close(self) -> None:
        self.scanner.close()


def scan_rig(settings: Any, *, processes: bool = False) -> ScanRig:
    """``fakesake scan``'s path for ``settings`` (local files allowed): this process alone (a pipeline: prepare
    threads + one batching thread), or with ``processes`` the engine processes of ``batch.processes`` too.

    The model is loaded first, because the sections also time the :class:`~worker.service.loading.LoadedModel`
    alone.
    """
    loaded = loading.load_model(settings)
    scanner = builder.scanner(settings, loaded=loaded, processes=processes)
    return ScanRig(loaded, scanner, settings.batch.max_size)
