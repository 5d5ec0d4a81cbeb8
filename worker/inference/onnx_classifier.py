"""ONNX Runtime (CPU) implementation of the ``Classifier`` protocol, exported from the loaded torch module.

Selected with ``FAKESAKE_MODEL__BACKEND=onnx``. The strictly loaded torch module is exported to an ONNX graph (8-bit
pixels in, normalised by the graph itself, fp32 inside, dynamic batch; :mod:`worker.inference.onnx_export`) and an
ORT session is built from it, so there is one source of weights (the checkpoint). The graph is cached on disk under
the weights' sha256 (:mod:`worker.inference.graph_cache`), and this module imports no torch: a process whose graph
is cached runs on onnxruntime, Pillow and numpy alone. ``auto`` picks it on CPU whenever onnxruntime is installed;
speed figures are in ``python -m bench --only knobs``.

Parity (ffs-mj-5m, seeded weights, 48 photo-like JPEGs, exact preprocessing): P(AI) within 1.7e-5 of the
model card pipeline (2.1e-5 with graph optimisations off; opsets 13/17/18 alike), logits within 1.4e-4. That is
fp32 rounding, not a wrong op: the card's own fp32 P(AI) is 1.9e-5 from an fp64 forward of the same module,
and ORT's is 1.15e-5 from it, i.e. closer. Torch channels_last stays within 1.5e-6 of the card only because
it runs the same oneDNN kernels. The issue's bound for the ORT backend is 1e-4 (tests assert it).

Why ORT: on the 2-core dev machine its fp32 MobileNetV3 kernels run ~2x more images per core-second than
torch eager channels_last (bench "knobs"). Intra-op threads do not spin-wait here (ORT's default is to spin),
because the engine's prepare threads need the same cores for decoding while the model runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from producers.errors import ConfigError
from worker.core.registry import DetectorSpec

if TYPE_CHECKING:
    from worker.inference.loader import LoadedDetector

log = logging.getLogger(__name__)

# Names fixed by worker.inference.onnx_export (not imported from there: it imports torch).
_INPUT, _OUTPUT = "pixels", "logits"


def export_graph(detector: LoadedDetector) -> bytes:
    """``detector``'s module as an ONNX graph (imports torch); ConfigError when the export fails."""
    from worker.inference.onnx_export import export_onnx

    try:
        return export_onnx(detector.module.eval(), detector.spec.preprocessing)
    except Exception as exc:
        raise ConfigError(f"cannot export {detector.spec.ref} to ONNX: {type(exc).__name__}: {exc}") from exc


def session(graph: bytes, threads: int) -> Any:
    """An ORT CPU session for ``graph``; ConfigError without onnxruntime. A broken graph raises ORT's error."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError("model.backend onnx needs onnxruntime: pip install 'fakesake[worker]'") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 = one per physical core
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No memory patterns: ORT keeps a planned block per input shape, and a worker's batches take every size up
    # to batch.max_size. With them, batches of 1..16 grew a process by ~250 MiB after a batch of 16 had run
    # (mj-5m, 281 -> 541 MiB); without, by ~19 MiB, at the same speed (ms per image, medians of 4 interleaved
    # runs: 16.55 vs 16.94 at batch 16, 15.47 vs 16.45 mixed sizes, 14.65 vs 14.42 at batch 1).
    options.enable_mem_pattern = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """P(AI) per input from an ORT session; the contract of
    :class:`~worker.inference.torch_classifier.TorchClassifier`, except that inputs are 8-bit pixels, (H, W, 3)
    uint8 arrays (:func:`worker.inference.pixels.to_pixels`): the graph normalises them itself."""

    def __init__(
        self,
        detector: LoadedDetector | None = None,
        *,
        threads: int = 0,
        graph: bytes | None = None,
        spec: DetectorSpec | None = None,
        ready_session: Any = None,
    ) -> None:
        """Either ``detector`` (exported now unless ``graph`` is given), or ``graph`` + ``spec`` alone (no torch).
        ``threads``: ORT intra-op threads (0 = one per physical core); ``ready_session``: a session already
        built from ``graph`` with these threads (the graph cache builds one to validate an entry)."""
        if detector is not None and detector.device.type != "cpu":
            raise ConfigError(f"model.backend onnx runs on CPU only, not {detector.device}; use backend torch")
        if detector is None and (graph is None or spec is None):
            raise ValueError("OnnxClassifier needs a detector, or a graph and its spec")
        self.detector = detector
        self.spec: DetectorSpec = spec or detector.spec  # type: ignore[union-attr]
        self.device = "cpu"
        self.threads = threads
        if graph is None:
            assert detector is not None
            graph = export_graph(detector)
        self.graph = graph
        self._session = ready_session if ready_session is not None else session(graph, threads)
        log.info(
            "onnx backend ready for %s (%d bytes of graph, %s threads)", self.spec.ref, len(graph), threads or "auto"
        )

    def predict(self, batch: Sequence[np.ndarray]) -> list[float]:
        """P(AI) for each (H, W, 3) uint8 input of ``batch`` (or an (N, H, W, 3) array)."""
        if len(batch) == 0:
            return []
        array = as_pixels(batch)
        (logits,) = self._session.run([_OUTPUT], {_INPUT: array})
        return p_ai(logits, self.spec.ai_index)


def as_pixels(batch: Sequence[np.ndarray]) -> np.ndarray:
    """``batch`` as one contiguous (N, H, W, 3) uint8 array; TypeError for anything else (a float input would be
    normalised twice, a silent wrong score)."""
    array = batch if isinstance(batch, np.ndarray) else np.stack(list(batch))
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise TypeError(
            f"the ONNX backend takes 8-bit pixels, (N, H, W, 3) uint8 (worker.inference.pixels.to_pixels); "
            f"got {array.dtype} {array.shape}"
        )
    return np.ascontiguousarray(array)


def p_ai(logits: np.ndarray, ai_index: int) -> list[float]:
    """P(AI) per row of ``logits``: the softmax in fp32, as :func:`worker.inference.torch_classifier.p_ai`."""
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    scores: list[float] = (e[:, ai_index] / e.sum(axis=1)).tolist()
    return scores
