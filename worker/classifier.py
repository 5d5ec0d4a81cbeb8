"""The torch implementation of the ``Classifier`` protocol: a batch of inputs -> P(AI) per input.

Memory format and precision:

* CPU: fp32, channels_last. On the 2-core Zen 4 dev machine, MobileNetV3-L (ffs-mj-5m), batch 16,
  model only: NCHW 49-56 img/s median vs channels_last 69-71 img/s; P(AI) differs by <= 1.6e-6
  (tests/unit/test_parity.py asserts parity and batch invariance within 1e-5 with channels_last on).
* CUDA: channels_last + ``autocast(float16)`` (the usual win for convnets on tensor cores; not measured
  here: no GPU on the dev machine). The softmax is computed in fp32. Pass ``amp=False`` for fp32.

P(AI) is ``softmax(logits)[:, spec.ai_index]`` (index 1 for the FFS models; the repos' config.json
label map is the other way round and is deliberately not used).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch

from worker.models.loader import LoadedDetector

log = logging.getLogger(__name__)


class TorchClassifier:
    """Runs a :class:`LoadedDetector` in ``eval()`` + ``inference_mode``; one float per input, same order."""

    def __init__(self, detector: LoadedDetector, *, channels_last: bool = True, amp: bool | None = None) -> None:
        self.detector = detector
        self.device = detector.device
        self.channels_last = channels_last
        # Autocast only where it pays: fp16 on CUDA. CPU bf16 changes scores by ~1e-2; never by default.
        self.amp = self.device.type == "cuda" if amp is None else amp
        self._module = detector.module.eval()
        if channels_last:
            self._module.to(memory_format=torch.channels_last)

    def predict(self, batch: Sequence[torch.Tensor] | torch.Tensor) -> list[float]:
        """P(AI) for each (3, H, W) input of ``batch`` (or an (N, 3, H, W) tensor)."""
        if len(batch) == 0:
            return []
        x = batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.float16) if self.amp else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits = self._module(x)
        return p_ai(logits, self.detector.spec.ai_index, len(x))


def p_ai(logits: torch.Tensor, ai_index: int, expected: int) -> list[float]:
    """P(AI) per row of ``logits`` (softmax in fp32), for any backend; ValueError unless there are
    ``expected`` scores, each a probability."""
    scores: list[float] = logits.float().softmax(dim=1)[:, ai_index].cpu().tolist()
    if len(scores) != expected or not all(0.0 <= s <= 1.0 for s in scores):  # NaN fails both comparisons
        raise ValueError(f"model returned invalid scores for a batch of {expected}: {scores[:4]}...")
    return scores
