"""Provenance evidence: what reading it costs beside the model (``python -m bench --only evidence``).

Rows: the scan engine on 1024^2 JPEGs without metadata, evidence on vs off side by side (interleaved passes;
target: evidence costs at most 10%); the evidence reader alone on those files, against decode + preprocess;
C2PA read + verify of a signed 1024^2 JPEG (a test CA's manifest, trust anchors set); the invisible-watermark
check on 1024^2 PNGs (what the default ``lossless`` mode runs): the whole check (a second Pillow decode, then all
four schemes in both readings) and the numpy decode alone, against the model's decode + preprocess of the same files.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import Context, Row, interleaved, median, ratio_of
from bench.corpus import image_set, scan_rig, weights_file, worker_settings
from bench.engine_section import engine_rate


def _ms_per_call(run: Callable[[Any], object], items: Sequence[Any], repeat: int) -> float:
    per_pass = []
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            run(item)
        per_pass.append((time.perf_counter() - start) * 1000 / len(items))
    return median(per_pass)


def run(ctx: Context) -> list[Row]:
    from tests.support.evidence import c2pa_signed, signing_ca
    from worker.evidence import watermark
    from worker.evidence.reader import EvidencePolicy, EvidenceReader

    weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
    sources = image_set(ctx.workdir, "jpeg-1024", ctx.n(48, 16)).sources
    pngs = [Path(p).read_bytes() for p in image_set(ctx.workdir, "png-1024", ctx.n(16, 8)).sources]
    on = scan_rig(worker_settings(weights, evidence={"enabled": True}))
    off = scan_rig(worker_settings(weights, evidence={"enabled": False}))
    try:
        for engine in (on, off):
            list(engine.classify(sources[:4]))  # warm-up
        rates = interleaved(
            {"on": partial(engine_rate, on, sources), "off": partial(engine_rate, off, sources)}, ctx.passes
        )
        data = [Path(s).read_bytes() for s in sources]
        decode_ms = _ms_per_call(partial(on.model.decode), data, 2)
        png_decode_ms = _ms_per_call(partial(on.model.decode), pngs, 2)
    finally:
        on.close()
        off.close()
    ratio = ratio_of(rates, "on", "off")
    reader_ms = _ms_per_call(partial(EvidenceReader()), data, 5)
    signed = [c2pa_signed(d) for d in data[:4]]
    trusted = EvidenceReader(EvidencePolicy(trust_anchors_pem=signing_ca().ca_pem.decode()))
    c2pa_ms = _ms_per_call(partial(trusted), signed, 5)
    check_ms = _ms_per_call(partial(watermark.read, max_px=1 << 30), pngs, 3)
    pixels = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in pngs]
    match_ms = _ms_per_call(watermark.match, pixels, 3)
    name = f"jpeg-1024 without metadata, {len(sources)} files"
    return [
        Row(
            "evidence",
            f"engine with evidence on, {name}",
            median(rates["on"]),
            "img/s",
            median(rates["off"]),
            "evidence off",
            ratio,
            ">= 0.90x (<= 10% cost)",
            ratio >= 0.90,
        ),
        Row("evidence", f"evidence reader alone, {name}", reader_ms, "ms/img", decode_ms, "decode + preprocess"),
        Row(
            "evidence",
            "C2PA read + verify (trusted anchors), signed jpeg-1024",
            c2pa_ms,
            "ms/img",
            decode_ms,
            "decode + preprocess",
        ),
        Row(
            "evidence",
            f"watermark check (Pillow decode + 4 schemes x 2 readings), png-1024, {len(pngs)} files",
            check_ms,
            "ms/img",
            png_decode_ms,
            "decode + preprocess",
        ),
        Row("evidence", "watermark numpy decode alone (4 schemes x 2 readings), png-1024", match_ms, "ms/img"),
    ]
