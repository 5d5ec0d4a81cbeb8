"""Section 5: the knobs. CPU inference backend, batch size, max wait, prepare threads, preprocessing mode, engine
processes.

Model-only figures run the classifier on real preprocessed 1024^2 JPEG inputs. Every variant of one
table is measured interleaved, pass by pass, and each row's ratio is against the table's first variant.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from bench import fast_mode
from bench.common import Context, Row, interleaved, median, percentile, ratio_of, timed_rate
from bench.corpus import SPEC_NAME, ScanRig, image_set, scan_rig, weights_file, worker_settings
from bench.engine_section import engine_rate, warm_up
from worker.core import registry
from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.inference.imaging import DecodePolicy
from worker.inference.loader import LoadedDetector, load_detector
from worker.inference.pixels import normalise, pixels_from_bytes
from worker.inference.process_pool import usable_cores
from worker.inference.torch_classifier import TorchClassifier

log = logging.getLogger(__name__)
PARITY = 1e-4


def _model_rate(predict: Callable[[list[Any]], list[float]], batch: list[Any], rounds: int) -> float:
    return timed_rate(len(batch) * rounds, lambda: [predict(batch) for _ in range(rounds)])


def _classifiers(ctx: Context, detector: LoadedDetector, batch: list[torch.Tensor]) -> dict[str, tuple[Any, str]]:
    """name -> (classifier, note). Each torch variant gets its own copy of the module (memory format)."""
    from worker.inference.onnx_classifier import OnnxClassifier

    def clone() -> LoadedDetector:
        return LoadedDetector(detector.spec, copy.deepcopy(detector.module), detector.device)

    out: dict[str, tuple[Any, str]] = {
        "torch eager (NCHW)": (TorchClassifier(clone(), channels_last=False), ""),
        "torch channels_last": (TorchClassifier(clone()), ""),
    }
    if ctx.quick:
        out["torch.compile"] = (None, "skipped in --quick (compiling takes 20-60 s per batch size)")
    else:
        try:
            compiled = clone()
            module = torch.compile(compiled.module)
            classifier = TorchClassifier(LoadedDetector(detector.spec, module, detector.device))  # type: ignore[arg-type]
            start = time.perf_counter()
            classifier.predict(batch)
            out["torch.compile"] = (classifier, f"compile + first batch took {time.perf_counter() - start:.1f} s")
        except Exception as exc:  # inductor needs a C++ toolchain; report instead of failing the run
            out["torch.compile"] = (None, f"skipped: {type(exc).__name__}: {str(exc)[:160]}")
    cores = torch.get_num_threads()
    graph = None
    for threads in sorted({1, cores}):
        start = time.perf_counter()
        onnx = OnnxClassifier(clone(), threads=threads, graph=graph)
        graph = onnx.graph
        out[f"onnxruntime {threads} thread{'s' if threads > 1 else ''}"] = (
            onnx,
            f"export + session {time.perf_counter() - start:.1f} s",
        )
    return out


def backend_rows(ctx: Context, detector: LoadedDetector, pixels: list[np.ndarray]) -> list[Row]:
    """Model-only img/s per backend on the same images: 8-bit pixels for ORT (its graph normalises), the same
    pixels normalised for torch."""
    floats = [torch.from_numpy(normalise(p, detector.spec.preprocessing)) for p in pixels]
    variants = _classifiers(ctx, detector, floats)
    runnable = {name: c for name, (c, _) in variants.items() if c is not None}

    def fed(name: str) -> list[Any]:
        return list(pixels) if name.startswith("onnxruntime") else floats

    expected = runnable["torch eager (NCHW)"].predict(floats)
    for name, c in runnable.items():
        c.predict(fed(name))  # warm-up
    rounds = 1 if ctx.quick else 3
    rates = interleaved(
        {name: partial(_model_rate, c.predict, fed(name), rounds) for name, c in runnable.items()}, ctx.passes
    )
    rows = []
    for name, (classifier, note) in variants.items():
        if classifier is None:
            rows.append(Row("knobs", f"backend {name}", None, "img/s", note=note))
            continue
        parity = max(abs(a - b) for a, b in zip(classifier.predict(fed(name)), expected, strict=True))
        rows.append(
            Row(
                "knobs",
                f"backend {name}, model only, batch {len(pixels)}",
                median(rates[name]),
                "img/s",
                median(rates["torch eager (NCHW)"]),
                "torch eager",
                ratio_of(rates, name, "torch eager (NCHW)"),
                f"parity <= {PARITY:g}" if "onnx" in name else "",
                (parity <= PARITY) if "onnx" in name else None,
                note=f"max |dP| vs eager {parity:.1e}" + (f"; {note}" if note else ""),
            )
        )
    return rows


def batch_rows(ctx: Context, classifier: Any, tensors: list[torch.Tensor], backend: str) -> list[Row]:
    sizes = [1, 4, 8, 16, 32]
    per_pass = ctx.n(32, 16)  # images per pass and size
    batches = {n: (tensors * (32 // len(tensors) + 1))[:n] for n in sizes}
    for b in batches.values():
        classifier.predict(b)
    rates = interleaved(
        {str(n): partial(_model_rate, classifier.predict, b, max(1, per_pass // len(b))) for n, b in batches.items()},
        ctx.passes,
    )
    return [
        Row(
            "knobs",
            f"batch size {n} ({backend}), model only",
            median(rates[str(n)]),
            "img/s",
            median(rates["1"]),
            "batch 1",
            ratio_of(rates, str(n), "1"),
        )
        for n in sizes
    ]


def _closed_loop(loop: Batcher, tensor: torch.Tensor, clients: int, duration_s: float) -> tuple[float, list[float]]:
    """``clients`` threads each submitting one input and waiting for it, for ``duration_s``: (img/s, latencies)."""
    latencies: list[float] = []
    stop = time.perf_counter() + duration_s

    def client() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            loop.submit(tensor).result(timeout=60)
            latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - began), latencies


def wait_rows(ctx: Context, classifier: Any, tensor: torch.Tensor, max_size: int) -> list[Row]:
    """The batching loop (``Batcher``) per max wait, under 8 closed-loop clients (job threads holding a prepared
    input)."""
    rows = []
    for wait_ms in (0, 5, 10, 20, 50):
        loop = Batcher(classifier.predict, BatchPolicy(max_size=max_size, max_wait_s=wait_ms / 1000)).start()
        rate, latencies = _closed_loop(loop, tensor, 8, 0.2 if ctx.smoke else 1.0 if ctx.quick else 2.0)
        loop.stop()
        rows.append(
            Row(
                "knobs",
                f"max wait {wait_ms} ms, 8 clients, batch <= {max_size}",
                rate,
                "img/s",
                note=f"p50 latency {percentile(latencies, 50):.0f} ms, "
                f"{len(latencies) / max(loop.batches, 1):.1f} images/batch",
            )
        )
    return rows


def _engine_table(
    ctx: Context,
    weights: Any,
    variants: dict[str, dict[str, dict[str, Any]]],
    what: str,
    *,
    build: Callable[[Any], ScanRig] = scan_rig,
    count: tuple[int, int] = (48, 16),
) -> list[Row]:
    """End-to-end engine img/s on jpeg-1024 files for settings variants (ratios against the first).

    ``build``: settings -> engine; the default is one process (prepare threads + a model thread).
    """
    sources = image_set(ctx.workdir, "jpeg-1024", ctx.n(*count)).sources
    engines = {
        name: build(worker_settings(weights, **cast(dict[str, Any], groups))) for name, groups in variants.items()
    }
    for e in engines.values():
        warm_up(e, sources, smoke=ctx.smoke)
    rates = interleaved({name: partial(engine_rate, e, sources) for name, e in engines.items()}, ctx.passes)
    for e in engines.values():
        e.close()
    first = next(iter(variants))
    return [
        Row(
            "knobs",
            f"{what} {name}, engine, jpeg-1024",
            median(rates[name]),
            "img/s",
            median(rates[first]),
            first,
            ratio_of(rates, name, first),
        )
        for name in engines
    ]


def engine_rows(ctx: Context, weights: Any) -> list[Row]:
    rows = _engine_table(
        ctx,
        weights,
        {
            "torch (default threads)": {"model": {"backend": "torch"}},
            "onnx 1 thread": {"model": {"backend": "onnx", "threads": 1}},
            "onnx 2 threads": {"model": {"backend": "onnx", "threads": 2}},
        },
        "backend",
    )
    rows += _engine_table(
        ctx, weights, {str(n): {"batch": {"prepare_threads": n}} for n in (1, 2, 4)}, "prepare threads"
    )
    rows += _engine_table(
        ctx,
        weights,
        {"exact": {}, "tensor (torch JPEG decode + resize, opt-in)": {"model": {"preprocess": "tensor"}}},
        "preprocess",
    )
    # fakesake scan's engine; enough files for a batch of 16 per process of a 2-core machine, twice.
    cores = usable_cores()
    rows += _engine_table(
        ctx,
        weights,
        {str(n): {"batch": {"processes": n}} for n in sorted({1, cores})},
        "engine processes",
        build=partial(scan_rig, processes=True),
        count=(64, 32 * max(1, cores // 2)),
    )
    return rows


def run(ctx: Context) -> list[Row]:
    weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
    settings = worker_settings(weights)
    engine = scan_rig(settings)
    sources = image_set(ctx.workdir, "jpeg-1024", ctx.n(16, 16)).sources
    tensors = [engine.prepare(s).tensor for s in sources]
    # The backends compare against torch eager, so load the module itself: a cached ONNX graph means the engine
    # never built one.
    detector = load_detector(registry.get(SPEC_NAME), weights, device="cpu")
    base = LoadedDetector(
        detector.spec, copy.deepcopy(detector.module).to(memory_format=torch.contiguous_format), detector.device
    )
    policy, pre = DecodePolicy(), registry.get(SPEC_NAME).preprocessing
    pixels = [pixels_from_bytes(Path(s).read_bytes(), policy, pre) for s in sources[: settings.batch.max_size]]
    rows = backend_rows(ctx, base, pixels)
    rows += batch_rows(ctx, engine.classifier, tensors, settings.model.backend)
    rows += wait_rows(ctx, engine.classifier, tensors[0], settings.batch.max_size)
    engine.close()
    rows += engine_rows(ctx, weights)
    rows += fast_mode.rows(ctx, weights)
    log.debug("knobs measured with %s", SPEC_NAME)
    return rows
