"""The resumable state of a fine-tuning run: ``DIR/checkpoint/last.pt``, written after every epoch.

It holds the model, the best model so far, optimizer, LR scheduler, AMP scaler, early-stopping state, the
per-epoch history and the run's identity (model, base weights hash, recipe, split). Random generators are not
saved: every epoch reseeds torch, numpy and random from (seed, epoch), so a resumed run continues exactly as
an uninterrupted one would. Read back with ``weights_only=True`` like every checkpoint in the project.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from producers.errors import ConfigError

FORMAT = "fakesake-finetune/1"
LAST = "last.pt"


def save(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (a crash mid-write leaves the previous epoch's file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LAST
    partial = path.with_name(f".{LAST}.{os.getpid()}.partial")
    torch.save({"format": FORMAT, **state}, partial)
    partial.replace(path)
    return path


def load(directory: Path) -> dict[str, Any]:
    """The state saved in ``directory`` (ConfigError when there is none or it is not one)."""
    path = directory / LAST
    if not path.is_file():
        raise ConfigError(f"--resume: no training checkpoint {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and I/O errors alike: not a checkpoint we wrote
        raise ConfigError(f"--resume: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"--resume: {path} is not a fakesake finetune checkpoint")
    return state


def check_same_run(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """ConfigError naming what differs when a checkpoint belongs to another run (other data, recipe, model)."""
    keys = sorted(set(saved) | set(current))
    differ = [k for k in keys if saved.get(k) != current.get(k)]
    if differ:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in differ[:4])
        raise ConfigError(
            f"--resume: the checkpoint is from another run ({detail}); use a new --output or the same "
            "inputs and options"
        )
