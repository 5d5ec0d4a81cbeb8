"""A synthetic fine-tuning task where learning is easy: photo-like images, the AI ones with planted stripes.

The tiny detector is timm's ``test_efficientnet`` (~0.1M params) at 32 px with the FFS head; its base checkpoint
has the last head layer zeroed, so the base scores every image 0.5 (validation AUC exactly 0.5, chance) and any
rise is learnt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import photo
from worker.core import registry
from worker.core.registry import DetectorSpec, Preprocessing

TINY = registry.custom("test_efficientnet", 256, "model.pt", name="tiny", version="1", preprocessing=Preprocessing(32))


def planted(img: Image.Image) -> Image.Image:
    """``img`` with strong diagonal stripes over the whole picture (they survive crops, rotation and CutMix)."""
    a = np.asarray(img).astype(np.float32)
    y, x = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    a += 60 * np.sin(x * 1.1 + y * 0.6)[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def write_images(folder: Path, n: int, *, stripes: bool, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photo(40, 36, seed=seed + i)
        (planted(img) if stripes else img).save(folder / f"img{i:03d}.png")
    return folder


def chance_base(directory: Path, spec: DetectorSpec = TINY) -> Path:
    """A checkpoint of ``spec`` whose last head layer is zero: P(AI) = 0.5 for every image."""
    state = dict(seeded_state(spec))
    state["clf.2.weight"] = torch.zeros_like(state["clf.2.weight"])
    state["clf.2.bias"] = torch.zeros_like(state["clf.2.bias"])
    return write_snapshot(spec, directory, state)


def detectors_file(path: Path, weights: Path) -> Path:
    """A detectors file declaring :data:`TINY` (what the CLI needs to know the tiny architecture)."""
    path.write_text(
        "[[detectors]]\n"
        f'name = "{TINY.name}"\nversion = "{TINY.version}"\narch = "{TINY.arch}"\nnum_features = {TINY.num_features}\n'
        f'weights = "{weights}"\npreprocessing = {{ size_px = {TINY.preprocessing.size_px} }}\n'
    )
    return path
