"""The one builder: reads :class:`~worker.service.settings.WorkerSettings` and wires the process.

Nothing else in the project reads settings. Everything past this module receives small frozen policies
(:class:`~worker.fetch.policy.FetchPolicy`, :class:`~worker.core.batching.BatchPolicy`,
:class:`~worker.core.retry.RetryPolicy`, ...) or ready-made objects, so the core and the adapters are tested
without the environment. Heavy imports (torch, timm, onnxruntime) happen inside the functions that need them.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from producers.contract import Fusion
from producers.errors import ConfigError
from producers.s3 import make_s3_client
from worker.core.batcher import Batcher
from worker.core.batching import BatchPolicy
from worker.core.ensemble import Member
from worker.core.evidence import Inspect
from worker.core.pipeline import Decode, Pipeline, Preparer, Scanner
from worker.core.processing import RateLimitPolicy
from worker.core.retry import RetryPolicy
from worker.fetch.policy import FetchPolicy
from worker.fetch.router import SourceRouter, default_router

# The model half of the builder (detectors, weights, backends, decode, calibration).
from worker.service.loading import (
    LoadedModel,
    catalog,
    cpu_device,
    graph_cache_dir,
    load_models,
    served_names,
    weights_sha256,
)
from worker.service.settings import WorkerSettings, job_threads

if TYPE_CHECKING:
    from worker.core.ports import Fetcher
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


def cached_graph_start(settings: WorkerSettings) -> bool:
    """Whether loading the served detector needs no export and no torch: one detector on the ONNX backend, on
    the CPU, with local weights whose graph is in the cache. Then engine processes may load it while this process
    does, and a fork server needs none of torch's modules. False when unsure (or when anything fails: the load
    itself reports it)."""
    from worker.inference.graph_cache import GraphCache, GraphKey
    from worker.inference.loader import HF_PREFIX, resolve_weights

    model = settings.model
    try:
        onnx = model.backend == "onnx" or (model.backend == "auto" and find_spec("onnxruntime") is not None)
        cache_dir = graph_cache_dir(settings)
        names = served_names(settings)
        if (
            not onnx
            or model.preprocess == "tensor"
            or cache_dir is None
            or len(names) != 1
            or not cpu_device(model.device)
        ):
            return False
        spec = catalog(settings).get(names[0])
        weights = model.weights or spec.weights
        if weights is None or str(weights).startswith((HF_PREFIX, "s3://")):  # no download here
            return False
        sha = weights_sha256(resolve_weights(spec, weights), cache_dir)  # the load asks again: remembered
        return GraphCache(cache_dir).paths(GraphKey.of(spec, sha))[0].is_file()
    except Exception:
        return False


def scanner(
    settings: WorkerSettings,
    client: Any = None,
    *,
    loaded: LoadedModel | None = None,
    processes: bool = True,
    wrap_fetcher: WrapFetcher | None = None,
    start_early: bool = False,
) -> Scanner:
    """What ``fakesake scan`` classifies with: local files allowed, engine processes per ``batch.processes``
    (``processes=False``: this process alone). ``loaded``: a model already loaded from these settings.
    ``wrap_fetcher`` (picklable) wraps every fetcher, here and in engine processes (``fakesake eval``'s
    perturbations re-encode the fetched bytes this way). ``start_early`` (the caller knows there is more than one
    batch to classify): where the graph is cached (:func:`cached_graph_start`), the engine processes start before
    this process loads its model, so their start overlaps that load instead of following it."""
    pool = None
    if processes and start_early and loaded is None and cached_graph_start(settings):
        pool = engine_pool(settings, "cpu", "", wrap_fetcher)  # the model ref is known once loaded (below)
        if pool is not None:
            pool.start()
    try:
        models = [loaded] if loaded is not None else load_models(settings)
        source_fetcher: Fetcher = fetcher(settings, allow_local_files=True, client=client, job_retries=False)
        here = pipeline(settings, wrap_fetcher(source_fetcher) if wrap_fetcher else source_fetcher, models)
    except BaseException:
        if pool is not None:
            pool.close()  # no engine process outlives a failed load
        raise
    if pool is not None:
        pool.model_ref = here.model
    elif processes:
        pool = engine_pool(settings, models[0].device.split(":")[0], here.model, wrap_fetcher)
    return Scanner(here, pool, settings.batch.max_size)


# --- the worker -------------------------------------------------------------------------------------------

# Received-job touches wait this long to share one round trip (the fleet bench counted ~1 touch per job without).
TOUCH_LINGER_S = 0.1


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
    from worker.stores.shared_trips import SharedRoundTrips

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
    trips = SharedRoundTrips(client)  # job threads' arrivals and result writes that overlap share round trips
    store: Any = RedisResultStore(
        client,
        ttl_s=settings.results.ttl_s,
        index_max=settings.results.index_max,
        closes_deliveries=True,
        trips=trips,
    )
    if settings.results.s3_prefix:
        # the sink is best effort with no retry layer of its own: boto3's retries are its only ones
        sink = S3ResultSink(s3_client(settings, job_retries=False), settings.results.s3_prefix)
        store = SinkingResultStore(store, sink)
    counters = RedisJobCounters(client, trips)
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
    touch = DeferredToucher(Toucher(client).many, linger_s=TOUCH_LINGER_S).start()
    intake = bulk_intake(settings, client, touch)
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
        intake=intake,
    )


def bulk_intake(settings: WorkerSettings, client: Any, touch: Callable[[str], None] | None) -> Any:
    """The bulk intake of this worker (not started: the Celery adapter starts it with its job handler), or None
    with ``batch.intake = celery``. It takes the lanes Celery's consumer would, in the same order."""
    if settings.batch.intake != "bulk":
        return None
    from producers.contract import lanes_for
    from worker.service.intake import BulkIntake
    from worker.stores.intake import LaneIntake

    return BulkIntake(LaneIntake(client), lanes_for(served_names(settings)), job_threads(settings), touch=touch)


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
