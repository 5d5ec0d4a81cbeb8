"""``ApiSettings``: the settings of a ``fakesake api`` process (the producer's, plus the ``api`` group)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from producers.settings import ProducerSettings


class ApiGroup(BaseModel):
    """The HTTP server and its ingress limits."""

    host: str = Field(default="127.0.0.1", description="Address the HTTP API listens on (0.0.0.0 in containers)")
    port: int = Field(default=8080, ge=1, le=65535, description="Port of the HTTP API")
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest POST body accepted; larger ones get 413 unread"
    )
    max_jobs_per_request: int = Field(default=1000, ge=1, description="Most sources in one POST /v1/jobs")
    tenant_rate_per_s: float = Field(
        default=0.0, ge=0, description="Jobs per second each tenant may submit over HTTP (0 = unlimited)"
    )
    tenant_burst: int = Field(default=100, ge=1, description="Jobs a tenant may submit at once after a quiet period")
    page_max: int = Field(default=500, ge=1, description="Largest page of GET /v1/jobs")
    pending_retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After of a 202 answer to GET /v1/jobs/{id} while the job is pending"
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    upload_bucket: str | None = Field(
        default=None,
        description="S3 bucket where POST /v1/uploads stores images (then enqueued as s3:// jobs); unset = uploads "
        "off. Workers must be able to read it (s3.allowed_buckets)",
    )
    upload_prefix: str = Field(
        default="uploads", max_length=256, description="Key prefix of uploads: <prefix>/<tenant>/yyyy/mm/dd/<uuid>"
    )
    upload_max_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1024, description="Largest image accepted by POST /v1/uploads (413 beyond)"
    )


class ApiModelGroup(BaseModel):
    """The one ``model`` setting the API reads (the worker's group has many more; the API ignores those)."""

    detectors_file: str | None = Field(
        default=None,
        description="TOML (or YAML) file declaring detectors: name, base or arch, weights, version, thresholds, "
        "calibration (README 'Several detectors')",
    )


class ApiSettings(ProducerSettings):
    """Settings of ``fakesake api``: Redis, queue limits and default model as for producers, plus ``api``, and the
    workers' detectors file (``GET /v1/detectors`` lists its detectors; submits may name them)."""

    api: ApiGroup = Field(default_factory=ApiGroup, description="HTTP API")
    model: ApiModelGroup = Field(
        default_factory=ApiModelGroup, description="The workers' detectors file (the API reads it without torch)"
    )
