"""Settings shared by every fakesake process, and the producer's own settings class.

Environment prefix ``FAKESAKE_``, nested groups with ``__`` (``FAKESAKE_REDIS__URL``). No module-level
instance: each process builds its settings once at start and hands small frozen policies to the core.
Imports only pydantic(-settings) and the standard library.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "FAKESAKE_"


class RedisSettings(BaseModel):
    """Broker and result store connection."""

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL (redis:// or rediss:// for TLS); user:password@ for ACL auth",
    )
    password: SecretStr | None = Field(default=None, description="Password, if not in the URL")
    ssl_ca_certs: str | None = Field(default=None, description="CA bundle for rediss:// (path)")
    ssl_cert_reqs: str = Field(default="required", description="rediss:// certificate check: required|optional|none")
    socket_timeout_s: float = Field(default=10.0, gt=0, description="Socket timeout for Redis calls")
    visibility_timeout_s: int = Field(
        default=600, gt=0, description="Seconds before an unacked job is redelivered to another worker"
    )


class S3Settings(BaseModel):
    """S3 (or an S3-compatible store) for sources and the optional result sink."""

    endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, moto, ...); None = AWS")
    region: str | None = Field(default=None, description="AWS region")
    access_key_id: SecretStr | None = Field(default=None, description="Access key; None = default chain")
    secret_access_key: SecretStr | None = Field(default=None, description="Secret key; None = default chain")
    max_attempts: int = Field(
        default=4,
        ge=1,
        description="boto3 standard retry mode total attempts for scan fetches, listings, weights and the result "
        "sink; worker source fetches make one attempt (FAKESAKE_RETRY__MAX_ATTEMPTS retries them)",
    )
    allowed_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bucket allow-list; empty = any bucket"
    )

    @field_validator("allowed_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: object) -> object:
        if isinstance(value, str):
            return [b.strip() for b in value.split(",") if b.strip()]
        return value


class QueueSettings(BaseModel):
    """Backpressure limits checked by producers."""

    max_depth: int = Field(default=100_000, ge=1, description="Refuse new jobs when a lane holds this many")
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="How long results are kept")


def parse_cidrs(value: object) -> object:
    """``"10.0.0.0/8, 127.0.0.1/32"`` -> list of networks (validated)."""
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if isinstance(value, list):
        return [str(ipaddress.ip_network(c, strict=False)) for c in value]
    return value


class ProducerSettings(BaseSettings):
    """Settings of a producer process (backend, CLI ``submit``/``result``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection")
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 connection (prefix enumeration)")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Backpressure")
    default_model: str = Field(default="ffs-mj-5m", description="Model for jobs that name none")
    tenant: str = Field(default="default", description="Tenant used when the caller names none")
