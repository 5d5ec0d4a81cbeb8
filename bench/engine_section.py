"""Section 1: the in-process scan path (``fakesake scan``'s ``Scanner.classify`` over files, its engine
processes included) vs the model card's pipeline.

Also the ideal bound from the engine's own per-image costs on this machine's cores (formula in the note).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch

from bench.common import Context, Row, interleaved, median, ratio_of, timed_rate
from bench.corpus import SPEC_NAME, ScanRig, image_set, scan_rig, weights_file, worker_settings
from tests.support.card import CardPipeline

SECTION = "engine"
COUNTS = {"jpeg-1024": (64, 24), "jpeg-4032x3024": (6, 3), "png-1024": (16, 6), "webp-1024": (16, 6)}
TARGET_RATIO = 4.0
TARGET_BOUND = 0.8


def engine_rate(engine: ScanRig, sources: list[str]) -> float:
    """Images/s of one ``classify`` pass; every outcome must be ok."""
    outcomes: list[Any] = []
    rate = timed_rate(len(sources), lambda: outcomes.extend(engine.classify(sources)))
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} images failed, first: {bad[0].error}")
    return rate


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def per_image_ms(run: Callable[[], object], count: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000 / count)
    return median(times)


def classifier_on(classifier: Any, threads: int) -> tuple[Any, contextlib.AbstractContextManager[None]]:
    """The same model on ``threads`` threads (ORT: a new session; torch: the same module, N intra-op threads)."""
    if type(classifier).__name__ == "OnnxClassifier":
        from worker.inference.onnx_classifier import OnnxClassifier

        same = OnnxClassifier(threads=threads, graph=classifier.graph, spec=classifier.spec)
        return same, contextlib.nullcontext()
    return classifier, torch_threads(threads)


def bound(ctx: Context, engine: ScanRig, sources: list[str]) -> dict[str, float]:
    """Per-image costs measured on this engine and the ideal throughput they allow on this machine.

    d  = fetch+decode+preprocess, one image at a time on one thread (``Preparer.prepare``), ms of one core;
    m1 = model forward per image at the engine's batch size on ONE thread, ms of one core;
    mN = model forward per image with one thread per core, wall ms.
    bound = min(cores / (d + m1), 1 / mN): every core busy all the time doing each unit of work at its
    cheapest measured cost, decode overlapped with the model, and the model no faster than on all threads.
    """
    cores = os.cpu_count() or 1
    repeats = ctx.n(5, 3, smoke=1)
    prepared = [engine.prepare(s) for s in sources[: engine.batch_size]]
    with torch_threads(1):
        d = per_image_ms(lambda: [engine.prepare(s) for s in sources[:8]], len(sources[:8]), repeats)
    batch = [p.tensor for p in prepared]
    costs: dict[str, float] = {}
    # mN on every core, whatever the engine's own thread setting: the bound is the machine's, not the config's.
    for key, n in (("m_1", 1), ("m_n", cores)):
        model, threads = classifier_on(engine.classifier, n)
        with threads:
            model.predict(batch)  # warm-up
            costs[key] = per_image_ms(lambda: model.predict(batch), len(batch), repeats)  # noqa: B023
    m_1, m_n = costs["m_1"], costs["m_n"]
    ideal = min(cores / (d + m_1), 1 / m_n) * 1000
    return {"decode_ms": d, "model_1t_ms": m_1, "model_all_ms": m_n, "cores": cores, "bound": ideal}


def warm_up(engine: ScanRig, sources: list[str], *, smoke: bool = False) -> None:
    """One batch per engine process (starting them all), so oneDNN/ORT kernels and thread pools are warm
    (``smoke``: one image per process, enough to start them)."""
    processes = engine.pool.processes if engine.pool is not None else 1
    per_process = 1 if smoke else engine.batch_size
    list(engine.classify(itertools.islice(itertools.cycle(sources), per_process * processes)))


def run(ctx: Context) -> list[Row]:
    from worker.core import registry

    weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
    spec = registry.get(SPEC_NAME)
    reference = CardPipeline(weights, spec)
    settings = worker_settings(weights)
    engine = scan_rig(settings, processes=True)
    default_backend = "onnx" if type(engine.classifier).__name__ == "OnnxClassifier" else "torch"
    processes = engine.pool.processes if engine.pool is not None else 1
    defaults = f"{default_backend}, {settings.model.preprocess}, {processes} process{'es' if processes > 1 else ''}"
    rows: list[Row] = []
    for name, (full, quick) in COUNTS.items():
        images = image_set(ctx.workdir, name, ctx.n(full, quick, smoke=1))
        sources = images.sources
        warm_up(engine, sources, smoke=ctx.smoke)
        if not ctx.smoke:
            reference.score_files(sources[:2])
        with torch.enable_grad():  # the card runs with autograd on (the default)
            rates = interleaved(
                {
                    "engine": partial(engine_rate, engine, sources),
                    "reference": partial(timed_rate, len(sources), partial(reference.score_files, sources)),
                },
                ctx.passes,
            )
        ratio = ratio_of(rates, "engine", "reference")
        is_target = name == "jpeg-1024"
        rows.append(
            Row(
                SECTION,
                f"engine (defaults: {defaults}) {name}, {len(sources)} files",
                median(rates["engine"]),
                "img/s",
                median(rates["reference"]),
                "model card pipeline",
                ratio,
                f">= {TARGET_RATIO:.0f}x" if is_target else "",
                (ratio >= TARGET_RATIO) if is_target else None,
            )
        )
        if is_target:
            costs = bound(ctx, engine, sources)
            measured = median(rates["engine"])
            share = measured / costs["bound"]
            rows.append(
                Row(
                    SECTION,
                    f"engine vs ideal bound, {name}",
                    measured,
                    "img/s",
                    costs["bound"],
                    "bound",
                    share,
                    f">= {TARGET_BOUND:.0%} of bound",
                    share >= TARGET_BOUND,
                    note=(
                        f"bound = min(cores / (d + m1), 1 / mN) with cores={costs['cores']}, "
                        f"d={costs['decode_ms']:.1f} ms (fetch+decode+preprocess, 1 thread), "
                        f"m1={costs['model_1t_ms']:.1f} ms (model per image at batch {engine.batch_size}, 1 thread), "
                        f"mN={costs['model_all_ms']:.1f} ms (model per image, one thread per core): every core "
                        "busy at the cheapest measured per-image cost, decode overlapped with the model"
                    ),
                )
            )
    engine.close()
    return rows
