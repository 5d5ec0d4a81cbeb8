"""Worker (and in-process scan) settings: one pydantic-settings class, nested groups.

``FAKESAKE_MODEL__NAME=ffs-mj-5m FAKESAKE_BATCH__MAX_SIZE=16 fakesake worker``. The core never reads
these directly: the process turns them into small frozen policies (BatchPolicy, FetchPolicy, ...).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producers.settings import (
    API_GROUPS,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    ProducerSettings,
    QueueSettings,
    RedisSettings,
    S3Settings,
    env_names,
    parse_cidrs,
    warn_unknown_settings,
)
from worker.service import cpus


class ModelSettings(BaseModel):
    name: str = Field(default="ffs-mj-5m", description="Detector registry name (fakesake models)")
    names: str | None = Field(
        default=None,
        description="Several detectors, comma-separated (e.g. ffs-mj-5m,ffs-sd-5m): a worker serves each and any "
        "ensemble of them, a scan fuses them all; set = used instead of name",
    )
    detectors_file: str | None = Field(
        default=None,
        description="TOML (or YAML) file declaring detectors: name, base or arch, weights, version, thresholds, "
        "calibration (README 'Several detectors')",
    )
    fusion: Literal["max", "mean", "min"] = Field(
        default="max",
        description="How an ensemble's per-detector results fuse into score/band when a job names no rule: max = "
        "highest calibrated score and most AI band; mean; min",
    )
    weights: str | None = Field(
        default=None,
        description="Weights: a .pt file, a directory holding the HF snapshot, hf-hub:REPO[@REV] or s3://...; "
        "None = the registry's hub repo through the Hugging Face cache",
    )
    revision: str | None = Field(default=None, description="Pinned hub revision (commit sha or tag)")
    device: str = Field(default="auto", description="auto|cpu|cuda|cuda:N")
    preprocess: Literal["exact", "tensor", "fast"] = Field(
        default="exact",
        description="exact = identical to the reference pipeline; tensor = plain JPEGs decoded "
        "and resized with torch (decode+preprocess ~2x faster; model inputs within 1/255 of exact, but scores moved "
        "by up to 0.042 on seeded random weights, so opt-in only); fast = JPEG draft decoding",
    )
    human_max: float | None = Field(default=None, ge=0, le=1, description="Override: score below -> band human")
    ai_min: float | None = Field(default=None, ge=0, le=1, description="Override: score at/above -> band ai")
    calibration: str | None = Field(
        default=None,
        description="Calibration file from `fakesake calibrate`: scores become calibrated P(AI) banded by its "
        "thresholds (raw_score keeps the model's); refused at start if fitted for other weights",
    )
    calibration_dir: str | None = Field(
        default=None,
        description="Directory of per-tenant calibration files named TENANT.json, read at start; a tenant's "
        "file wins over model.calibration",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU intra-op threads of the model; 0 = torch's default, or for onnx half the "
        "cores (decoding uses the rest)",
    )
    cpus: str = Field(
        default="",
        description="fakesake worker: the CPUs this process runs on, a list like '0-3,8'; empty = where it was "
        "started. Under --processes N the supervisor splits its CPUs (these, or all it may use) into N disjoint "
        "shares, one per child (a GIL-bound worker runs faster on CPUs of its own); 'inherit' = no split",
    )
    autocast: bool = Field(
        default=False,
        description="torch backend on CUDA: run the model under fp16 autocast (faster on GPUs, but "
        "scores are no longer identical to the published fp32 pipeline); off = fp32, the card's numbers",
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="torch = the loaded module; onnx = exported to ONNX Runtime at start (CPU "
        "only, scores within 1e-4 of the published pipeline, ~2x the img/s per core: python -m bench); "
        "auto = onnx on CPU when onnxruntime is installed, else torch",
    )
    onnx_cache_dir: str | None = Field(
        default=None,
        description="Where exported ONNX graphs are cached, keyed by the weights' sha256 and the torch/timm/"
        "onnxruntime versions: a start with a cached graph skips the export (a miss exports in a child process, so "
        "the serving process never imports torch or timm); "
        "None = $XDG_CACHE_HOME/fakesake/onnx (~/.cache/fakesake/onnx); empty = no cache (export at every start)",
    )

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        cpus.parse(value)  # ValueError names the setting and the form it takes
        return value.strip()


class BatchSettings(BaseModel):
    max_size: int = Field(default=16, ge=1, le=1024, description="Largest inference batch")
    max_wait_ms: float = Field(default=10.0, ge=0, description="Longest a batch waits to fill after its first image")
    prepare_threads: int = Field(default=4, ge=1, description="Threads that fetch/decode/preprocess")
    intake: Literal["celery", "bulk"] = Field(
        default="celery",
        description="fakesake worker: how jobs are taken from their lanes. celery = Celery's consumer, one message "
        "at a time; bulk = many per Redis round trip into the same job threads (same acks, visibility timeout "
        "and recovery; Celery still runs retries and webhooks from the side lanes; no Celery task events or "
        "inspect for these jobs). For workers that must feed a GPU (docs/OPERATIONS.md)",
    )
    processes: int = Field(
        default=0,
        ge=0,
        description="In-process scans (fakesake scan): engine processes, each with its own model on 1 thread "
        "doing fetch+decode+predict for one batch at a time; 0 = one per core on CPU with >= 2 cores, else 1; "
        "1 = one process (prepare threads + one model thread). Ignored by fakesake worker (scale its "
        "processes/containers instead)",
    )


class FetchSettings(BaseModel):
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="Largest image accepted, in bytes")
    max_pixels: int = Field(default=64_000_000, ge=1, description="Largest decoded image, width*height")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect deadline")
    read_timeout_s: float = Field(default=10.0, gt=0, description="Deadline between two reads")
    total_timeout_s: float = Field(default=30.0, gt=0, description="Deadline for a whole fetch")
    max_redirects: int = Field(default=5, ge=0, description="Redirects followed (each re-checked)")
    max_url_length: int = Field(default=4096, ge=16, description="Longest URL accepted")
    allowed_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [80, 443], description="Ports URLs may name (comma-separated)"
    )
    allow_private: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs allowed despite SSRF protection (comma-separated), for tests and on-prem stores",
    )
    allow_local_files: bool = Field(default=False, description="Accept file:// sources (development only)")
    user_agent: str = Field(default="fakesake/0.1", description="User-Agent for URL fetches")

    @field_validator("allow_private", mode="before")
    @classmethod
    def _cidrs(cls, value: object) -> object:
        return parse_cidrs(value)

    @field_validator("allowed_ports", mode="before")
    @classmethod
    def _ports(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(p) for p in value.split(",") if p.strip()]
        return value


class RetrySettings(BaseModel):
    max_attempts: int = Field(default=5, ge=1, description="Attempts for transient failures before dead-lettering")
    backoff_base_s: float = Field(default=1.0, gt=0, description="First retry delay; doubles each attempt")
    backoff_max_s: float = Field(default=60.0, gt=0, description="Cap on one retry delay")
    max_deliveries: int = Field(
        default=3, ge=1, description="Deliveries of one job (worker crashes) before it is dead-lettered"
    )


class LedgerSettings(BaseModel):
    grace_s: float = Field(
        default=1200.0,
        gt=0,
        description="A ledger job untouched (not pushed, no delivery begun) this long, with no result and not "
        "waiting in its lane, is re-queued (a message lost by a killed worker; worker/stores/ledger.py). Must exceed "
        "redis.visibility_timeout_s",
    )
    sweep_interval_s: float = Field(
        default=30.0, ge=0, description="How often the fleet sweeps the ledger (one worker at a time); 0 = off"
    )
    batch: int = Field(default=500, ge=1, description="Most ledger entries checked in one sweep")


class RateLimitSettings(BaseModel):
    tenant_per_s: float = Field(default=0.0, ge=0, description="Jobs/s per tenant across all workers; 0 = off")
    tenant_burst: int = Field(default=50, ge=1, description="Tenant burst size")
    host_per_s: float = Field(default=0.0, ge=0, description="Fetches/s per source host; 0 = off")
    host_burst: int = Field(default=20, ge=1, description="Host burst size")
    max_defer_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest rate-limit deferral; a job whose slot is further away asks again after this "
        "(must stay below redis.visibility_timeout_s: deferred jobs wait unacked in the worker)",
    )


class ResultSettings(BaseModel):
    ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="Result record TTL")
    index_max: int = Field(default=10_000, ge=1, description="Recent results kept in each tenant's index")
    s3_prefix: str | None = Field(default=None, description="s3://bucket/prefix: also write each result as JSON")
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for webhook signatures")
    webhook_max_attempts: int = Field(default=5, ge=1, description="Webhook delivery attempts")


class EvidenceSettings(BaseModel):
    enabled: bool | None = Field(
        default=None,
        description="Read provenance (C2PA, XMP, generator metadata) from every image: unset = on when the "
        "'evidence' extra is installed, true = required (the process refuses to start without it), false = off",
    )
    include_prompts: bool = Field(
        default=False, description="Copy generator prompts into results (prompts can hold personal data)"
    )
    c2pa: bool = Field(default=True, description="Validate C2PA manifests (offline: no remote manifests, no OCSP)")
    trust_anchors_file: str | None = Field(
        default=None, description="PEM file of C2PA trust anchors; their signers validate as 'trusted', others 'valid'"
    )
    tenant_trust_anchors_dir: str | None = Field(
        default=None,
        description="Folder of one PEM file per tenant, named after it (acme.pem): C2PA trust anchors of that "
        "tenant's jobs only, added to trust_anchors_file (read at start; a file that is not PEM, or a name that is "
        "not a tenant id, stops the worker)",
    )
    max_blocks: int = Field(default=64, ge=1, description="Metadata blocks read per image; the rest are skipped")
    max_block_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest metadata block (XMP, text chunk after inflating) read"
    )
    max_total_bytes: int = Field(default=4 << 20, ge=1024, description="Metadata bytes read per image in all")
    watermark: Literal["lossless", "always", "off"] = Field(
        default="lossless",
        description="Decode the invisible watermarks of SD 1.x/2.x, SDXL and FLUX.1: lossless = PNG and lossless "
        "WebP only (where the mark survives; the check costs more than the model on CPU), always = every image, "
        "off = never",
    )
    watermark_max_px: int = Field(
        default=2048 * 2048, ge=256 * 256, description="Largest image (pixels) the watermark check decodes"
    )


class LogSettings(BaseModel):
    level: str = Field(default="INFO", description="Log level")
    json_format: bool = Field(default=False, description="One JSON object per line")


class MetricsSettings(BaseModel):
    port: int = Field(
        default=9808,
        ge=0,
        le=65535,
        description="Prometheus port of worker slot 0; slot k serves on port + 10*k (see metrics.slots); 0 = disabled",
    )
    health_port: int = Field(
        default=9809,
        ge=0,
        le=65535,
        description="HTTP /livez /readyz (and /healthz = /livez) port of worker slot 0; slot k serves on "
        "health_port + 10*k (see metrics.slots); 0 = disabled",
    )
    slots: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Worker slots per host: a starting worker takes the first slot k (0, 1, ...) whose ports "
        "(port + 10*k, health_port + 10*k) are free and whose heartbeat file is not locked, and logs it; "
        "so several workers (one per GPU) run on one host with the same settings. With every slot taken the "
        "worker exits 2 before taking a job; 1 = only the configured ports",
    )
    bind_host: str = Field(default="0.0.0.0", description="Address the metrics and health servers bind")
    heartbeat_file: str = Field(
        default="/tmp/fakesake-heartbeat",
        description="File the heartbeat thread of worker slot 0 rewrites (read by `fakesake health --file`); "
        "slot k writes <file>-k and locks <file>[-k].lock while it runs",
    )
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="Heartbeat (file + Redis ping) period")
    heartbeat_max_age_s: float = Field(
        default=30.0,
        gt=0,
        description="Liveness: a heartbeat older than this = dead; readiness: a last Redis answer older "
        "than this = not ready. Keep above interval + redis.socket_timeout_s",
    )
    consumer_stall_s: float = Field(
        default=120.0,
        ge=0,
        description="Liveness and readiness fail once the Celery consumer's event loop has not run for this "
        "long (a wedged or stopped consumer; also a broker unreachable this long); 0 = no such check",
    )
    task_events: bool = Field(
        default=False,
        description="Send Celery task events for every job (3 extra Redis publishes per job; 0-18% of end-to-end "
        "throughput in two runs on 2 CPU cores). Flower turns them on by itself while it runs; "
        "fakesake's own metrics do not need them",
    )
    exit_on_consumer_stall: bool = Field(
        default=True,
        description="A worker whose consumer stalled (metrics.consumer_stall_s) ends itself with exit code 70 "
        "so its supervisor restarts it (Compose restarts exited containers, not unhealthy ones)",
    )

    @model_validator(mode="after")
    def _max_age_above_interval(self) -> MetricsSettings:
        if self.heartbeat_max_age_s <= self.heartbeat_interval_s:
            raise ValueError("metrics.heartbeat_max_age_s must exceed metrics.heartbeat_interval_s")
        return self

    @model_validator(mode="after")
    def _slot_ports_distinct(self) -> MetricsSettings:
        # Slot k adds 10*k to both ports: the two series must stay valid ports and never meet, or one worker's
        # metrics port would be another's health port.
        from worker.service.slots import SLOT_STRIDE as stride

        last = stride * (self.slots - 1)
        for name, port in (("metrics.port", self.port), ("metrics.health_port", self.health_port)):
            if port and port + last > 65535:
                raise ValueError(f"{name} + 10 * (metrics.slots - 1) = {port + last} is above 65535; lower slots")
        if self.port and self.health_port:
            gap = abs(self.port - self.health_port)
            if gap % stride == 0 and gap <= last:
                raise ValueError(
                    f"metrics.port ({self.port}) and metrics.health_port ({self.health_port}) meet within "
                    f"metrics.slots = {self.slots} (slot k adds 10*k to both); pick ports that differ by other than "
                    "a multiple of 10, or fewer slots"
                )
        return self


class WorkerSettings(BaseSettings):
    """Settings of a worker process (and of in-process ``fakesake scan``)."""

    # extra="ignore": a FAKESAKE_ variable no field reads is not an error (see _report_unknown_env).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="ignore")

    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection")
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 connection")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Queue limits")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Detector")
    batch: BatchSettings = Field(default_factory=BatchSettings, description="Dynamic batching")
    fetch: FetchSettings = Field(default_factory=FetchSettings, description="Fetching and decoding limits")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retries and dead letters")
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings, description="Global rate limits")
    ledger: LedgerSettings = Field(default_factory=LedgerSettings, description="Recovery of lost jobs")
    results: ResultSettings = Field(default_factory=ResultSettings, description="Result store and delivery")
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings, description="Provenance evidence")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Metrics and health")

    @model_validator(mode="after")
    def _report_unknown_env(self) -> WorkerSettings:
        # The producer's names count as known: a Compose env file is shared by producer and worker.
        warn_unknown_settings(env_names(WorkerSettings) | env_names(ProducerSettings), foreign_groups=API_GROUPS)
        return self

    @model_validator(mode="after")
    def _waits_below_visibility_timeout(self) -> WorkerSettings:
        # A job deferred (countdown) sits unacked in the worker; past the visibility timeout Redis would hand
        # it to a second worker while the first still holds it.
        vt = self.redis.visibility_timeout_s
        for name, value in (
            ("rate_limit.max_defer_s", self.rate_limit.max_defer_s),
            ("retry.backoff_max_s", self.retry.backoff_max_s),
        ):
            if value >= vt:
                raise ValueError(f"{name} ({value}) must be below redis.visibility_timeout_s ({vt})")
        # A dead worker's unacked jobs come back only after the visibility timeout; the ledger must not
        # re-queue them before that (a harmless duplicate, but a pointless one).
        if self.ledger.grace_s <= vt:
            raise ValueError(f"ledger.grace_s ({self.ledger.grace_s}) must exceed redis.visibility_timeout_s ({vt})")
        return self

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> WorkerSettings:
        lo, hi = self.model.human_max, self.model.ai_min
        if lo is not None and hi is not None and lo > hi:
            raise ValueError("model.human_max must be <= model.ai_min")
        return self


def job_threads(settings: WorkerSettings) -> int:
    """Job threads of one worker process (Celery's ``--concurrency``, the bulk intake's capacity): enough to fill
    two batches while one is in the model."""
    return max(8, 2 * settings.batch.max_size + settings.batch.prepare_threads)
