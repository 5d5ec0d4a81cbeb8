"""Training speed of ``fakesake finetune``: img/s of one epoch, head only (``--freeze-backbone``) and all weights.

``python -m bench.finetune_speed [--device auto|cpu|cuda] [--images 200] [--threads N] [--full]``

Uses ffs-mj-5m with the tests' seeded random weights (speed does not depend on the weights) and photo-like
224 px JPEGs (half with planted stripes), through the same dataset, augmentation and trainer as the command
(on CUDA: AMP fp16 + channels_last). Prints wall-clock img/s and images per CPU-second of the process (on a
shared machine the second is the steadier figure for CPU training).

Measured on the shared 2-core dev machine (load average ~10-15; ``--images 200 --threads 1 --full``): head only
23.4-23.7 images per CPU-second (9.3-11.0 img/s wall), all weights 9.2-9.7 images per CPU-second (2.2-3.5 img/s
wall). GPU: not measured yet.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import photo
from tests.support.training import planted
from worker.core import registry
from worker.core.ports import Fetched
from worker.evaluation.dataset import LabelledSource
from worker.inference.ffs_module import FFSDetector
from worker.inference.imaging import DecodePolicy
from worker.inference.loader import load_detector, resolve_device
from worker.training import corpus
from worker.training.config import TrainConfig
from worker.training.data import TrainImages
from worker.training.trainer import Trainer


class _Memory:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def fetch(self, source: str, *, version: str | None = None) -> Fetched:
        return Fetched(self.files[source], source)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--full", action="store_true", help="also train all weights (slow on a CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = registry.get("ffs-mj-5m")
    device = resolve_device(args.device)
    files: dict[str, bytes] = {}
    for i in range(args.images):
        img = photo(224, 224, seed=i)
        buf = io.BytesIO()
        (planted(img) if i % 2 else img).save(buf, "JPEG", quality=90)
        files[f"img{i}.jpg"] = buf.getvalue()
    sources = [LabelledSource(name, "ai" if i % 2 else "human", "bench") for i, name in enumerate(files)]
    items, _ = corpus.read(sources, _Memory(files), DecodePolicy(), progress=False)
    with TemporaryDirectory() as tmp:
        weights = write_snapshot(spec, Path(tmp) / "base", seeded_state(spec))
        for freeze in (True, False) if args.full else (True,):
            config = TrainConfig(epochs=2, batch_size=32, freeze_backbone=freeze)
            module = load_detector(spec, weights, device="cpu").module
            assert isinstance(module, FFSDetector)
            train = TrainImages(corpus.examples(items, spec.ai_index), spec.preprocessing, DecodePolicy(), config)
            val = corpus.eval_images(items[:8], spec.preprocessing, DecodePolicy(), spec.ai_index)
            trainer = Trainer(
                module, train, val, config, ai_index=spec.ai_index, device=device, out=Path(tmp), run={}, progress=False
            )
            for _ in range(2):  # the first epoch warms up (allocator, cuDNN autotuning)
                c0, w0 = time.process_time(), time.perf_counter()
                _, n = trainer._train_epoch(1)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                what = "head only" if freeze else "all weights"
                print(f"{what} on {device}: {n} images, {n / wall:.1f} img/s wall, {n / cpu:.1f} img per CPU-second")


if __name__ == "__main__":
    main()
