"""Seeded random-weight FFS checkpoints in the exact on-disk layouts the loader accepts.

Random weights say nothing about accuracy, but they exercise every key, shape and the softmax. Scores
of a freshly initialised timm backbone sit near 0.5 for every image, which would hide label/index and
preprocessing bugs, so :func:`seeded_module` re-initialises BatchNorm statistics and calibrates the head
on a fixed synthetic batch: hidden units are standardised and the logit gap has a spread of a few units,
so P(AI) of varied images spreads over (0, 1).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.core.registry import DetectorSpec
from worker.inference.loader import FFSDetector, build_module

#: Every checkpoint layout the loader accepts; ``plain`` is what the 1.0 repos publish.
LAYOUTS = ("plain", "lightning", "lightning-net", "lightning-model", "dataparallel", "compiled")
_PREFIX = {
    "lightning-net": "net.",
    "lightning-model": "model.",
    "dataparallel": "module.",
    "compiled": "_orig_mod.",
}
#: Small timm stand-in for ConvNeXt-L (same family, 64 features, ~0.2M params) for 200M / v2 parity.
SMALL_CONVNEXT = ("test_convnext", 64)


def small_stand_in(spec: DetectorSpec) -> DetectorSpec:
    """``spec`` with its ConvNeXt-L backbone swapped for a tiny ConvNeXt; preprocessing unchanged."""
    arch, features = SMALL_CONVNEXT
    return spec.with_overrides(arch=arch, num_features=features)


def _calibration_batch(spec: DetectorSpec, seed: int) -> torch.Tensor:
    """Photo-like images through the real preprocessing: what the tests will feed the model."""
    from tests.support.images import photo
    from worker.inference.preprocess import to_tensor

    sizes = [(160, 120), (96, 128), (200, 90), (64, 64), (128, 96), (90, 150), (140, 140), (120, 80)]
    return torch.stack([to_tensor(photo(w, h, 1000 + seed + i), spec.preprocessing) for i, (w, h) in enumerate(sizes)])


def seeded_module(spec: DetectorSpec, seed: int = 0) -> FFSDetector:
    """A deterministic FFS module for ``spec`` whose scores spread over (0, 1)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    module = build_module(spec).eval()
    with torch.no_grad():
        # Random affine BN parameters, then running statistics measured on photo-like inputs (as training
        # leaves them): activations stay normalised through the depth, as in a trained network, so fp32
        # rounding is not amplified into score noise that a real checkpoint would not show.
        for bn in module.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                assert bn.weight is not None and bn.bias is not None
                bn.weight.uniform_(0.5, 1.5, generator=generator)
                bn.bias.normal_(0.0, 0.1, generator=generator)
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration pass
        batch = _calibration_batch(spec, seed)
        module.train()
        module.model(batch)
        module.eval()
        features = module.model(batch)
        # Standardise the features the head sees, then scale the logit gap to a spread of ~2 units.
        std = features.std(0)
        std = std.clamp_min(float(std.median()) + 1e-6)
        first, last = module.clf[0], module.clf[2]
        assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
        first.weight.normal_(0.0, spec.num_features**-0.5, generator=generator).div_(std)
        first.bias.copy_(-(first.weight @ features.mean(0)))
        last.weight.normal_(0.0, spec.hidden**-0.5, generator=generator)
        last.bias.zero_()
        logits = module.clf(features)
        gap = logits[:, spec.ai_index] - logits[:, 1 - spec.ai_index]
        last.weight.mul_(2.0 / float(gap.std().clamp_min(1e-6)))
        logits = module.clf(features)
        shift = float((logits[:, spec.ai_index] - logits[:, 1 - spec.ai_index]).mean()) / 2
        last.bias[spec.ai_index] = -shift
        last.bias[1 - spec.ai_index] = shift
    return module


def layout_state(state: dict[str, torch.Tensor], layout: str) -> Any:
    """``state`` (a plain FFS state_dict) as the object a given trainer/wrapper would save."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {LAYOUTS}")
    inner = OrderedDict((f"{_PREFIX.get(layout, '')}{k}", v) for k, v in state.items())
    if layout.startswith("lightning"):
        # What Lightning 2.x ModelCheckpoint writes (minus optimizer tensors): plain containers only.
        return {
            "epoch": 29,
            "global_step": 12345,
            "pytorch-lightning_version": "2.0.6",
            "state_dict": inner,
            "loops": {},
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
        }
    return inner


@functools.lru_cache(maxsize=8)
def seeded_state(spec: DetectorSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state_dict of :func:`seeded_module`, built once per process (treat it as read-only)."""
    return dict(seeded_module(spec, seed).state_dict())


def write_snapshot(
    spec: DetectorSpec, directory: Path, state: dict[str, torch.Tensor], *, layout: str = "plain"
) -> Path:
    """A directory shaped like the HF repo snapshot: ``config.json`` + ``spec.weights_file``.

    ``plain`` is byte-for-byte what ``torch.save(module.state_dict(), path)`` writes (an OrderedDict).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / spec.weights_file
    torch.save(layout_state(state, layout), path)
    # The repos' config.json (its label map is the opposite of the softmax order; nobody must use it).
    config = {"id2label": {"0": "by AI", "1": "by human"}, "label2id": {"by AI": 0, "by human": 1}}
    (directory / "config.json").write_text(json.dumps(config))
    return path


def populate_hf_cache(cache_dir: Path, repo_id: str, files: dict[str, Path], revision: str = "main") -> str:
    """Lay ``files`` out exactly as ``hf_hub_download`` caches them (blobs, snapshot links, refs).

    Returns the fake commit sha the ref points at.
    """
    commit = hashlib.sha1(f"{repo_id}:{sorted(files)}".encode()).hexdigest()
    root = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    for name, src in files.items():
        blob = root / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..", "..", "blobs", blob.name))
    return commit
