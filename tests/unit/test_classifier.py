"""TorchClassifier: softmax index, batch forms, precision defaults, invalid outputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from worker.core import registry
from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.inference.loader import LoadedDetector
from worker.inference.torch_classifier import TorchClassifier

SPEC = registry.get("ffs-mj-5m")


class FixedLogits(nn.Module):
    """Logits (0, x) where x is the input's mean: P(AI) = sigmoid(mean) at softmax index 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(mean), mean], dim=1)


def _classifier(module: nn.Module) -> TorchClassifier:
    return TorchClassifier(LoadedDetector(SPEC, module, torch.device("cpu")))


def test_scores_are_softmax_index_one() -> None:
    batch = [torch.full((3, 4, 4), v) for v in (-2.0, 0.0, 3.0)]
    scores = _classifier(FixedLogits()).predict(batch)
    assert scores == pytest.approx([1 / (1 + math.exp(-v)) for v in (-2.0, 0.0, 3.0)], abs=1e-6)


def test_autocast_is_off_by_default_even_on_cuda() -> None:
    """fp16 autocast changes scores; the default must keep the published fp32 numbers (model.autocast opts in)."""
    on_cuda = LoadedDetector(SPEC, FixedLogits(), torch.device("cuda"))  # no CUDA call: the module is not moved
    assert not TorchClassifier(on_cuda).amp
    assert TorchClassifier(on_cuda, amp=True).amp
    assert not TorchClassifier(LoadedDetector(SPEC, FixedLogits(), torch.device("cpu")), amp=True).amp


def test_accepts_a_stacked_tensor_and_an_empty_batch() -> None:
    classifier = _classifier(FixedLogits())
    assert classifier.predict(torch.zeros(2, 3, 4, 4)) == pytest.approx([0.5, 0.5])
    assert classifier.predict([]) == []


def test_cpu_defaults_fp32_channels_last_eval() -> None:
    conv = nn.Conv2d(3, 2, 1)
    module = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    module.train()
    classifier = _classifier(module)
    assert not classifier.amp and classifier.channels_last and not module.training
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_nan_logits_fail_the_batch_in_the_batching_loop() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 2), math.nan)

    batcher = Batcher(_classifier(Broken()).predict, BatchPolicy(max_size=1, max_wait_s=0)).start()
    with pytest.raises(ValueError, match="outside"):
        batcher.submit(torch.zeros(3, 4, 4)).result(timeout=30)
    batcher.stop()
