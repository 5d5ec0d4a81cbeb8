"""The batched detection engine: sources -> fetch -> decode -> preprocess -> batched predict -> outcomes.

Knows nothing of Celery, Redis or HTTP: bytes come through a :class:`~worker.protocols.Fetcher` and
scores through a :class:`~worker.protocols.Classifier`. ``classify`` prepares inputs on a small thread
pool (Pillow and torch release the GIL) while the calling thread runs the model on the previous chunk,
and yields exactly one :class:`Outcome` per input, in input order. Errors are isolated per item; a
failing batch prediction turns that batch (only) into ``internal`` outcomes.

With a :class:`~worker.engine_pool.EnginePool` (``batch.processes``; in-process scans only), ``classify`` hands
chunks of one batch to engine processes instead, with the same contract; ``prepare`` and ``classifier`` stay
in this process.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import torch

from producers.contract import Band, ErrorInfo, Label, Status, Timings
from producers.errors import ConfigError, FakesakeError, as_fakesake_error
from worker.engine_pool import EnginePool, resolve_processes, usable_cores
from worker.imaging import DecodePolicy
from worker.models.registry import DetectorSpec, Thresholds
from worker.preprocess import from_bytes
from worker.protocols import Classifier, Fetcher
from worker.verdict import verdict

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


@dataclass(frozen=True)
class Prepared:
    """A model input ready for batching, and what it cost to make it."""

    tensor: torch.Tensor
    fetch_ms: float
    decode_ms: float  # decode + preprocess


@dataclass(frozen=True)
class Outcome:
    """The result for one input: a verdict, or an error with a stable code."""

    source: str
    status: Status
    model: str
    score: float | None = None
    label: Label | None = None
    band: Band | None = None
    error: ErrorInfo | None = None
    timings: Timings = field(default_factory=Timings)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict with the fields of a scan record (issue 2)."""
        return {
            "source": self.source,
            "status": self.status.value,
            "score": self.score,
            "label": self.label.value if self.label else None,
            "band": self.band.value if self.band else None,
            "model": self.model,
            "error": {"code": self.error.code, "message": self.error.message} if self.error else None,
            "timings": self.timings.model_dump(exclude_none=True),
        }


@dataclass
class _Item:
    source: str
    submitted: float
    prepared: Prepared | None = None
    error: FakesakeError | None = None
    spent: dict[str, float] = field(default_factory=dict)  # stage timings, kept when a later stage fails


