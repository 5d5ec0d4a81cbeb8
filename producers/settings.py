"""Settings shared by every fakesake process, and the producer's own settings class.

Environment prefix ``FAKESAKE_``, nested groups with ``__`` (``FAKESAKE_REDIS__URL``). No module-level
instance: each process builds its settings once at start and hands small frozen policies to the core.
Imports only pydantic(-settings) and the standard library.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, get_args

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producers.redis_url import is_sentinel_url, parse_sentinel_url

ENV_PREFIX = "FAKESAKE_"
ENV_NESTED_DELIMITER = "__"

log = logging.getLogger(__name__)

#: Top-level settings read by the worker's class only. Every fakesake process reads the same ``FAKESAKE_``
#: prefix (one Compose env file serves api, producer and worker) but producers never import the worker: this
#: is how a producer tells the worker's ``FAKESAKE_MODEL__...`` from a typo. It skips those names and the
#: worker, which knows both classes, checks them in full. A unit test keeps this equal to WorkerSettings' fields.
WORKER_GROUPS = frozenset(
    {"model", "batch", "fetch", "retry", "rate_limit", "ledger", "results", "evidence", "log", "metrics"}
)
#: Top-level settings read by the HTTP API's class only (``api.settings.ApiSettings``), skipped in the same way by
#: producers and workers.
API_GROUPS = frozenset({"api"})


class RedisSettings(BaseModel):
    """Broker and result store connection."""

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL (redis:// or rediss:// for TLS); user:password@ for ACL auth. A Sentinel group: "
        "sentinel://host:26379;sentinel://host2:26379 (sentinels:// for TLS; docs/RELIABILITY.md)",
    )
    password: SecretStr | None = Field(default=None, description="Password, if not in the URL")
    master_name: str | None = Field(
        default=None, description="Sentinel group (master) name; required with a sentinel:// URL"
    )
    sentinel_password: SecretStr | None = Field(
        default=None, description="Password of the Sentinels themselves (their requirepass), if they have one"
    )
    ssl_ca_certs: str | None = Field(default=None, description="CA bundle for rediss:// or sentinels:// (path)")
    ssl_cert_reqs: str = Field(
        default="required", description="rediss:// / sentinels:// certificate check: required|optional|none"
    )
    socket_timeout_s: float = Field(default=10.0, gt=0, description="Socket timeout for Redis calls")
    visibility_timeout_s: int = Field(
        default=600, gt=0, description="Seconds before an unacked job is redelivered to another worker"
    )

    @model_validator(mode="after")
    def _check_sentinel(self) -> RedisSettings:
        if is_sentinel_url(self.url):
            parse_sentinel_url(self.url)  # a ValueError here is a validation error naming the field's problem
            if not self.master_name:
                raise ValueError("a sentinel:// URL needs FAKESAKE_REDIS__MASTER_NAME (the Sentinel group's name)")
        return self


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
    served_max_age_s: float = Field(
        default=30.0,
        ge=0,
        description="Refuse at submit a job whose detectors no worker advertised within this many seconds "
        "(when any worker is live); 0 = never check",
    )


class FeedbackSettings(BaseModel):
    """The tenant-scoped store of labels given for finished jobs (``fakesake feedback``, the API's feedback)."""

    ttl_s: int = Field(
        default=180 * 24 * 3600,
        ge=60,
        description="How long a feedback entry is kept after it was given (it outlives the result it labels)",
    )
    max_per_tenant: int = Field(
        default=100_000, ge=1, description="Most feedback entries kept per tenant; the oldest go first"
    )


def parse_cidrs(value: object) -> object:
    """``"10.0.0.0/8, 127.0.0.1/32"`` -> list of networks (validated)."""
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if isinstance(value, list):
        return [str(ipaddress.ip_network(c, strict=False)) for c in value]
    return value


class ProducerSettings(BaseSettings):
    """Settings of a producer process (backend, CLI ``submit``/``result``)."""

    # extra="ignore": a FAKESAKE_ variable no field reads is not an error (see warn_unknown_settings).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="ignore")

    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis connection")
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 connection (prefix enumeration)")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Backpressure")
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings, description="Feedback store")
    default_model: str = Field(default="ffs-mj-5m", description="Model for jobs that name none")
    tenant: str = Field(default="default", description="Tenant used when the caller names none")

    @model_validator(mode="after")
    def _report_unknown_env(self) -> ProducerSettings:
        warn_unknown_settings(env_names(ProducerSettings), foreign_groups=WORKER_GROUPS | API_GROUPS)
        return self


# --- unknown FAKESAKE_ variables ---------------------------------------------------------------------------


def env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> frozenset[str]:
    """Every environment variable ``model`` reads, upper case: each field, recursing into nested groups, and
    each group as a whole (pydantic-settings also reads ``FAKESAKE_REDIS='{"url": ...}'``)."""
    names: set[str] = set()
    for field_name, info in model.model_fields.items():
        env = f"{prefix}{field_name}".upper()
        names.add(env)
        for candidate in (info.annotation, *get_args(info.annotation)):  # a group, or an optional group
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                names |= env_names(candidate, f"{env}{ENV_NESTED_DELIMITER}")
    return frozenset(names)


@dataclass(frozen=True)
class UnknownSetting:
    """A ``FAKESAKE_`` variable that no settings class reads, and the known name closest to it."""

    name: str
    suggestion: str | None

    def __str__(self) -> str:
        hint = f"did you mean {self.suggestion}?" if self.suggestion else "no setting has a similar name"
        return f"unknown setting {self.name} ({hint})"


def unknown_settings(
    known: Iterable[str], environ: Mapping[str, str], *, foreign_groups: Iterable[str] = ()
) -> list[UnknownSetting]:
    """The ``FAKESAKE_`` names in ``environ`` that are not in ``known`` (compared without case, as
    pydantic-settings reads them), sorted. Names under ``foreign_groups`` (top-level field names) belong to
    another process's class and are skipped."""
    known_upper = {k.upper() for k in known}
    foreign = tuple(f"{ENV_PREFIX}{g}".upper() for g in foreign_groups)
    # Suggestions are matched on the part after the prefix: the shared prefix would make every name look close.
    stems = {k.removeprefix(ENV_PREFIX): k for k in known_upper}
    found = []
    for key in sorted(environ):
        name = key.upper()
        if not name.startswith(ENV_PREFIX) or name in known_upper:
            continue
        if any(name == f or name.startswith(f + ENV_NESTED_DELIMITER) for f in foreign):
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), list(stems), n=1)
        found.append(UnknownSetting(key, stems[close[0]] if close else None))
    return found


_reported: set[str] = set()  # names already warned about in this process


def warn_unknown_settings(
    known: Iterable[str], *, foreign_groups: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> list[UnknownSetting]:
    """Log one warning for each unknown ``FAKESAKE_`` variable (see :func:`unknown_settings`), once per
    process (settings are built more than once in some processes); returns the ones found.

    A warning, not a refusal: one env file is shared by processes of different versions during a rolling
    upgrade (a variable a newer release reads must not stop an older one), and test harnesses keep their
    own ``FAKESAKE_`` variables. The values are never logged: some are secrets."""
    found = unknown_settings(known, os.environ if environ is None else environ, foreign_groups=foreign_groups)
    for item in found:
        if item.name not in _reported:
            _reported.add(item.name)
            log.warning("%s; it is ignored", item)
    return found
