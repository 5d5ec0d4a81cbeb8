"""The model card's pipeline, written as the card writes it: our baseline for "engine vs reference".

``PreTrainedPipeline`` of the Sumsub FFS repos: a plain module (timm backbone + two-layer head), a plain
``load_state_dict(torch.load(path))``, then per image ``Image.open`` -> ``Resize((224, 224))`` -> ``ToTensor``
-> ``Normalize`` -> ``unsqueeze(0)`` -> forward with autograd on (the card does not disable it) -> softmax.
No batching, NCHW, the torch default thread count. Written from the card, not from our code.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from worker.models.registry import DetectorSpec


class CardModel(nn.Module):
    def __init__(self, arch: str, num_features: int) -> None:
        super().__init__()
        self.model = timm.create_model(arch, pretrained=False, num_classes=0)
        self.clf = nn.Sequential(nn.Linear(num_features, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.clf(self.model(image))  # type: ignore[no-any-return]


class CardPipeline:
    """``CardPipeline(spec, weights)(pil_image) -> [{"label": "by AI", ...}, {"label": "by human", ...}]``."""

    def __init__(self, spec: DetectorSpec, weights: Path) -> None:
        self.model = CardModel(spec.arch, spec.num_features)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()
        pre = spec.preprocessing
        self.transforms = transforms.Compose(
            [
                transforms.Resize((pre.size_px, pre.size_px)),
                transforms.ToTensor(),
                transforms.Normalize(mean=pre.mean, std=pre.std),
            ]
        )

    def __call__(self, inputs: Image.Image) -> list[dict[str, float | str]]:
        image = self.transforms(inputs).unsqueeze(0)
        output = self.model(image)
        probs = torch.softmax(output, dim=1)[0]
        return [{"label": "by AI", "score": probs[1].item()}, {"label": "by human", "score": probs[0].item()}]

    def score_files(self, paths: list[str]) -> list[float]:
        """P(AI) per file, one image at a time (the card's usage)."""
        return [float(self(Image.open(p))[0]["score"]) for p in paths]
