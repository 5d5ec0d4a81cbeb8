"""Engine throughput (exact vs fast) and what ``fast`` JPEG draft decoding does to scores.

    python bench/fast_mode.py --images 64 --size 1024 --batch 16

Uses ffs-mj-5m with the tests' seeded random weights (speed does not depend on the weights; score
deltas do, so treat them as indicative until measured on the real checkpoint with ``--weights``), and
synthetic photo-like JPEGs (quality 90) from ``tests/support/images.py``.

Measured on the shared 2-core Zen 4 dev machine (torch 2.14.1 CPU, 2 intra-op threads, 2 prepare
threads, 64 JPEGs of 1024x1024, batch 16, 3 timed passes per run, two runs; other engineers' jobs were
running, so rates are noisy):
    exact                          47.6-50.7 / 58.6-59.4 img/s
    fast, draft_factor 2 (512^2)   59.0-68.5 / 63.2-66.0 img/s
    fast, draft_factor 1 (256^2)   63.6-66.3 / 41.3-49.1 img/s
    |dP(AI)| fast-f2 vs exact: mean 0.0631, max 0.2907; fast-f1: mean 0.0812, max 0.6430
    yardstick, re-encoding as JPEG q95 vs exact: mean 0.0520, max 0.2539
    model input |delta| fast-f2 vs exact: mean 0.0048, max 0.0523 (normalised units)
The seeded random model is far more sensitive to invisible changes than a trained one is expected to be
(a q95 re-encode moves it as much as draft decoding does), so the absolute deltas overstate what the
real checkpoint will show; rerun with ``--weights`` on the real file before enabling ``fast`` by default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.checkpoints import seeded_module
from tests.support.fetchers import MemoryFetcher
from tests.support.images import encode, photo
from worker.classifier import TorchClassifier
from worker.engine import Engine
from worker.imaging import DecodePolicy, decode
from worker.models import registry
from worker.models.loader import LoadedDetector, load_detector
from worker.preprocess import to_tensor


def _throughput(engine: Engine, sources: list[str], passes: int) -> list[float]:
    list(engine.classify(sources[: engine.batch_size]))  # warm-up (oneDNN primitive creation)
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        outcomes = list(engine.classify(sources))
        rates.append(len(outcomes) / (time.perf_counter() - start))
        assert all(o.ok for o in outcomes)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="prepare threads")
    parser.add_argument("--weights", help="a real checkpoint (file or snapshot dir) instead of seeded weights")
    args = parser.parse_args()

    spec = registry.get("ffs-mj-5m")
    if args.weights:
        detector = load_detector(spec, args.weights, device="cpu")
    else:
        detector = LoadedDetector(spec, seeded_module(spec, 0).eval(), torch.device("cpu"))
    classifier = TorchClassifier(detector)
    data = {f"mem://{i}": encode(photo(args.size, args.size, i), "JPEG", quality=90) for i in range(args.images)}
    sources = list(data)
    fetcher = MemoryFetcher(data)
    print(f"torch threads {torch.get_num_threads()}, {args.images} JPEGs {args.size}^2, batch {args.batch}")

    scores: dict[str, list[float]] = {}
    for label, policy in {
        "exact": DecodePolicy(),
        "fast-f2": DecodePolicy(mode="fast", draft_factor=2),
        "fast-f1": DecodePolicy(mode="fast", draft_factor=1),
    }.items():
        engine = Engine(spec, classifier, fetcher, policy, batch_size=args.batch, prepare_threads=args.threads)
        rates = _throughput(engine, sources, args.passes)
        scores[label] = [o.score or 0.0 for o in engine.classify(sources)]
        size = decode(data[sources[0]], policy).size
        print(f"{label:8s} decoded {size[0]}x{size[1]}: {min(rates):.1f}-{max(rates):.1f} img/s")

    for label in ("fast-f2", "fast-f1"):
        deltas = [abs(a - b) for a, b in zip(scores[label], scores["exact"], strict=True)]
        print(f"{label} vs exact |dP(AI)|: mean {statistics.fmean(deltas):.4f} max {max(deltas):.4f}")
    # Yardstick: how much an invisible change (re-encoding the decoded image as JPEG q95) moves the same
    # model's scores. With random weights only the ratio of the two figures means anything.
    recoded = {s: encode(decode(data[s], DecodePolicy()), "JPEG", quality=95) for s in sources}
    exact = Engine(spec, classifier, MemoryFetcher(recoded), DecodePolicy(), batch_size=args.batch)
    deltas = [abs((o.score or 0.0) - b) for o, b in zip(exact.classify(sources), scores["exact"], strict=True)]
    print(f"re-encode q95 vs exact |dP(AI)|: mean {statistics.fmean(deltas):.4f} max {max(deltas):.4f}")

    pre, exact_policy, fast_policy = spec.preprocessing, DecodePolicy(), DecodePolicy(mode="fast")
    inputs = torch.stack(
        [
            to_tensor(decode(data[s], fast_policy), pre) - to_tensor(decode(data[s], exact_policy), pre)
            for s in sources[:16]
        ]
    ).abs()
    print(
        f"fast-f2 model input |delta| (normalised units): mean {float(inputs.mean()):.4f} max {float(inputs.max()):.4f}"
    )


if __name__ == "__main__":
    main()
