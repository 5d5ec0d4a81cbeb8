"""A scan :class:`~worker.core.pipeline.Pipeline` around any classifier and fetcher, for tests and the bench."""

from __future__ import annotations

from functools import partial

from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.core.pipeline import Pipeline, Preparer
from worker.core.ports import Classifier, Fetcher
from worker.core.registry import DetectorSpec, Thresholds
from worker.inference.imaging import DecodePolicy
from worker.inference.preprocess import from_bytes


def preparer(spec: DetectorSpec, fetcher: Fetcher, policy: DecodePolicy | None = None) -> Preparer:
    return Preparer(fetcher, partial(from_bytes, policy=policy or DecodePolicy(), pre=spec.preprocessing))


def make_pipeline(
    spec: DetectorSpec,
    classifier: Classifier,
    fetcher: Fetcher,
    policy: DecodePolicy | None = None,
    *,
    batch_size: int = 16,
    prepare_threads: int = 2,
    thresholds: Thresholds | None = None,
) -> Pipeline:
    """A started pipeline (its batching thread is a daemon; ``pipeline.batcher.stop()`` ends it early)."""
    batcher = Batcher(classifier.predict, BatchPolicy(batch_size, max_wait_s=0.5)).start()
    return Pipeline(
        spec,
        preparer(spec, fetcher, policy),
        batcher,
        window=2 * batch_size,
        prepare_threads=prepare_threads,
        thresholds=thresholds,
    )
