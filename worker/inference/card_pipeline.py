"""A drop-in for the model card's ``PreTrainedPipeline``: switch with one import.

Model card usage::

    from pipeline import PreTrainedPipeline          # before
    from worker.models.pipeline import PreTrainedPipeline  # after
    pipe = PreTrainedPipeline("path/to/snapshot")   # or a .pt file; "" = current directory
    pipe(Image.open("photo.jpg"))
    # [{"label": "by AI", "score": 0.93}, {"label": "by human", "score": 0.07}]

Same preprocessing and the same output, but any image mode works (converted to RGB as
``worker.inference.imaging.to_rgb`` does) and no autograd graph is built.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from worker.core import registry
from worker.core.registry import DetectorSpec
from worker.inference.imaging import to_rgb
from worker.inference.loader import load_detector
from worker.inference.preprocess import to_tensor
from worker.inference.torch_classifier import TorchClassifier

DEFAULT_MODEL = "ffs-mj-5m"


def spec_for_path(path: Path) -> DetectorSpec:
    """The registry spec whose weights file ``path`` is (or holds); the card's 5M MJ model otherwise."""
    specs = [registry.get(n) for n in registry.names()]
    if path.is_file():
        match = [s for s in specs if s.weights_file == path.name]
    else:
        match = [s for s in specs if (path / s.weights_file).is_file()]
    return match[0] if match else registry.get(DEFAULT_MODEL)


class PreTrainedPipeline:
    """``PreTrainedPipeline(path)(pil_image) -> [{"label": "by AI", ...}, {"label": "by human", ...}]``."""

    def __init__(self, path: str = "", *, model: str | None = None, device: str = "cpu") -> None:
        location = Path(path or ".")
        self.spec = registry.get(model) if model else spec_for_path(location)
        self.detector = load_detector(self.spec, location, device=device)
        self.classifier = TorchClassifier(self.detector)

    def __call__(self, inputs: Image.Image) -> list[dict[str, str | float]]:
        # predict() runs under inference_mode: no autograd graph, unlike the card's pipeline.
        p_ai = self.classifier.predict([to_tensor(to_rgb(inputs), self.spec.preprocessing)])[0]
        return [{"label": "by AI", "score": p_ai}, {"label": "by human", "score": 1.0 - p_ai}]
