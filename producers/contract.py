"""The wire contract between producers, workers and result readers.

Pydantic models serialised as JSON, queue names, Redis key names and the Celery task name. This module
imports only pydantic and the standard library, so a backend can enqueue jobs without torch.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Final = 1
TASK_NAME = "fakesake.classify"
WEBHOOK_TASK_NAME = "fakesake.deliver_webhook"
KEY_PREFIX = "fakesake"


class Priority(StrEnum):
    """Lanes. Each lane is its own Celery queue so bulk scans never starve KYC traffic."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"


class Label(StrEnum):
    AI = "ai"
    HUMAN = "human"


class Band(StrEnum):
    AI = "ai"
    UNCERTAIN = "uncertain"
    HUMAN = "human"


class Fusion(StrEnum):
    """How an ensemble's per-detector results become one ``score``/``band`` (docs: README "Several detectors").

    ``max`` (default): the highest calibrated score, and the most AI band of any detector (ai > uncertain >
    human): a detector that sees its generator wins. ``mean``: the mean score, banded by the mean of the
    detectors' thresholds. ``min``: the lowest score and the least AI band: every detector must agree.
    """

    MAX = "max"
    MEAN = "mean"
    MIN = "min"


#: The detector a job that names none is for; its jobs keep the plain lane names.
DEFAULT_MODEL: Final = "ffs-mj-5m"
_DETECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]{0,63}$")


def detector_set(model: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``: the detectors a job's ``model`` names, in the order given."""
    return tuple(part.strip() for part in model.split(","))


def queue_name(priority: Priority | str, detectors: Iterable[str] = (DEFAULT_MODEL,)) -> str:
    """Celery queue (a Redis list of the same name) of a lane: one per priority and detector set.

    Jobs for the default detector keep ``fakesake.<priority>``; any other set of detectors (order does not
    matter) gets ``fakesake.<priority>.<hash of the sorted names>``. A worker consumes the lanes of every set it
    can serve, so a job only ever reaches workers that serve all of its detectors.
    """
    names = sorted(set(detectors))
    base = f"{KEY_PREFIX}.{Priority(priority).value}"
    if names == [DEFAULT_MODEL]:
        return base
    return f"{base}.{hashlib.sha256(','.join(names).encode()).hexdigest()[:10]}"


ALL_QUEUES: tuple[str, ...] = tuple(queue_name(p) for p in Priority)


def lane_priority(lane: str) -> str:
    """``fakesake.bulk`` or ``fakesake.bulk.<hash>`` -> ``bulk``."""
    parts = lane.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


#: A worker consumes a lane per subset of what it serves: 2**n - 1 per priority, so n is kept small.
MAX_SERVED_DETECTORS: Final = 6


def served_subsets(detectors: Iterable[str]) -> list[list[str]]:
    """Every non-empty subset of ``detectors`` (sorted names; smaller sets first): the detector sets whose jobs a
    worker serving ``detectors`` can answer. ValueError outside 1..MAX_SERVED_DETECTORS detectors."""
    names = sorted(set(detectors))
    if not 1 <= len(names) <= MAX_SERVED_DETECTORS:
        raise ValueError(f"a worker serves 1 to {MAX_SERVED_DETECTORS} detectors, not {len(names)}")
    return [
        [n for i, n in enumerate(names) if mask >> i & 1]
        for mask in sorted(range(1, 1 << len(names)), key=int.bit_count)
    ]


#: Suffix of a lane's side lane (:func:`side_lane`).
SIDE_SUFFIX: Final = ".side"


def side_lane(lane: str) -> str:
    """The side lane of ``lane``: where workers queue their own follow-ups of its jobs (a retry after a rate-limit
    deferral, with its countdown; a webhook delivery). Producers never push there, so a lane only ever holds
    new jobs that can run now, which a bulk intake takes many at a time (``worker.service.intake``); every
    worker's Celery consumer takes its side lanes first, so started work finishes before new work begins."""
    return lane if lane.endswith(SIDE_SUFFIX) else lane + SIDE_SUFFIX


def lanes_for(detectors: Iterable[str]) -> tuple[str, ...]:
    """The lanes of a worker serving ``detectors``: each priority's lane of every non-empty subset of them (the
    jobs it can answer), interactive ones first (kombu's Redis transport polls them in this order)."""
    subsets = served_subsets(detectors)
    return tuple(queue_name(p, subset) for p in Priority for subset in subsets)


class Keys:
    """Redis key names, in one place. Tenant-scoped keys embed the tenant so ids alone reveal nothing."""

    @staticmethod
    def result(tenant: str, job_id: str) -> str:
        return f"{KEY_PREFIX}:result:{tenant}:{job_id}"

    @staticmethod
    def tenant_index(tenant: str) -> str:
        return f"{KEY_PREFIX}:results:{tenant}"

    @staticmethod
    def idempotency(tenant: str, key: str) -> str:
        return f"{KEY_PREFIX}:idem:{tenant}:{key}"

    @staticmethod
    def deliveries(job_id: str) -> str:
        return f"{KEY_PREFIX}:deliveries:{job_id}"

    @staticmethod
    def attempts(job_id: str) -> str:
        return f"{KEY_PREFIX}:attempts:{job_id}"

    @staticmethod
    def rate(scope: str, name: str) -> str:
        return f"{KEY_PREFIX}:rate:{scope}:{name}"

    @staticmethod
    def notify(tenant: str) -> str:
        """Pub/sub channel on which the result store announces each new final result (the job id)."""
        return f"{KEY_PREFIX}:done:{tenant}"

    @staticmethod
    def redriven_from(job_id: str) -> str:
        """Job id that a re-driven job replaces (set by ``fakesake dlq retry``)."""
        return f"{KEY_PREFIX}:dlq:from:{job_id}"

    @staticmethod
    def dlq_redriven(job_id: str) -> str:
        """The dead-letter record of a job after it was re-driven (kept for audit with a TTL)."""
        return f"{KEY_PREFIX}:dlq:redriven:{job_id}"

    @staticmethod
    def feedback(tenant: str) -> str:
        """Hash of a tenant's feedback: job id -> the stored ``producers.feedback.FeedbackRecord`` JSON."""
        return f"{KEY_PREFIX}:feedback:{tenant}"

    @staticmethod
    def feedback_index(tenant: str) -> str:
        """Sorted set of a tenant's feedback: job id scored by when it was (last) given, epoch seconds."""
        return f"{KEY_PREFIX}:feedback:index:{tenant}"

    #: job id -> the job's fields (``producers.wire.encode``) of every accepted job without a final result
    LEDGER = f"{KEY_PREFIX}:ledger"
    #: job id scored by when it was last pushed or began a delivery (Redis TIME, epoch s)
    LEDGER_SEEN = f"{KEY_PREFIX}:ledger:seen"
    #: held by the worker whose ledger sweeper runs this interval
    LEDGER_LOCK = f"{KEY_PREFIX}:ledger:lock"
    #: "<worker id> <detector,names>" scored by the Redis TIME of the worker's last heartbeat: what live workers
    #: serve (``worker.stores.serving``), read by producers to refuse jobs nobody serves
    SERVING = f"{KEY_PREFIX}:serving"
    DLQ = f"{KEY_PREFIX}:dlq"
    DLQ_INDEX = f"{KEY_PREFIX}:dlq:index"


#: Lua that sets ``now`` to Redis TIME in epoch seconds: every ``Keys.LEDGER_SEEN`` score comes from the Redis
#: clock (producers and workers alike), so scores compare across hosts whose clocks disagree.
LUA_NOW = "local t = redis.call('TIME')\nlocal now = t[1] + t[2] / 1000000\n"


JOB_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{8,64}$"
"""What a job id may be (a caller's own idempotency id included): URL- and Redis-key-safe, 8 to 64 characters."""

TenantId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]

