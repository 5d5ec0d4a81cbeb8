"""Export a loaded torch module to an ONNX graph (the only part of the ONNX backend that needs torch).

The graph takes 8-bit pixels, ``(N, size, size, 3)`` uint8 as :func:`worker.inference.pixels.to_pixels` gives
them, and starts with the reference's normalisation (``ToTensor``'s ``/ 255``, then ``Normalize``), each step
the same float32 operation in the same order: CPU workers hand the model a quarter of the bytes and no job
thread spends CPU on float arithmetic (the graph's elementwise ops run in ORT's threads, outside the GIL).
"""

from __future__ import annotations

import io
import warnings

import torch

from worker.core.registry import Preprocessing

INPUT, OUTPUT = "pixels", "logits"
OPSET = 17


class PixelInput(torch.nn.Module):
    """``module`` behind the reference's normalisation: uint8 (N, H, W, 3) in, ``module``'s output out."""

    mean: torch.Tensor  # (1, 3, 1, 1) float32 buffers: constants of the exported graph
    std: torch.Tensor

    def __init__(self, module: torch.nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # ToTensor: float32 level / 255; Normalize: (x - mean) / std. Division, not multiplication by reciprocals,
        # so each value is the same correctly rounded float32 the torch path computes.
        x = pixels.permute(0, 3, 1, 2).to(torch.float32).div(255)
        out: torch.Tensor = self.module(x.sub(self.mean).div(self.std))
        return out


def export_onnx(module: torch.nn.Module, pre: Preprocessing, *, opset: int = OPSET) -> bytes:
    """``module`` (on CPU, in eval) behind :class:`PixelInput` as an ONNX graph with a dynamic batch axis."""
    buf = io.BytesIO()
    wrapped = PixelInput(module, pre).eval()
    with warnings.catch_warnings():
        # The TorchScript exporter (and helpers it calls) is deprecated in favour of the torch.export one, which
        # needs onnxscript (not a dependency); it exports timm convnets exactly, which the parity test checks.
        # Only DeprecationWarnings, only during this call, which runs once per graph (then it is cached).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapped,
            (torch.zeros(1, pre.size_px, pre.size_px, 3, dtype=torch.uint8),),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()
