"""Ensemble cost: per-image cost of a two-detector ensemble (ffs-mj-5m + ffs-sd-5m) against one detector.

Both run ``fakesake scan``'s in-process pipeline (prepare threads + one batching thread per detector, the code's
default backend) over the same files, interleaved pass by pass. The ensemble fetches and decodes each image once
and feeds the same input to both 5M models (they share their preprocessing), so its extra cost is one more model
pass per image. Seeded random weights: speed only.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from bench.common import Context, Row, interleaved, median, ratio_of, timed_rate
from bench.corpus import image_set, worker_settings

SECTION = "ensemble"
TARGET = 1.25  # the bound: an ensemble of two 5M models costs at most 1.25x one detector per image
PAIR = "ffs-mj-5m,ffs-sd-5m"


def weights_dir(root: Path) -> Path:
    """Both detectors' seeded checkpoints in one snapshot-shaped folder."""
    from tests.support.checkpoints import seeded_state, write_snapshot
    from worker.core import registry

    folder = root / "ensemble-weights"
    for name, seed in (("ffs-mj-5m", 0), ("ffs-sd-5m", 1)):
        spec = registry.get(name)
        if not (folder / spec.weights_file).exists():
            write_snapshot(spec, folder, seeded_state(spec, seed))
    return folder


def _scan_all(scanner: Any, sources: list[str]) -> None:
    for _ in scanner.classify(sources):
        pass


def run(ctx: Context) -> list[Row]:
    from worker.service import builder

    weights = weights_dir(ctx.workdir)
    rows: list[Row] = []
    for fmt, (full, quick) in {"jpeg-1024": (48, 16), "jpeg-4032x3024": (12, 6)}.items():
        sources = image_set(ctx.workdir, fmt, ctx.n(full, quick)).sources
        scanners = {
            label: builder.scanner(
                worker_settings(weights, batch={"processes": 1}, model={"names": names}), processes=False
            )
            for label, names in (("single", "ffs-mj-5m"), ("ensemble", PAIR))
        }
        for scanner in scanners.values():
            list(scanner.classify(sources[:8]))  # warm-up: kernels, thread pools
        runs = {
            label: partial(timed_rate, len(sources), partial(_scan_all, scanner, sources))
            for label, scanner in scanners.items()
        }
        rates = interleaved(runs, ctx.passes)
        cost = ratio_of(rates, "single", "ensemble")  # per-image cost ratio = single rate / ensemble rate
        rows.append(
            Row(
                SECTION,
                f"two-detector ensemble ({PAIR}) per-image cost vs one detector, {fmt}, {len(sources)} files",
                median(rates["ensemble"]),
                "img/s",
                median(rates["single"]),
                "ffs-mj-5m alone",
                cost,
                f"<= {TARGET}x cost",
                cost <= TARGET,
                note="ratio = cost of the ensemble / cost of one detector per image (median of per-pass ratios); "
                "one fetch + decode shared, one more 5M model pass",
            )
        )
        for scanner in scanners.values():
            scanner.close()
    return rows