_SOURCE_SCHEMES = ("s3", "http", "https", "file")


#: The version suffix of an S3 source, as S3 consoles print object URLs: ``?versionId=V`` at the very end.
_S3_VERSION_SUFFIX = re.compile(r"\?versionId=([^?&=/#\s]{1,1024})\Z")


def split_s3_version(uri: str) -> tuple[str, str | None]:
    """``s3://bucket/key?versionId=V`` -> (``s3://bucket/key``, ``V``); without the suffix -> (uri, None).

    The rule, for S3 keys may contain ``?`` (and ``#``, ``&``, ``=``): only a trailing ``?versionId=V`` is a
    version (V without ``? & = / #`` or spaces); every other character after ``s3://bucket/`` is part of the
    key, verbatim, with no percent-decoding. So ``s3://b/what?.jpg`` is the key ``what?.jpg``. The one key
    that cannot be written this way is a key that itself ends in ``?versionId=<token>``: name its version
    with the suffix (``...?versionId=<token>?versionId=V``).
    """
    match = _S3_VERSION_SUFFIX.search(uri)
    if match is None:
        return uri, None
    return uri[: match.start()], match.group(1)


def parse_s3_object(uri: str) -> tuple[str, str, str | None]:
    """Split ``s3://bucket/key[?versionId=V]`` into (bucket, key, version); see :func:`split_s3_version`."""
    base, version = split_s3_version(uri)
    scheme, sep, rest = base.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme.lower() != "s3" or not bucket:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return bucket, key, version


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key); key may be empty (a whole bucket). A trailing
    ``?versionId=V`` is not part of the key (:func:`parse_s3_object` returns it)."""
    bucket, key, _ = parse_s3_object(uri)
    return bucket, key


class JobMessage(BaseModel):
    """What a producer enqueues: one image reference to classify."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex,
        pattern=JOB_ID_PATTERN,
        description="Unguessable job id (uuid4 hex)",
    )
    tenant: TenantId = Field(description="Caller's tenant; results are namespaced by it")
    source: str = Field(
        min_length=1, max_length=4096, description="s3://bucket/key, http(s):// URL, or file:// (development only)"
    )
    source_version: str | None = Field(default=None, max_length=1024, description="S3 object version id")
    model: str = Field(
        default=DEFAULT_MODEL,
        max_length=256,
        description="Detector name, or several comma-separated for an ensemble (fused by ``fusion``)",
    )
    fusion: Fusion | None = Field(default=None, description="Ensembles: how scores are fused (default max)")
    priority: Priority = Priority.INTERACTIVE
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    callback_url: str | None = Field(default=None, max_length=4096)
    submitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.lower()
        if scheme not in _SOURCE_SCHEMES:
            raise ValueError(f"source scheme must be one of {_SOURCE_SCHEMES}, got {scheme or 'none'!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _version_from_source(cls, data: Any) -> Any:
        """``s3://b/k?versionId=V`` also sets ``source_version`` (``source`` stays as given): a worker that only
        honours ``source_version`` reads V too. A different explicit ``source_version`` is a contradiction."""
        if not isinstance(data, dict) or not isinstance(source := data.get("source"), str):
            return data
        if source[:5].lower() != "s3://":
            return data
        _, version = split_s3_version(source)
        if version is None:
            return data
        given = data.get("source_version")
        if given is None:
            return {**data, "source_version": version}
        if given != version:
            raise ValueError(f"source names version {version!r} but source_version is {given!r}")
        return data

    @field_validator("model")
    @classmethod
    def _detector_names(cls, value: str) -> str:
        names = detector_set(value)
        bad = [n for n in names if not _DETECTOR_NAME.match(n)]
        if bad:
            raise ValueError(f"not detector names: {bad}")
        if len(set(names)) != len(names):
            raise ValueError(f"a detector is named twice in {value!r}")
        return ",".join(names)

    @property
    def detectors(self) -> tuple[str, ...]:
        """The detectors the job asks for (one, or an ensemble)."""
        return detector_set(self.model)

    @field_validator("callback_url")
    @classmethod
    def _http_callback(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme.lower() not in ("http", "https"):
            raise ValueError("callback_url must be http(s)")
        return value


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    retryable: bool = False


class Timings(BaseModel):
    """Milliseconds spent in each stage; absent stages are None."""

    model_config = ConfigDict(frozen=True)

    queued_ms: float | None = None
    fetch_ms: float | None = None
    decode_ms: float | None = None
    inference_ms: float | None = None
    total_ms: float | None = None


class Verdict(BaseModel):
    """The classification part of a result."""

    model_config = ConfigDict(frozen=True)

    score: float = Field(ge=0.0, le=1.0, description="P(image is AI-generated)")
    label: Label | None = Field(description="The band's verdict: ai or human; None in the uncertain band")
    band: Band
    model: str = Field(description="name@version of the detector")
    raw_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="The model's own P(AI) when a calibration mapped it to score"
    )
    calibration: str | None = Field(default=None, description="id of the calibration that mapped the score")


class DetectorScore(BaseModel):
    """One detector's part of an ensemble's result."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="name@version+<weights sha256[:12]> of the detector")
    score: float = Field(ge=0.0, le=1.0)
    band: Band
    label: Label | None = None
    raw_score: float | None = Field(default=None, description="The model's own P(AI) under a calibration")
    calibration: str | None = None


class JobResult(BaseModel):
    """The one final result of a job, as stored and as delivered to webhooks."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    job_id: str
    tenant: str
    source: str
    status: Status
    score: float | None = None
    label: Label | None = None
    band: Band | None = None
    model: str | None = None
    error: ErrorInfo | None = None
    attempts: int = 1
    timings: Timings = Field(default_factory=Timings)
    evidence: dict[str, Any] = Field(default_factory=dict)
    source_version: str | None = Field(default=None, description="S3 version id of the object that was scored")
    etag: str | None = Field(default=None, description="S3 ETag (unquoted) of the object that was scored")
    raw_score: float | None = Field(
        default=None, description="The model's own P(AI) when a calibration mapped it to score (null without)"
    )
    calibration: str | None = Field(default=None, description="id of the calibration that produced score")
    detectors: list[DetectorScore] | None = Field(
        default=None, description="Ensembles: each detector's result; score and band are fused by ``fusion``"
    )
    fusion: Fusion | None = Field(default=None, description="Ensembles: the rule that fused score and band")
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class FeedbackRecord(BaseModel):
    """One feedback (``producers.feedback``): the label a tenant gave a finished job, with the job's result as
    it was scored."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    label: Label = Field(description="What the image really is, as the tenant says")
    note: str | None = Field(default=None, description="Free text, e.g. the reviewer's reason")
    source: str = Field(description="The job's source as its result stores it (redacted: no query string)")
    source_version: str | None = Field(default=None, description="S3 version id of the object that was scored")
    etag: str | None = Field(default=None, description="S3 ETag of the object that was scored")
    model: str | None = Field(description="name@version of the detector that scored it")
    score: float | None = Field(description="P(AI) the job was given")
    band: Band | None = Field(default=None, description="The band of that score")
    received_at: datetime = Field(description="When the label was given")
