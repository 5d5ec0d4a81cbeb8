"""The one builder: reads :class:`~worker.service.settings.WorkerSettings` and wires the process.

Nothing else in the project reads settings. Everything past this module receives small frozen policies
(:class:`~worker.fetch.policy.FetchPolicy`, :class:`~worker.core.batching.BatchPolicy`,
:class:`~worker.core.retry.RetryPolicy`, ...) or ready-made objects, so the core and the adapters are tested
without the environment. Heavy imports (torch, timm, onnxruntime) happen inside the functions that need them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producers.contract import Fusion
from producers.errors import ConfigError
from producers.s3 import make_s3_client
from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.core.calibration import Calibration, Calibrations
from worker.core.catalog import Catalog
from worker.core.ensemble import Member
from worker.core.evidence import Inspect
from worker.core.pipeline import Decode, Pipeline, Preparer, Scanner
from worker.core.processing import RateLimitPolicy
from worker.core.registry import DetectorSpec, Thresholds
from worker.core.retry import RetryPolicy
from worker.fetch.policy import FetchPolicy
from worker.fetch.router import SourceRouter, default_router
from worker.service.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.core.ports import Classifier, Fetcher
    from worker.inference.imaging import DecodePolicy
    from worker.inference.process_pool import EnginePool
    from worker.service.runtime import WorkerRuntime

log = logging.getLogger(__name__)

WrapFetcher = Callable[["Fetcher"], "Fetcher"]
"""Wraps a fetcher, e.g. to perturb the bytes it returns; picklable when engine processes use it."""

# A scan's batch closes when it is full or when its pipeline flushes (every source in the window prepared); the
# deadline only bounds the wait behind a slow fetch, so it can be long. Workers use batch.max_wait_ms.
SCAN_BATCH_WAIT_S = 0.5


# --- policies ---------------------------------------------------------------------------------------------


def fetch_policy(settings: WorkerSettings, *, allow_local_files: bool | None = None) -> FetchPolicy:
    """The fetch limits of this process; ``allow_local_files`` overrides the setting (``scan`` allows them)."""
    f = settings.fetch
    return FetchPolicy(
        max_bytes=f.max_bytes,
        connect_timeout_s=f.connect_timeout_s,
        read_timeout_s=f.read_timeout_s,
        total_timeout_s=f.total_timeout_s,
        max_redirects=f.max_redirects,
        max_url_length=f.max_url_length,
        allowed_ports=frozenset(f.allowed_ports),
        allow_private=tuple(ipaddress.ip_network(c, strict=False) for c in f.allow_private),
        allow_local_files=f.allow_local_files if allow_local_files is None else allow_local_files,
        allowed_buckets=frozenset(settings.s3.allowed_buckets),
        user_agent=f.user_agent,
    )


def retry_policy(settings: WorkerSettings) -> RetryPolicy:
    return RetryPolicy(**settings.retry.model_dump())


def rate_limit_policy(settings: WorkerSettings) -> RateLimitPolicy:
    return RateLimitPolicy(**settings.rate_limit.model_dump())


def batch_policy(settings: WorkerSettings) -> BatchPolicy:
    return BatchPolicy(max_size=settings.batch.max_size, max_wait_s=settings.batch.max_wait_ms / 1000)


def thresholds(settings: WorkerSettings, spec: DetectorSpec) -> Thresholds:
    """The spec's thresholds with the settings' overrides (ConfigError if they are out of order)."""
    model = settings.model
    try:
        return Thresholds(
            human_max=spec.thresholds.human_max if model.human_max is None else model.human_max,
            ai_min=spec.thresholds.ai_min if model.ai_min is None else model.ai_min,
        )
    except ValueError as exc:
        raise ConfigError(f"model thresholds: {exc}") from None


# --- evidence ---------------------------------------------------------------------------------------------


def evidence_reader(settings: WorkerSettings) -> Inspect | None:
    """The provenance reader of this process, or None when ``evidence.enabled`` is false (or unset without the
    'evidence' extra). ConfigError when it is required but not installed, or the trust anchors cannot be read."""
    e = settings.evidence
    installed = find_spec("defusedxml") is not None and (not e.c2pa or find_spec("c2pa") is not None)
    if e.enabled is False or (e.enabled is None and not installed):
        if e.enabled is None:
            log.info("evidence off: install fakesake[evidence] to read provenance")
        return None
    if not installed:
        raise ConfigError("evidence.enabled is true but the 'evidence' extra (c2pa-python, defusedxml) is missing")
    from worker.evidence.containers import Limits
    from worker.evidence.reader import EvidencePolicy, EvidenceReader, load_tenant_anchors

    anchors = None
    if e.trust_anchors_file:
        try:
            with open(e.trust_anchors_file, encoding="ascii") as f:
                anchors = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"evidence.trust_anchors_file: {exc}") from None
    limits = Limits(max_blocks=e.max_blocks, max_block_bytes=e.max_block_bytes, max_total_bytes=e.max_total_bytes)
    try:
        tenants = load_tenant_anchors(e.tenant_trust_anchors_dir) if e.tenant_trust_anchors_dir else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"evidence.tenant_trust_anchors_dir: {exc}") from None
    policy = EvidencePolicy(e.include_prompts, e.c2pa, anchors, limits, e.watermark, e.watermark_max_px, tenants)
    return EvidenceReader(policy)


# --- fetching ---------------------------------------------------------------------------------------------


def s3_client(settings: WorkerSettings, *, job_retries: bool = True) -> Any:
    """An S3 client with the fetch deadlines. Call it after any fork.

    ``job_retries``: the caller's jobs retry failed fetches (a worker), so the client makes one attempt and the
    job's :class:`~worker.core.retry.RetryPolicy` is the only retry layer: a failing object costs at most
    ``retry.max_attempts`` GETs, not that times ``s3.max_attempts``. Without (``fakesake scan``, the result
    sink), no other layer retries and boto3's standard mode makes up to ``s3.max_attempts``.
    """
    return make_s3_client(
        settings.s3,
        connect_timeout_s=settings.fetch.connect_timeout_s,
        read_timeout_s=settings.fetch.read_timeout_s,
        max_attempts=1 if job_retries else None,
    )


def fetcher(
    settings: WorkerSettings, *, allow_local_files: bool | None = None, client: Any = None, job_retries: bool = True
) -> SourceRouter:
    """http(s) with SSRF protection, s3, and local files (refused unless allowed). Without ``client`` the S3
    client is created on first use, i.e. in the process that fetches (picklable for engine processes), with
    one attempt per fetch when ``job_retries`` (see :func:`s3_client`)."""
    return default_router(
        fetch_policy(settings, allow_local_files=allow_local_files),
        s3_client=client,
        s3_client_factory=partial(s3_client, settings, job_retries=job_retries),
    )


# --- the model --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A detector ready to serve: what it is, how to make its inputs, and how to score them."""

    spec: DetectorSpec
    thresholds: Thresholds
    classifier: Classifier
    decode: Decode
    device: str
    calibrations: Calibrations = field(default_factory=Calibrations)
    weights_path: str | None = None  # the local file the weights came from

    def __post_init__(self) -> None:
        # Results name the weights actually loaded (name@version+sha256[:12]), never just the registry entry.
        if self.weights_path is not None and self.spec.weights_sha256 is None:
            path = Path(self.weights_path)
            stamped = self.spec.with_overrides(weights_sha256=weights_sha256(path), revision=hub_revision(path))
            object.__setattr__(self, "spec", stamped)


