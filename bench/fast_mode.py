"""Preprocessing mode: what ``fast`` (JPEG draft decoding) gains over ``exact`` and what it does to scores.

Part of ``python -m bench`` (section ``knobs``); on its own: ``python -m bench --only knobs``.

Uses ffs-mj-5m with the tests' seeded random weights (speed does not depend on the weights; score deltas
do, so treat them as indicative until measured on the real checkpoint) and photo-like JPEGs (quality 90).
A yardstick puts the deltas in proportion: how much re-encoding the decoded image as JPEG q95 (an
invisible change) moves the same model's scores.

Earlier standalone measurement (shared 2-core Zen 4 dev machine, 64 JPEGs 1024^2, batch 16; noisy):
exact 47.6-59.4 img/s, fast (draft to >= 448 px) 59.0-68.5 img/s; |dP(AI)| fast vs exact: mean 0.0631,
max 0.2907; re-encode q95 vs exact: mean 0.0520, max 0.2539; model input |delta| mean 0.0048, max 0.0523.
The seeded random model is far more sensitive to invisible changes than a trained one is expected to be,
so the absolute deltas overstate what the real checkpoint will show.
"""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Context, Row, interleaved, median, ratio_of
from bench.corpus import image_set, scan_rig
from bench.engine_section import engine_rate
from tests.support.fetchers import MemoryFetcher
from tests.support.images import encode
from worker.core.pipeline import Pipeline, Preparer
from worker.core.registry import Preprocessing
from worker.inference.imaging import DecodePolicy, decode
from worker.inference.pixels import normalise


def model_input(prepared: Any, pre: Preprocessing) -> np.ndarray:
    """The normalised model input of a prepared image: a torch backend's tensor as it is, the ONNX backend's 8-bit
    pixels normalised as its graph does."""
    array = np.asarray(prepared)
    return normalise(array, pre) if array.dtype == np.uint8 else array


def _deltas(a: list[float], b: list[float]) -> tuple[float, float]:
    values = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return statistics.fmean(values), max(values)


def rows(ctx: Context, weights: Any) -> list[Row]:
    """img/s exact vs fast on 1024^2 and 12 MP JPEGs, and the score/input deltas fast causes."""
    from bench.corpus import worker_settings

    out: list[Row] = []
    exact = scan_rig(worker_settings(weights))
    fast = scan_rig(worker_settings(weights, model={"preprocess": "fast"}))
    for name, count in (("jpeg-1024", ctx.n(48, 16)), ("jpeg-4032x3024", ctx.n(6, 3))):
        sources = image_set(ctx.workdir, name, count).sources
        for engine in (exact, fast):
            list(engine.classify(sources[:4]))
        rates = interleaved(
            {"fast": partial(engine_rate, fast, sources), "exact": partial(engine_rate, exact, sources)},
            ctx.passes,
        )
        ratio = ratio_of(rates, "fast", "exact")
        out.append(
            Row(
                "knobs",
                f"preprocess fast vs exact, {name}",
                median(rates["fast"]),
                "img/s",
                median(rates["exact"]),
                "exact",
                ratio,
            )
        )
    sources = image_set(ctx.workdir, "jpeg-1024", ctx.n(48, 16)).sources
    exact_scores = [o.score or 0.0 for o in exact.classify(sources)]
    fast_scores = [o.score or 0.0 for o in fast.classify(sources)]
    # Yardstick: the same exact pipeline on the images re-encoded as JPEG q95.
    data = {s: encode(decode(Path(s).read_bytes(), DecodePolicy()), "JPEG", quality=95) for s in sources}
    # Same decode and the same batching thread as ``exact``; only the bytes differ.
    here = exact.pipeline
    recoded = Pipeline(
        here.spec,
        Preparer(MemoryFetcher(data), here.preparer.decode),
        here.batcher,
        window=here.window,
        prepare_threads=here.prepare_threads,
    )
    recoded_scores = [o.score or 0.0 for o in recoded.classify(sources)]
    fast_mean, fast_max = _deltas(fast_scores, exact_scores)
    yard_mean, yard_max = _deltas(recoded_scores, exact_scores)
    raw = Path(sources[0]).read_bytes()
    pre = exact.pipeline.spec.preprocessing
    inputs = np.abs(
        model_input(fast.pipeline.preparer.decode(raw), pre) - model_input(exact.pipeline.preparer.decode(raw), pre)
    )
    exact.close()
    fast.close()
    out.append(
        Row(
            "knobs",
            f"|dP(AI)| fast vs exact, mean over {len(sources)} jpeg-1024 (seeded model)",
            fast_mean,
            "P(AI)",
            yard_mean,
            "re-encode q95 vs exact",
            fast_mean / yard_mean if yard_mean else None,
            note=f"max |dP| fast {fast_max:.4f}, re-encode q95 {yard_max:.4f}; model input |delta| (normalised units) "
            f"mean {float(inputs.mean()):.4f} max {float(inputs.max()):.4f}; random weights: indicative only",
        )
    )
    return out
