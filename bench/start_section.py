"""Section "start": time to ready and small scans end to end, start-up included, vs the model card's script.

Every figure is the wall time of a fresh process, measured from just before it is spawned:

* ready: ``loading.load_model`` of the default settings (ONNX backend on CPU) until it returns, with an empty
  ONNX graph cache (imports torch and timm, loads strictly, exports) and with a warm one (neither);
* ``fakesake scan`` of one 1024^2 JPEG (warm cache) vs ``python -m bench.card_script`` of the same file;
* ``fakesake scan`` of a folder of 1024^2 JPEGs (warm cache, default engine processes) vs the card script.

Variants run round-robin per pass, so load drift hits each alike; the ratio is the median of per-pass ratios.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Context, Row, median
from bench.corpus import image_set, weights_file

SECTION = "start"
REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 3.0
TARGET_READY_S = 1.5
READY = "from worker.service import loading, settings; loading.load_model(settings.WorkerSettings())"


def _env(weights: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESAKE_")}
    env.update(
        FAKESAKE_MODEL__WEIGHTS=str(weights),
        FAKESAKE_MODEL__DEVICE="cpu",
        FAKESAKE_MODEL__ONNX_CACHE_DIR=str(cache),
        PYTHONPATH=str(REPO),
    )
    return env


def wall_s(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``argv`` to its exit (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _progress(line: str) -> None:
    # Each pass takes seconds to minutes on a busy machine: show the figures as they come.
    print(f"[bench] start: {line}", file=sys.stderr, flush=True)


def _scan(files: list[str]) -> list[str]:
    return [sys.executable, "-m", "worker.service.cli", "scan", "--no-progress", "-o", os.devnull, *files]


def _card(weights: Path, files: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench.card_script", str(weights), *files]


def ready_rows(ctx: Context, weights: Path) -> list[Row]:
    warm_dir, cold_dir = ctx.workdir / "graphs-warm", ctx.workdir / "graphs-cold"
    ready = [sys.executable, "-c", READY]
    wall_s(ready, _env(weights, warm_dir))  # fills the warm cache
    cold, warm = [], []
    for _ in range(ctx.passes):
        shutil.rmtree(cold_dir, ignore_errors=True)
        cold.append(wall_s(ready, _env(weights, cold_dir)))
        warm.append(wall_s(ready, _env(weights, warm_dir)))
        _progress(f"ready: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s")
    ratio = median([c / w for c, w in zip(cold, warm, strict=True)])
    return [
        Row(
            SECTION,
            "ready (process start -> model loaded), warm ONNX graph cache",
            median(warm),
            "s",
            median(cold),
            "empty cache (torch+timm import, strict load, export)",
            ratio,
            f"<= {TARGET_READY_S} s",
            median(warm) <= TARGET_READY_S,
            note="lower is better; ratio = cold / warm time (median of per-pass ratios)",
        )
    ]


def scan_rows(ctx: Context, weights: Path, name: str, files: list[str]) -> Row:
    env = _env(weights, ctx.workdir / "graphs-warm")
    scan, card = [], []
    for _ in range(ctx.passes):
        scan.append(wall_s(_scan(files), env))
        card.append(wall_s(_card(weights, files), env))
        _progress(f"{name}: scan {scan[-1]:.2f} s, card script {card[-1]:.2f} s")
    ratio = median([c / s for c, s in zip(card, scan, strict=True)])
    return Row(
        SECTION,
        f"fakesake scan end to end (start-up included, warm cache), {name}",
        median(scan),
        "s",
        median(card),
        "model card script",
        ratio,
        f">= {TARGET_RATIO:.0f}x",
        ratio >= TARGET_RATIO,
        note="ratio = card time / scan time (higher is better)",
    )


def run(ctx: Context) -> list[Row]:
    weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
    rows = ready_rows(ctx, weights)
    images = image_set(ctx.workdir, "jpeg-1024", ctx.n(200, 48)).sources
    rows.append(scan_rows(ctx, weights, "1 JPEG 1024^2", images[:1]))
    rows.append(scan_rows(ctx, weights, f"{len(images)} JPEGs 1024^2", images))
    return rows