def usable_cores() -> int:
    from worker.inference.process_pool import usable_cores as cores

    return cores()


def decode_policy(settings: WorkerSettings, spec: DetectorSpec) -> DecodePolicy:
    """How this process decodes images for ``spec`` (byte and pixel caps, preprocessing mode)."""
    from worker.inference.imaging import DecodePolicy

    return DecodePolicy(
        max_pixels=settings.fetch.max_pixels,
        max_bytes=settings.fetch.max_bytes,
        mode=settings.model.preprocess,
        target_px=spec.preprocessing.size_px,
    )


def load_model(settings: WorkerSettings, *, s3_client_factory: Callable[[], Any] | None = None) -> LoadedModel:
    """Load the configured detector on the configured backend (ConfigError if unusable).

    The ONNX backend starts from the graph cache (``model.onnx_cache_dir``): with the graph cached and ``exact``
    or ``fast`` preprocessing (numpy inputs, :mod:`worker.inference.pixels`) the process imports neither torch
    nor timm. A configured detector's declared weights and calibration apply unless settings name others."""
    spec = catalog(settings).get(served_names(settings)[0])
    declared = {"weights": spec.weights, "calibration": spec.calibration}
    if unset := {k: v for k, v in declared.items() if v is not None and getattr(settings.model, k) is None}:
        settings = settings.model_copy(update={"model": settings.model.model_copy(update=unset)})
    model = settings.model
    limits = thresholds(settings, spec)
    policy = decode_policy(settings, spec)
    factory = s3_client_factory or partial(make_s3_client, settings.s3)
    if model.backend == "onnx" or (model.backend == "auto" and find_spec("onnxruntime") and _cpu(model.device)):
        return _load_onnx(settings, spec, limits, policy, factory)

    import torch

    from worker.inference.loader import load_detector
    from worker.inference.preprocess import from_bytes
    from worker.inference.torch_classifier import TorchClassifier

    if model.threads:
        torch.set_num_threads(model.threads)
    detector = load_detector(
        spec, model.weights, revision=model.revision, device=model.device, s3_client_factory=factory
    )
    classifier = TorchClassifier(detector, amp=model.autocast)
    log.info("model backend torch (setting %s) on %s", model.backend, detector.device)
    # tensor mode on a GPU: nvJPEG decode and the resize run there (worker.inference.preprocess)
    on_gpu = str(detector.device) if detector.device.type == "cuda" and model.preprocess == "tensor" else None
    decode = partial(from_bytes, policy=policy, pre=spec.preprocessing, device=on_gpu)
    cals = calibrations(settings, spec, detector.path)
    weights_path = str(detector.path) if detector.path is not None else None
    return LoadedModel(spec, limits, classifier, decode, str(detector.device), cals, weights_path)


