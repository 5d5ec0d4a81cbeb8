"""The FFS detector module: attribute ``model`` = the timm backbone, ``clf`` = the two-layer head.

Apart from :mod:`worker.inference.loader` so that resolving and hashing weights (what a process with a cached
ONNX graph does at start) never imports torch.
"""

from __future__ import annotations

import torch
from torch import nn


class FFSDetector(nn.Module):
    """timm backbone + the FFS two-layer head; ``forward`` returns the class logits."""

    def __init__(self, backbone: nn.Module, num_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.model = backbone
        self.clf = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(self.model(x))  # type: ignore[no-any-return]
