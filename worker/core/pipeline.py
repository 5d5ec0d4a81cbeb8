"""The prepare/classify pipeline: sources -> fetch -> decode -> preprocess -> batched predict -> outcomes.

Pure: bytes come through a :class:`~worker.core.ports.Fetcher`, model inputs from an injected ``decode``
callable (Pillow/torch live in :mod:`worker.inference`), scores from the one batching loop
(:class:`~worker.core.batcher.Batcher`). :meth:`Pipeline.classify` prepares inputs on a small thread pool
(Pillow and the model release the GIL) and yields exactly one :class:`Outcome` per input, in input order;
errors are isolated per item, and a failed batch turns only its own items into ``internal`` outcomes.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from producers.contract import Band, DetectorScore, ErrorInfo, Fusion, Label, Status, Timings
from producers.errors import FakesakeError, as_fakesake_error
from worker.core.batcher import Batcher
from worker.core.calibration import Calibration, Calibrations
from worker.core.ensemble import Judgement, Member, judge, judge_ensemble
from worker.core.evidence import Entry, Inspect, failed
from worker.core.ports import Fetcher
from worker.core.registry import DetectorSpec, Thresholds

__all__ = ["Judgement", "Member", "Outcome", "Pipeline", "Prepared", "Preparer", "Scanner", "judge"]

log = logging.getLogger(__name__)

Decode = Callable[[bytes], Any]
"""Image bytes -> one model input, or a tuple of them, one per distinct preprocessing of several detectors
(raises FakesakeError with a code for bad images)."""


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


@dataclass(frozen=True)
class Prepared:
    """A model input ready for batching, what it cost to make it, and what the fetch learnt of the source."""

    tensor: Any
    fetch_ms: float
    decode_ms: float  # decode + preprocess
    source_meta: dict[str, Any] = field(default_factory=dict)
    evidence: list[Entry] | None = None  # provenance entries read from the fetched bytes (None: not inspected)


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
    source_version: str | None = None  # what was read: the S3 version id and ETag, when the fetch knew them
    etag: str | None = None
    raw_score: float | None = None  # the model's own score, when a calibration mapped it to ``score``
    calibration: str | None = None  # the calibration's id; set on every outcome of a calibrated pipeline
    evidence: dict[str, Any] = field(default_factory=dict)  # ok outcomes: worker.core.evidence.summarise's shape
    detectors: list[DetectorScore] | None = None  # ensembles: each detector's result (score/band are fused)
    fusion: Fusion | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class Preparer:
    """Fetch, decode and preprocess one source (the per-image half of the pipeline)."""

    def __init__(self, fetcher: Fetcher, decode: Decode, inspect: Inspect | None = None) -> None:
        """``inspect`` reads provenance from the same fetched bytes (never a second fetch)."""
        self.fetcher = fetcher
        self.decode = decode
        self.inspect = inspect

    def prepare(
        self, source: str, version: str | None = None, spent: dict[str, float] | None = None, tenant: str | None = None
    ) -> Prepared:
        """Raises FakesakeError with a code. ``spent`` receives stage timings as they complete, so a caller
        still knows the fetch time when decoding fails. ``tenant`` selects its own C2PA trust anchors."""
        spent = {} if spent is None else spent
        start = time.perf_counter()
        fetched = self.fetcher.fetch(source, version=version)
        spent["fetch_ms"] = _ms(start)
        start = time.perf_counter()
        tensor = self.decode(fetched.data)
        spent["decode_ms"] = _ms(start)
        evidence = self._evidence(fetched.data, tenant) if self.inspect is not None else None
        return Prepared(tensor, spent["fetch_ms"], spent["decode_ms"], dict(fetched.meta), evidence)

    def _evidence(self, data: bytes, tenant: str | None) -> list[Entry]:
        """Inspection runs after a successful decode (a bad image fails first, as before) and can never fail the
        image: a reader that raises is reported as one ``internal`` entry."""
        assert self.inspect is not None
        try:
            return self.inspect(data, tenant)
        except Exception as exc:
            log.exception("evidence reader failed")
            return [failed("metadata", "internal", f"{type(exc).__name__}: {exc}")]


@dataclass
class _InFlight:
    """One source on its way through the pipeline."""

    source: str
    submitted: float
    scores: list[Future[float]] | None = None  # one per detector
    error: FakesakeError | None = None
    spent: dict[str, float] = field(default_factory=dict)  # stage timings, kept when a later stage fails
    source_meta: dict[str, Any] = field(default_factory=dict)
    evidence: list[Entry] | None = None


class Pipeline:
    """Classify many sources in batches with per-item error isolation (``fakesake scan``, engine processes).

    One detector, or an ensemble (``members``): each source is fetched and decoded once, and its input goes to
    every detector's batcher; the outcome carries each detector's result and the ``fusion`` of them.
    """

    def __init__(
        self,
        spec: DetectorSpec,
        preparer: Preparer,
        batcher: Batcher,
        *,
        window: int = 32,
        prepare_threads: int = 2,
        thresholds: Thresholds | None = None,
        calibration: Calibration | None = None,
        members: Sequence[Member] = (),
        batchers: Sequence[Batcher] = (),
        fusion: Fusion = Fusion.MAX,
    ) -> None:
        """``window``: sources prepared ahead of the one being reported (two batches keep the model busy).
        ``calibration``: maps every score (its thresholds replace ``thresholds``). ``members`` (with their
        ``batchers``, the first being ``batcher``): several detectors instead of ``spec``'s alone."""
        if window < 1 or prepare_threads < 1:
            raise ValueError("window and prepare_threads must be >= 1")
        self.spec = spec
        self.preparer = preparer
        self.batcher = batcher
        self.window = window
        self.prepare_threads = prepare_threads
        self.thresholds = thresholds or spec.thresholds
        self.calibration = calibration
        self.members = tuple(members) or (Member(spec, batcher.submit, self.thresholds, Calibrations(calibration)),)
        self.batchers = tuple(batchers) or (batcher,)
        self.fusion = fusion
        self.model = ",".join(m.spec.identity for m in self.members)

    def _start(self, item: _InFlight) -> _InFlight:
        try:
            prepared = self.preparer.prepare(item.source, None, item.spent)
            item.source_meta = prepared.source_meta
            item.evidence = prepared.evidence
            submitted = time.perf_counter()
            item.scores = [m.infer(m.model_input(prepared.tensor)) for m in self.members]
            # queue wait + the batch's forward pass, as the worker reports it (the last detector's, in an ensemble)
            for score in item.scores:
                score.add_done_callback(lambda _: item.spent.__setitem__("inference_ms", _ms(submitted)))
        except FakesakeError as exc:
            item.error = exc
        except Exception as exc:
            log.exception("internal error preparing source=%s", item.source)
            item.error = as_fakesake_error(exc)
        return item

    def classify(self, sources: Iterable[str]) -> Generator[Outcome, None, None]:
        """One outcome per source, in order."""
        it = iter(sources)
        pool = ThreadPoolExecutor(self.prepare_threads, thread_name_prefix="fakesake-prepare")
        pending: deque[Future[_InFlight]] = deque()

        def refill() -> None:
            while len(pending) < self.window:
                source = next(it, None)
                if source is None:
                    return
                pending.append(pool.submit(self._start, _InFlight(source, time.perf_counter())))

        try:
            refill()
            while pending:
                item = pending.popleft().result()
                refill()
                for score in item.scores or ():
                    self._await_score(score, pending)
                yield self._outcome(item)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _await_score(self, score: Future[float], pending: deque[Future[_InFlight]]) -> None:
        """Wait for ``score``; once every source in the window is prepared, nothing more can join the batches
        being collected, so close them rather than wait out their deadline."""
        while not score.done():
            preparing = [f for f in pending if not f.done()]
            if not preparing:
                for batcher in self.batchers:
                    batcher.flush()
                wait([score])
                return
            watched: list[Future[Any]] = [score, *preparing]
            wait(watched, return_when=FIRST_COMPLETED)

    def stop(self) -> None:
        """Stop the batching threads."""
        for batcher in self.batchers:
            batcher.stop()

    def _outcome(self, item: _InFlight) -> Outcome:
        error = item.error
        scores: list[float] | None = None
        if item.scores is not None:
            try:
                scores = [score.result() for score in item.scores]
            except Exception as exc:
                log.error("batch prediction failed (source=%s): %s", item.source, exc)
                error = as_fakesake_error(exc)
        timings = Timings(
            fetch_ms=item.spent.get("fetch_ms"),
            decode_ms=item.spent.get("decode_ms"),
            inference_ms=item.spent.get("inference_ms"),
            total_ms=_ms(item.submitted),
        )
        if error is not None or scores is None:
            err = error or as_fakesake_error(RuntimeError("no score"))
            info = ErrorInfo(code=err.code.value, message=err.message, retryable=err.retryable)
            calibration_id = self.calibration.id if self.calibration is not None else None
            return Outcome(
                item.source, Status.ERROR, self.model, error=info, timings=timings, calibration=calibration_id
            )
        if len(self.members) == 1:
            m = self.members[0]
            cal = m.calibrations.default
            j = judge(scores[0], m.spec, m.thresholds, cal, item.source_meta, item.evidence)
        else:
            cals = [m.calibrations.default for m in self.members]
            j = judge_ensemble(scores, self.members, cals, self.fusion, item.source_meta, item.evidence)
        v = j.verdict
        return Outcome(
            item.source,
            Status.OK,
            v.model,
            v.score,
            v.label,
            v.band,
            timings=timings,
            source_version=j.source_version,
            etag=j.etag,
            raw_score=v.raw_score,
            calibration=v.calibration,
            evidence=j.evidence,
            detectors=j.detectors,
            fusion=j.fusion,
        )


class ChunkClassifier(Protocol):
    """Engine processes (:class:`worker.inference.process_pool.EnginePool`) as the scanner sees them."""

    def classify(self, sources: Iterable[str]) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class Scanner:
    """``classify`` for a scan: the pipeline in this process, or engine processes for more than one batch.

    A single batch runs here, where decode threads overlap the model on every core, instead of on one child's
    core (and a tiny scan starts no children). Larger inputs go to the engine processes in chunks of one batch.
    """

    def __init__(self, pipeline: Pipeline, pool: ChunkClassifier | None, batch_size: int) -> None:
        self.pipeline = pipeline
        self.pool = pool
        self.batch_size = batch_size

    def classify(self, sources: Iterable[str]) -> Iterator[Outcome]:
        """One outcome per source, in order."""
        it = iter(sources)
        if self.pool is not None:
            head = list(itertools.islice(it, self.batch_size + 1))
            if len(head) > self.batch_size:
                yield from self.pool.classify(itertools.chain(head, it))
                return
            it = iter(head)
        yield from self.pipeline.classify(it)

    def close(self) -> None:
        """Stop the batching thread and the engine processes."""
        self.pipeline.stop()
        if self.pool is not None:
            self.pool.close()