def _cpu(device: str) -> bool:
    from worker.inference.onnx_start import runs_on_cpu

    return runs_on_cpu(device)


def graph_cache_dir(settings: WorkerSettings) -> Path | None:
    """Where ONNX graphs are cached (``model.onnx_cache_dir``), or None for no cache."""
    from worker.inference.graph_cache import default_cache_dir

    value = settings.model.onnx_cache_dir
    if value is None:
        return default_cache_dir()
    return Path(value) if value.strip() else None


def _load_onnx(
    settings: WorkerSettings, spec: DetectorSpec, limits: Thresholds, policy: DecodePolicy, factory: Callable[[], Any]
) -> LoadedModel:
    from worker.inference.loader import load_detector, resolve_weights
    from worker.inference.onnx_start import load_onnx

    model = settings.model
    if not _cpu(model.device):
        raise ConfigError(f"model.backend onnx runs on CPU only, not {model.device}; use backend torch")
    path = resolve_weights(spec, model.weights, revision=model.revision, s3_client_factory=factory)
    # Half the cores by default: the prepare threads decode on the rest, and at 1024^2 JPEG decode and
    # model cost about the same per core. On the shared 2-core machine, engine img/s interleaved over 5
    # passes: 1 ORT thread median 14.1 vs 2 threads 9.5 (1 thread ahead in 4 of 5; load was heavy).
    threads = model.threads or max(1, usable_cores() // 2)
    load = partial(load_detector, spec, path, device="cpu")
    cache_dir = graph_cache_dir(settings)
    sha = weights_sha256(path, cache_dir)  # from the cache's memo when warm; LoadedModel's stamp reuses it
    classifier = load_onnx(spec, path, sha, threads=threads, cache_dir=cache_dir, load=load)
    if model.preprocess == "tensor":  # torchvision decode: torch is imported anyway
        import torch

        from worker.inference.preprocess import from_bytes

        if model.threads:
            torch.set_num_threads(model.threads)
        decode: Decode = partial(from_bytes, policy=policy, pre=spec.preprocessing)
    else:
        from worker.inference import pixels

        decode = partial(pixels.from_bytes, policy=policy, pre=spec.preprocessing)
    log.info("model backend onnx (setting %s) on cpu", model.backend)
    return LoadedModel(spec, limits, classifier, decode, "cpu", calibrations(settings, spec, path), str(path))


def catalog(settings: WorkerSettings) -> Catalog:
    """Built-in detectors, those of installed packages and those of ``model.detectors_file``."""
    from worker.service.detectors import load_catalog

    return load_catalog(settings.model.detectors_file)


def served_names(settings: WorkerSettings) -> list[str]:
    """The detectors this process serves: ``model.names``, else ``model.name`` (either may list several)."""
    names = [n.strip() for n in (settings.model.names or settings.model.name).split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        given = settings.model.names or settings.model.name
        raise ConfigError(f"model.names: need distinct detector names, got {given!r}")
    return names


def hub_revision(path: Path) -> str | None:
    """The commit of a file in a Hugging Face cache (``.../snapshots/<commit>/<file>``), else None."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def load_models(settings: WorkerSettings) -> list[LoadedModel]:
    """Every detector of :func:`served_names`, each with the settings of one (ConfigError naming the first that
    cannot load). With several, ``model.weights`` may only be a folder holding each one's published file (a
    snapshot directory); otherwise each detector's declared weights, else its hub repo, apply. Calibrations are
    declared per detector in ``model.detectors_file``."""
    names = served_names(settings)
    if len(names) == 1:
        return [load_model(settings)]
    model = settings.model
    if model.calibration is not None or model.calibration_dir is not None:
        raise ConfigError(
            "model.calibration and model.calibration_dir serve one detector; with several, declare each one's "
            "calibration in model.detectors_file"
        )
    if model.weights is not None and not Path(model.weights).is_dir():
        raise ConfigError(
            f"model.weights {model.weights} is one file but {len(names)} detectors are served; declare each one's "
            "weights in model.detectors_file, or give a folder holding their weights files"
        )
    cat = catalog(settings)
    loaded = []
    for name in names:
        weights = cat.get(name).weights or model.weights
        one = model.model_copy(update={"name": name, "names": None, "weights": weights})
        loaded.append(load_model(settings.model_copy(update={"model": one})))
    return loaded


_HASHED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a few weights files per process


def weights_sha256(path: str | Path, memo_dir: Path | None = None) -> str:
    """sha256 of a weights file, hashed once per process while the file is unchanged (the identity stamp,
    calibration checks, eval and every scan pipeline ask again). ``memo_dir`` (the ONNX graph cache) also
    remembers it across processes, so a warm start does not read a large checkpoint at all."""
    from worker.inference.loader import weights_sha256 as compute

    st = os.stat(path)
    ident = (str(path), st.st_size, st.st_mtime_ns)
    if ident not in _HASHED:
        if memo_dir is None:
            _HASHED[ident] = compute(Path(path))
        else:
            from worker.inference.graph_cache import GraphCache

            _HASHED[ident] = GraphCache(memo_dir).weights_sha256(Path(path), compute)
    return _HASHED[ident]


def read_calibration(path: str | Path, what: str = "calibration") -> Calibration:
    """A calibration file, validated (ConfigError naming the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    return Calibration.parse(text, str(path))


def calibrations(settings: WorkerSettings, spec: DetectorSpec, weights_path: Path | None) -> Calibrations:
    """The calibrations named by ``model.calibration`` and ``model.calibration_dir`` (``<tenant>.json``), each
    checked against the loaded model and the sha256 of its weights file (ConfigError naming both)."""
    model = settings.model
    if model.calibration is None and model.calibration_dir is None:
        return Calibrations()
    if model.calibration is not None and (model.human_max is not None or model.ai_min is not None):
        raise ConfigError(
            "model.calibration carries its own thresholds (on the calibrated scale); unset FAKESAKE_MODEL__HUMAN_MAX"
            " and FAKESAKE_MODEL__AI_MIN, which are on the raw scale"
        )
    if weights_path is None:
        raise ConfigError("a calibration needs the weights read from a local file, to check their sha256")
    default = None
    if model.calibration is not None:
        default = read_calibration(model.calibration, "model.calibration")
    tenants: dict[str, Calibration] = {}
    if model.calibration_dir is not None:
        folder = Path(model.calibration_dir)
        if not folder.is_dir():
            raise ConfigError(f"model.calibration_dir {folder} is not a directory")
        for path in sorted(folder.glob("*.json")):
            tenants[path.stem] = read_calibration(path, "tenant calibration")
    sha = weights_sha256(weights_path)
    for cal in [default, *tenants.values()]:
        if cal is not None:
            # A configured detector is new weights under a new name: `fakesake finetune` fits its calibration under
            # the base's name, so the weights' sha256 alone ties them.
            cal.check_weights(spec.ref if spec.origin == "built-in" else cal.model, sha)
    log.info(
        "calibration: %s for every job, %d tenant calibrations (%s)",
        default.id if default is not None else "none",
        len(tenants),
        ", ".join(sorted(tenants)) or "none",
    )
    return Calibrations(default, tenants)


# --- scan and engine processes ----------------------------------------------------------------------------


def shared_decode(models: Sequence[LoadedModel]) -> tuple[Decode, list[int | None]]:
    """One decode for several detectors, and which of its outputs each one takes: detectors with the same
    preprocessing (the 5M pair) share one input; distinct preprocessings each get theirs from the same bytes."""
    keys = list(dict.fromkeys(m.spec.preprocessing for m in models))
    if len(keys) == 1:
        return models[0].decode, [None] * len(models)
    decodes = tuple(next(m.decode for m in models if m.spec.preprocessing == k) for k in keys)
    return partial(_decode_each, decodes), [keys.index(m.spec.preprocessing) for m in models]


def _decode_each(decodes: tuple[Decode, ...], data: bytes) -> tuple[Any, ...]:
    return tuple(decode(data) for decode in decodes)


def members(models: Sequence[LoadedModel], infers: Sequence[Callable[[Any], Any]]) -> list[Member]:
    """The :class:`Member` of each loaded detector, scoring through ``infers`` (a batcher's submit each)."""
    _, inputs = shared_decode(models)
    return [
        Member(m.spec, infer, m.thresholds, m.calibrations, i)
        for m, infer, i in zip(models, infers, inputs, strict=True)
    ]


def pipeline(
    settings: WorkerSettings, source_fetcher: Fetcher, loaded: LoadedModel | Sequence[LoadedModel] | None = None
) -> Pipeline:
    """A scan pipeline (this process: prepare threads, one batching thread per detector, the models). Several
    detectors (``model.names``) make an ensemble, fused by ``model.fusion``."""
    models = [loaded] if isinstance(loaded, LoadedModel) else list(loaded or load_models(settings))
    policy = BatchPolicy(max_size=settings.batch.max_size, max_wait_s=SCAN_BATCH_WAIT_S)
    batchers = [Batcher(m.classifier.predict, policy).start() for m in models]
    first = models[0]
    return Pipeline(
        first.spec,
        Preparer(source_fetcher, shared_decode(models)[0], evidence_reader(settings)),
        batchers[0],
        window=2 * settings.batch.max_size,
        prepare_threads=settings.batch.prepare_threads,
        thresholds=first.thresholds,
        calibration=first.calibrations.default,
        members=members(models, [b.submit for b in batchers]) if len(models) > 1 else (),
        batchers=batchers,
        fusion=Fusion(settings.model.fusion),
    )


def child_pipeline(
    settings: WorkerSettings, log_level: int = logging.WARNING, wrap_fetcher: WrapFetcher | None = None
) -> Pipeline:
    """The pipeline of one engine process: one model thread, one prepare thread, its own fetcher (wrapped by
    ``wrap_fetcher`` when given)."""
    from worker.service.logs import setup_logging

    setup_logging(logging.getLevelName(log_level), settings.log.json_format)
    # One intra-op thread unless the user asked for more; load_model applies it to torch too (which bounds
    # torch ops in preprocessing, whatever the backend).
    model = settings.model.model_copy(update={"threads": settings.model.threads or 1})
    batch = settings.batch.model_copy(update={"prepare_threads": 1, "processes": 1})
    child = settings.model_copy(update={"model": model, "batch": batch})
    source_fetcher: Fetcher = fetcher(child, allow_local_files=True, job_retries=False)
    return pipeline(child, wrap_fetcher(source_fetcher) if wrap_fetcher else source_fetcher)


def engine_pool(
    settings: WorkerSettings, device_type: str, model_ref: str, wrap_fetcher: WrapFetcher | None = None
) -> EnginePool | None:
    """Engine processes for a scan (``batch.processes``), or None for this process alone."""
    from worker.inference.process_pool import EnginePool, resolve_processes

    processes = resolve_processes(settings.batch.processes, device_type)
    if processes <= 1:
        return None
    log.info("classify runs on %d engine processes (batch.processes=%d)", processes, settings.batch.processes)
    build = partial(child_pipeline, settings, logging.getLogger().getEffectiveLevel(), wrap_fetcher)
    return EnginePool(build, processes, chunk_size=settings.batch.max_size, model_ref=model_ref)


def scanner(
    settings: WorkerSettings,
    client: Any = None,
    *,
    loaded: LoadedModel | None = None,
    processes: bool = True,
    wrap_fetcher: WrapFetcher | None = None,
) -> Scanner:
    """What ``fakesake scan`` classifies with: local files allowed, engine processes per ``batch.processes``
    (``processes=False``: this process alone). ``loaded``: a model already loaded from these settings.
    ``wrap_fetcher`` (picklable) wraps every fetcher, here and in engine processes (``fakesake eval``'s
    perturbations re-encode the fetched bytes this way)."""
    models = [loaded] if loaded is not None else load_models(settings)
    source_fetcher: Fetcher = fetcher(settings, allow_local_files=True, client=client, job_retries=False)
    here = pipeline(settings, wrap_fetcher(source_fetcher) if wrap_fetcher else source_fetcher, models)
    pool = engine_pool(settings, models[0].device.split(":")[0], here.model, wrap_fetcher) if processes else None
    return Scanner(here, pool, settings.batch.max_size)


# --- the worker -------------------------------------------------------------------------------------------


def worker_runtime(settings: WorkerSettings) -> WorkerRuntime:
    """Everything one worker process runs, started (model loaded, stores connected, telemetry serving).

    Raises before anything is left running when the worker cannot serve: Redis unreachable (TransientError
    ``unavailable``), no free worker slot or an unloadable model (ConfigError); each message names the setting.
    """
    from producers.connections import redis_from_settings
    from producers.dlq import DeadLetters
    from worker.core.processing import JobProcessor
    from worker.service.health import HealthPolicy
    from worker.service.runtime import BoundedPreparer, DeferredToucher, WorkerRuntime, ping_redis
    from worker.service.slots import SlotPlan
    from worker.service.telemetry import Telemetry
    from worker.stores.adverts import Advertiser
    from worker.stores.counters import RedisJobCounters
    from worker.stores.ledger import LedgerSweeper, SweepThread, Toucher
    from worker.stores.ratelimit import RedisRateLimiter
    from worker.stores.results import RedisResultStore, S3ResultSink, SinkingResultStore

    client = redis_from_settings(settings.redis)
    ping_redis(client, settings.redis.url)
    m = settings.metrics
    telemetry = Telemetry.start(
        SlotPlan(m.port, m.health_port, m.heartbeat_file, m.slots),
        m.bind_host,
        HealthPolicy(m.heartbeat_interval_s, m.heartbeat_max_age_s, m.consumer_stall_s, m.exit_on_consumer_stall),
        client,
    )
    t0 = time.monotonic()
    try:
        s3 = s3_client(settings)
        models = load_models(settings)
    except BaseException:
        telemetry.stop()  # the slot's ports and heartbeat file are free for the next worker at once
        raise
    loaded = models[0]
    served = ",".join(m.spec.identity for m in models)
    load_s = time.monotonic() - t0
    batches = batch_policy(settings)
    batchers = [Batcher(m.classifier.predict, batches, observer=telemetry.observe_batch).start() for m in models]
    batcher = batchers[0]
    dead_letters = DeadLetters(client)
    store: Any = RedisResultStore(
        client, ttl_s=settings.results.ttl_s, index_max=settings.results.index_max, closes_deliveries=True
    )
    if settings.results.s3_prefix:
        # the sink is best effort with no retry layer of its own: boto3's retries are its only ones
        sink = S3ResultSink(s3_client(settings, job_retries=False), settings.results.s3_prefix)
        store = SinkingResultStore(store, sink)
    counters = RedisJobCounters(client)
    processor = JobProcessor(
        spec=loaded.spec,
        preparer=BoundedPreparer(
            Preparer(fetcher(settings, client=s3), shared_decode(models)[0], evidence_reader(settings)),
            settings.batch.prepare_threads,
        ),
        infer=batcher.submit,
        store=store,
        counters=counters,
        arrivals=counters,  # the result read and the open-deliveries read in one script
        store_closes_deliveries=True,  # the result write closes the delivery count (closes_deliveries above)
        dead_letters=dead_letters,
        limiter=RedisRateLimiter(client),
        retry=retry_policy(settings),
        rate=rate_limit_policy(settings),
        thresholds=loaded.thresholds,
        calibrations=loaded.calibrations,
        members={m.spec.name: m for m in members(models, [b.submit for b in batchers])},
        fusion=Fusion(settings.model.fusion),
    )
    log.info(
        "worker ready: %s on %s, batch<=%d wait<=%.0fms",
        served,
        loaded.device,
        batches.max_size,
        settings.batch.max_wait_ms,
    )
    ledger = None
    if settings.ledger.sweep_interval_s > 0:
        sweeper = LedgerSweeper(client, grace_s=settings.ledger.grace_s, batch=settings.ledger.batch)
        ledger = SweepThread(sweeper, settings.ledger.sweep_interval_s, on_report=telemetry.ledger_swept).start()
    touch = DeferredToucher(Toucher(client).many).start()
    adverts = Advertiser(client, [m.spec.name for m in models], settings.metrics.heartbeat_interval_s).start()
    # Ready only now: a producer that waits for readiness and submits must find this worker's advert.
    telemetry.model_loaded(served, load_s)
    return WorkerRuntime(
        processor=processor,
        batcher=batcher,
        redis=client,
        dead_letters=dead_letters,
        telemetry=telemetry,
        webhooks=webhook_sender(settings),
        ledger=ledger,
        touch=touch,
        heartbeat_interval_s=settings.metrics.heartbeat_interval_s,
        more_batchers=tuple(batchers[1:]),
        adverts=adverts,
    )


def webhook_sender(settings: WorkerSettings, dead_letters: Any = None) -> Any:
    """The webhook delivery of this worker (SSRF-checked poster, signing secret, attempts, backoff, and the
    dead letters that keep webhooks failed for good: ``dead_letters``, else ones on a client of its own)."""
    from producers.connections import redis_from_settings
    from producers.dlq import DeadLetters
    from worker.fetch.http import make_poster
    from worker.service.webhook_delivery import WebhookSender

    secret = settings.results.webhook_secret
    return WebhookSender(
        post=make_poster(fetch_policy(settings)),
        secret=secret.get_secret_value() if secret is not None else None,
        max_attempts=settings.results.webhook_max_attempts,
        retry=retry_policy(settings),
        dead_letters=dead_letters if dead_letters is not None else DeadLetters(redis_from_settings(settings.redis)),
    )
