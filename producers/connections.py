"""Redis connections from settings: ACL user/password, TLS (rediss://) with a CA bundle, timeouts.

One place builds clients for producers, workers and the CLI, so TLS and auth behave the same everywhere.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from producers.errors import ErrorCode, TransientError
from producers.settings import RedisSettings

_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def redis_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url`` beyond the URL itself."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = settings.ssl_cert_reqs
        if settings.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = settings.ssl_ca_certs
    return kwargs


def redis_from_settings(settings: RedisSettings) -> redis.Redis:
    """A thread-safe client (connection pool) for ``settings.url``."""
    return redis.Redis.from_url(settings.url, **redis_kwargs(settings))


def broker_url(settings: RedisSettings) -> str:
    """The Redis URL with ``password`` folded in, for clients (Celery/kombu) that take only a URL."""
    if settings.password is None:
        return settings.url
    parts = urlsplit(settings.url)
    if parts.password:
        return settings.url
    user = quote(parts.username or "", safe="")
    secret = quote(settings.password.get_secret_value(), safe="")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}"))


def celery_ssl_options(settings: RedisSettings) -> dict[str, Any] | None:
    """``broker_use_ssl`` for Celery/kombu when the URL is rediss://, else None."""
    if not settings.url.startswith("rediss://"):
        return None
    opts: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[settings.ssl_cert_reqs]}
    if settings.ssl_ca_certs:
        opts["ssl_ca_certs"] = settings.ssl_ca_certs
    return opts


_UNAVAILABLE = (
    redis.ConnectionError,  # includes BusyLoadingError: a restarted Redis still loading its AOF
    redis.TimeoutError,
    redis.ReadOnlyError,  # a replica answering during a failover
    redis.OutOfMemoryError,  # maxmemory reached: writes fail until memory is freed
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    ConnectionError,
    TimeoutError,
)


def redis_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot serve now but may later (worth a retry); other Redis errors are bugs."""
    return isinstance(exc, _UNAVAILABLE)


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Turn Redis connection trouble into ``TransientError(unavailable)`` naming ``what`` was being done: the
    one mapping of Redis failures for producers, stores and the worker runtime."""
    try:
        yield
    except Exception as exc:
        if redis_unavailable(exc):
            raise TransientError(ErrorCode.UNAVAILABLE, f"{what}: Redis unavailable: {exc}") from exc
        raise


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients with or without ``decode_responses``)."""
    return value.decode() if isinstance(value, bytes) else value
