"""Start the ONNX backend from the graph cache: what a scan, an engine process or a worker does at start.

A cache hit costs the weights' sha256 (the caller's: remembered in the cache, see ``GraphCache.weights_sha256``),
reading the graph and building the ORT session:
no torch, no timm, no export. A miss (or a stale/corrupt entry) has a child process load the weights strictly
with torch and export (:mod:`worker.inference.export_child`: torch never enters this process), validates the graph
by building the session from it, and stores it for the next start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from producers.errors import ConfigError
from worker.core.registry import DetectorSpec
from worker.inference.export_child import Load, export_in_child
from worker.inference.graph_cache import GraphCache, GraphKey
from worker.inference.onnx_classifier import OnnxClassifier, session

log = logging.getLogger(__name__)

_GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def runs_on_cpu(device: str) -> bool:
    """Whether the ``model.device`` setting means the CPU, deciding ``auto`` without importing torch when the
    machine has no GPU device node (torch cannot see a GPU without one); otherwise torch decides."""
    if device == "cpu":
        return True
    if device == "auto" and not any(os.path.exists(p) for p in _GPU_NODES):
        return True
    from worker.inference.loader import resolve_device

    return resolve_device(device).type == "cpu"


def load_onnx(
    spec: DetectorSpec,
    weights: Path,
    weights_sha256: str,
    *,
    threads: int,
    cache_dir: Path | None,
    load: Load,
    export: Callable[[Load, str], bytes] = export_in_child,
) -> OnnxClassifier:
    """An ORT classifier for ``spec`` with the weights file ``weights`` (whose sha256 the caller knows: it stamps
    results with it too); ``load`` strictly loads the torch module (only on a cache miss, by ``export``: in a child
    process unless a caller, a test, exports in its own). ``cache_dir`` None: no cache, export at every start."""
    if cache_dir is None:
        return OnnxClassifier(threads=threads, graph=export(load, spec.ref), spec=spec)
    cache = GraphCache(cache_dir)
    key = GraphKey.of(spec, weights_sha256)
    graph = cache.load(key)
    if graph is not None:
        try:
            ready = session(graph, threads)
        except ConfigError:
            raise
        except Exception as exc:  # ORT refuses the bytes: treat the entry as corrupt
            cache.discard(key, f"refused by onnxruntime ({type(exc).__name__}: {str(exc)[:200]})")
        else:
            log.info("ONNX graph of %s from the cache (%s)", spec.ref, cache.paths(key)[0])
            return OnnxClassifier(threads=threads, graph=graph, spec=spec, ready_session=ready)
    graph = export(load, spec.ref)
    classifier = OnnxClassifier(threads=threads, graph=graph, spec=spec)  # builds the session: the graph is valid
    cache.store(key, graph)
    return classifier
