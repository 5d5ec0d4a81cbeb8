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

from worker.inference.loader import LoadedDetector

log = logging.getLogger(__name__)


class TorchClassifier:
    """Runs a :class:`LoadedDetector` in ``eval()`` + ``inference_mode``; one float per input, same order."""

    def __init__(self, detector: LoadedDetector, *, channels_last: bool = True, amp: bool = False) -> None:
        """``amp``: fp16 autocast, on CUDA only (``model.autocast``). Off by default: scores then equal the
        published fp32 pipeline's; on CPU autocast would mean bf16, which moves scores by ~1e-2."""
        self.detector = detector
        self.device = detector.device
        self.channels_last = channels_last
        self.amp = amp and self.device.type == "cuda"
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
        return p_ai(logits, self.detector.spec.ai_index)


def p_ai(logits: torch.Tensor, ai_index: int) -> list[float]:
    """P(AI) per row of ``logits`` (softmax in fp32), for any backend. Not checked here: the batching loop
    (:func:`worker.core.batcher.checked_scores`) is the one place that rejects a wrong count or a NaN."""
    scores: list[float] = logits.float().softmax(dim=1)[:, ai_index].cpu().tolist()
    return scores
