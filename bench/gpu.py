"""Section 6: GPU. Model-only throughput at batch 1..512 with AMP (fp16 autocast, channels_last) and the
in-process engine end to end, on the first CUDA device. Runs only with ``--device cuda`` on a machine that
has one; otherwise reports that no GPU was available."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from bench.common import Context, Row, interleaved, median, timed_rate
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
    list(engine.classify(sources[:64]))
    start = time.perf_counter()
    engine_rates = interleaved({"engine": partial(engine_rate, engine, sources)}, ctx.passes)["engine"]
    rows.append(
        Row(
            "gpu",
            f"{name}: engine end to end, jpeg-1024, batch 64, 8 prepare threads",
            median(engine_rates),
            "img/s",
            note=f"{time.perf_counter() - start:.0f} s; decode-bound on CPU",
        )
    )
    engine.close()
    return rows