class Engine:
    """Classify sources in batches with per-item error isolation."""

    def __init__(
        self,
        spec: DetectorSpec,
        classifier: Classifier,
        fetcher: Fetcher,
        decode_policy: DecodePolicy,
        *,
        batch_size: int = 16,
        prepare_threads: int = 2,
        thresholds: Thresholds | None = None,
        pool: EnginePool | None = None,
    ) -> None:
        """``pool``: engine processes that run ``classify`` (closed with this engine); None = this process."""
        if batch_size < 1 or prepare_threads < 1:
            raise ValueError("batch_size and prepare_threads must be >= 1")
        self.spec = spec
        self.classifier = classifier
        self.fetcher = fetcher
        self.decode_policy = decode_policy
        self.batch_size = batch_size
        self.prepare_threads = prepare_threads
        self.thresholds = thresholds or spec.thresholds
        self.pool = pool

    @classmethod
    def from_settings(
        cls,
        settings: WorkerSettings,
        fetcher: Fetcher,
        *,
        s3_client_factory: Callable[[], Any] | None = None,
        fetcher_factory: Callable[[], Fetcher] | None = None,
    ) -> Engine:
        """Load the configured detector and build an engine around ``fetcher`` (ConfigError if unusable).

        ``fetcher_factory``: a picklable callable that builds a fetcher like ``fetcher`` in another process.
        Only with it does ``classify`` run on ``batch.processes`` engine processes (in-process scans); without
        it (``fakesake worker``) the engine is this process alone, whatever ``batch.processes`` says.
        """
        from worker.classifier import TorchClassifier
        from worker.fetch.s3 import make_s3_client
        from worker.models import registry
        from worker.models.loader import load_detector

        model = settings.model
        spec = registry.get(model.name)
        try:
            thresholds = Thresholds(
                human_max=spec.thresholds.human_max if model.human_max is None else model.human_max,
                ai_min=spec.thresholds.ai_min if model.ai_min is None else model.ai_min,
            )
        except ValueError as exc:
            raise ConfigError(f"model thresholds: {exc}") from None
        if model.threads:
            torch.set_num_threads(model.threads)
        detector = load_detector(
            spec,
            model.weights,
            revision=model.revision,
            device=model.device,
            s3_client_factory=s3_client_factory or partial(make_s3_client, settings.s3),
        )
        policy = DecodePolicy(
            max_pixels=settings.fetch.max_pixels,
            max_bytes=settings.fetch.max_bytes,
            mode=model.preprocess,
            target_px=spec.preprocessing.size_px,
        )
        classifier: Classifier
        backend = model.backend
        if backend == "auto":
            backend = "onnx" if detector.device.type == "cpu" and find_spec("onnxruntime") else "torch"
        if backend == "onnx":
            from worker.backends.onnx import OnnxClassifier

            # Half the cores by default: the prepare threads decode on the rest, and at 1024^2 JPEG decode and
            # model cost about the same per core. On the shared 2-core machine, engine img/s interleaved over 5
            # passes: 1 ORT thread median 14.1 vs 2 threads 9.5 (1 thread ahead in 4 of 5; load was heavy).
            classifier = OnnxClassifier(detector, threads=model.threads or max(1, usable_cores() // 2))
        else:
            classifier = TorchClassifier(detector)
        log.info("model backend %s (setting %s) on %s", backend, model.backend, detector.device)
        pool = None
        if fetcher_factory is not None:
            processes = resolve_processes(settings.batch.processes, detector.device.type)
            if processes > 1:
                pool = EnginePool.for_settings(settings, fetcher_factory, processes, spec.ref)
                log.info(
                    "classify runs on %d engine processes (batch.processes=%d)", processes, settings.batch.processes
                )
        return cls(
            spec,
            classifier,
            fetcher,
            policy,
            batch_size=settings.batch.max_size,
            prepare_threads=settings.batch.prepare_threads,
            thresholds=thresholds,
            pool=pool,
        )

    @property
    def device(self) -> str:
        """Where the model runs (``cpu``, ``cuda:0``...), for logs."""
        return str(getattr(self.classifier, "device", "unknown"))

    def close(self) -> None:
        """Stop the engine processes, if any (prepare threads live only inside ``classify``)."""
        if self.pool is not None:
            self.pool.close()

    # --- one input ------------------------------------------------------------------------------------

    def prepare(self, source: str, version: str | None = None) -> Prepared:
        """Fetch, decode and preprocess one source; raises FakesakeError with a code."""
        return self._prepare(source, version, {})

    def _prepare(self, source: str, version: str | None, spent: dict[str, float]) -> Prepared:
        start = time.perf_counter()
        fetched = self.fetcher.fetch(source, version=version)
        spent["fetch_ms"] = _ms(start)
        start = time.perf_counter()
        tensor = from_bytes(fetched.data, self.decode_policy, self.spec.preprocessing)
        spent["decode_ms"] = _ms(start)
        return Prepared(tensor=tensor, fetch_ms=spent["fetch_ms"], decode_ms=spent["decode_ms"])

    def _prepare_item(self, item: _Item) -> _Item:
        try:
            item.prepared = self._prepare(item.source, None, item.spent)
        except FakesakeError as exc:
            item.error = exc
        except Exception as exc:
            log.exception("internal error preparing source=%s", item.source)
            item.error = as_fakesake_error(exc)
        return item

    # --- many inputs ----------------------------------------------------------------------------------

    def classify(self, sources: Iterable[str]) -> Generator[Outcome, None, None]:
        """One outcome per source, in order. Prepares up to two batches ahead of the model.

        With engine processes, inputs of more than one batch go to them in chunks of one batch (the batches this
        process would make, so scores are identical); a single batch runs here, where decode threads overlap the
        model on every core, instead of on one child's core (and a tiny scan starts no children).
        """
        it = iter(sources)
        if self.pool is not None:
            head = list(itertools.islice(it, self.batch_size + 1))
            if len(head) > self.batch_size:
                yield from self.pool.classify(itertools.chain(head, it))
                return
            it = iter(head)
        window = 2 * self.batch_size
        pool = ThreadPoolExecutor(self.prepare_threads, thread_name_prefix="fakesake-prepare")
        pending: deque[Future[_Item]] = deque()

        def refill() -> None:
            while len(pending) < window:
                source = next(it, None)
                if source is None:
                    return
                pending.append(pool.submit(self._prepare_item, _Item(source, time.perf_counter())))

        try:
            refill()
            while pending:
                futures = [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
                refill()  # keep the pool busy on the next batch while this one runs through the model
                items = [f.result() for f in futures]
                outcomes = self._predict(items)
                # The contract callers rely on: exactly one outcome per input, in input order.
                assert [o.source for o in outcomes] == [i.source for i in items], "one outcome per input"
                yield from outcomes
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _predict(self, items: list[_Item]) -> list[Outcome]:
        ready = [i for i in items if i.prepared is not None]
        scores: dict[int, float] = {}
        batch_error: FakesakeError | None = None
        inference_ms: float | None = None
        if ready:
            start = time.perf_counter()
            try:
                values = self.classifier.predict([i.prepared.tensor for i in ready if i.prepared is not None])
                if len(values) != len(ready) or not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
                    raise ValueError(f"classifier returned {len(values)} scores for {len(ready)} inputs")
                scores = {id(i): float(v) for i, v in zip(ready, values, strict=True)}
            except Exception as exc:
                log.exception("internal error predicting a batch of %d (first source=%s)", len(ready), ready[0].source)
                batch_error = as_fakesake_error(exc)
            inference_ms = _ms(start)
        return [self._outcome(i, scores.get(id(i)), batch_error, inference_ms) for i in items]

    def _outcome(
        self, item: _Item, score: float | None, batch_error: FakesakeError | None, inference_ms: float | None
    ) -> Outcome:
        prepared = item.prepared
        timings = Timings(
            fetch_ms=item.spent.get("fetch_ms"),
            decode_ms=item.spent.get("decode_ms"),
            inference_ms=inference_ms if prepared else None,
            total_ms=_ms(item.submitted),
        )
        error = item.error or (batch_error if score is None else None)
        if error is not None or score is None:
            err = error or as_fakesake_error(RuntimeError("no score"))
            info = ErrorInfo(code=err.code.value, message=err.message, retryable=err.retryable)
            return Outcome(item.source, Status.ERROR, self.spec.ref, error=info, timings=timings)
        v = verdict(score, self.spec, self.thresholds)
        return Outcome(item.source, Status.OK, v.model, v.score, v.label, v.band, timings=timings)
