"""Section 6: GPU. Model-only throughput at batch 1..512 with AMP (fp16 autocast, channels_last) and the
in-process engine end to end, on the first CUDA device, with ``exact`` preprocessing (Pillow on the CPU) and
with ``tensor`` (nvJPEG decode + resize on the GPU) side by side, plus the per-image prepare cost of each.
Runs only with ``--device cuda`` on a machine that has one; otherwise reports that no GPU was available."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from bench.common import Context, Row, interleaved, median, ratio_of, timed_rate
from bench.corpus import image_set, scan_rig, weights_file, worker_settings
from bench.engine_section import engine_rate

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _repeat(predict: Callable[[Any], list[float]], batch: Any, rounds: int) -> None:
    for _ in range(rounds):
        predict(batch)


def run(ctx: Context) -> list[Row]:
    if ctx.device != "cuda" or not torch.cuda.is_available():
        why = "no CUDA device" if not torch.cuda.is_available() else "run with --device cuda to measure it"
        return [Row("gpu", "GPU: not available in this run", None, "", note=why)]
    name = torch.cuda.get_device_name(0)
    weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
    settings = worker_settings(
        weights, device="cuda", model={"backend": "torch"}, batch={"max_size": 64, "prepare_threads": 8}
    )
    engine = scan_rig(settings)
    classifier = engine.classifier
    sources = image_set(ctx.workdir, "jpeg-1024", ctx.n(256, 64)).sources
    tensor = engine.prepare(sources[0]).tensor
    rows = []
    for size in BATCHES:
        batch = tensor.unsqueeze(0).expand(size, -1, -1, -1).contiguous()
        classifier.predict(batch)
        torch.cuda.synchronize()
        rounds = max(2, 1024 // size)
        rates = [
            timed_rate(size * rounds, partial(_repeat, classifier.predict, batch, rounds)) for _ in range(ctx.passes)
        ]
        rows.append(Row("gpu", f"{name}: model only, AMP fp16, batch {size}", median(rates), "img/s"))
    rows += preprocess_rows(ctx, name, engine, weights, sources)
    return rows


def _prepare_ms(engine: Any, sources: list[str]) -> float:
    start = time.perf_counter()
    for source in sources:
        engine.prepare(source)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / len(sources)


def preprocess_rows(ctx: Context, name: str, engine: Any, weights: Any, sources: list[str]) -> list[Row]:
    """exact (Pillow, CPU) vs tensor (nvJPEG + GPU resize): prepare ms/image on one thread, engine img/s."""
    settings = worker_settings(
        weights,
        device="cuda",
        model={"backend": "torch", "preprocess": "tensor"},
        batch={"max_size": 64, "prepare_threads": 8},
    )
    on_gpu = scan_rig(settings)
    rigs = {"exact": engine, "tensor": on_gpu}
    for rig in rigs.values():
        list(rig.classify(sources[:64]))
    prepare = interleaved({k: partial(_prepare_ms, r, sources[:32]) for k, r in rigs.items()}, ctx.passes)
    start = time.perf_counter()
    rates = interleaved({k: partial(engine_rate, r, sources) for k, r in rigs.items()}, ctx.passes)
    seconds = time.perf_counter() - start
    rows = [
        Row(
            "gpu",
            f"{name}: prepare (decode+resize) jpeg-1024, tensor mode (nvJPEG + GPU resize), 1 thread",
            median(prepare["tensor"]),
            "ms/img",
            median(prepare["exact"]),
            "exact (Pillow, CPU)",
            ratio_of({"a": prepare["exact"], "b": prepare["tensor"]}, "a", "b"),
            note="ratio = exact ms / tensor ms (higher is better)",
        ),
        Row(
            "gpu",
            f"{name}: engine end to end, jpeg-1024, batch 64, 8 prepare threads, tensor mode",
            median(rates["tensor"]),
            "img/s",
            median(rates["exact"]),
            "exact preprocessing",
            ratio_of(rates, "tensor", "exact"),
            note=f"{seconds:.0f} s for both; exact decodes with Pillow on the CPU",
        ),
    ]
    for rig in rigs.values():
        rig.close()
    return rows
