"""Export a loaded torch module to an ONNX graph (the only part of the ONNX backend that needs torch)."""

from __future__ import annotations

import io
import warnings

import torch

INPUT, OUTPUT = "x", "logits"
OPSET = 17


def export_onnx(module: torch.nn.Module, size_px: int, *, opset: int = OPSET) -> bytes:
    """``module`` (on CPU, in eval) as an ONNX graph with a dynamic batch axis."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter (and helpers it calls) is deprecated in favour of the torch.export one, which
        # needs onnxscript (not a dependency); it exports timm convnets exactly, which the parity test checks.
        # Only DeprecationWarnings, only during this call, which runs once per graph (then it is cached).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, size_px, size_px),),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()
