"""Redis connections from settings: ACL user/password, TLS (rediss://) with a CA bundle, timeouts, Sentinel.

One place builds clients for producers, workers and the CLI, so TLS, auth and failover behave the same
everywhere. With a ``sentinel://`` URL (``producers.redis_url``) every client is redis-py's
``Sentinel.master_for``: its pool asks the Sentinels for the primary on each new connection and drops
connections to a primary that was demoted, so stores, scripts and pub/sub follow a failover by themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis
import redis.sentinel

from producers.errors import ConfigError, ErrorCode, TransientError
from producers.redis_url import SentinelTarget, is_sentinel_url, parse_sentinel_url
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
    if uses_tls(settings):
        kwargs.update(_ssl_kwargs(settings))
    return kwargs


def uses_tls(settings: RedisSettings) -> bool:
    """Whether connections to Redis (and to the Sentinels) use TLS: ``rediss://`` or ``sentinels://``."""
    return settings.url.startswith(("rediss://", "sentinels://"))


def _ssl_kwargs(settings: RedisSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ssl_cert_reqs": settings.ssl_cert_reqs}
    if settings.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = settings.ssl_ca_certs
    return kwargs


def sentinel_target(settings: RedisSettings) -> SentinelTarget | None:
    """The Sentinel group ``settings.url`` names, or None for a single server."""
    return parse_sentinel_url(settings.url) if is_sentinel_url(settings.url) else None


def sentinel_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """Connection options for the Sentinels themselves (redis-py's and kombu's ``sentinel_kwargs``): the same
    timeouts and TLS as the data nodes, and the Sentinels' own password (not the data nodes')."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    if settings.sentinel_password is not None:
        kwargs["password"] = settings.sentinel_password.get_secret_value()
    if uses_tls(settings):
        kwargs.update(ssl=True, **_ssl_kwargs(settings))
    return kwargs


class SentinelRedis(redis.Redis):
    """A ``master_for`` client whose ``close`` also closes its connections to the Sentinels."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            manager.close()


def redis_from_settings(settings: RedisSettings) -> redis.Redis:
    """A thread-safe client (connection pool) for ``settings.url``: the server itself, or the primary of a
    Sentinel group, found again after every failover."""
    target = sentinel_target(settings)
    if target is None:
        return redis.Redis.from_url(settings.url, **redis_kwargs(settings))
    kwargs = redis_kwargs(settings)
    kwargs["db"] = target.db
    if target.username is not None:
        kwargs["username"] = target.username
    if target.password is not None:  # the URL's password wins, as redis-py's from_url does
        kwargs["password"] = target.password
    if target.tls:
        kwargs["ssl"] = True
    if not settings.master_name:  # RedisSettings refuses this; settings built with model_construct do not
        raise ConfigError("a sentinel:// URL needs FAKESAKE_REDIS__MASTER_NAME (the Sentinel group's name)")
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel untyped
        list(target.sentinels), sentinel_kwargs=sentinel_kwargs(settings), **kwargs
    )
    client: SentinelRedis = manager.master_for(settings.master_name, redis_class=SentinelRedis)  # type: ignore[no-untyped-call]
    return client


def broker_url(settings: RedisSettings) -> str:
    """The Redis URL with ``password`` folded in, for clients (Celery/kombu) that take only a URL; a Sentinel
    group in kombu's own form (``SentinelTarget.kombu_url``)."""
    target = sentinel_target(settings)
    if target is not None:
        if settings.password is not None and target.password is None:
            target = dataclasses.replace(target, password=settings.password.get_secret_value())
        return target.kombu_url()
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
    """``broker_use_ssl`` for Celery/kombu when the URL is rediss:// or sentinels://, else None."""
    if not uses_tls(settings):
        return None
    opts: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[settings.ssl_cert_reqs]}
    if settings.ssl_ca_certs:
        opts["ssl_ca_certs"] = settings.ssl_ca_certs
    return opts


def celery_sentinel_options(settings: RedisSettings) -> dict[str, Any]:
    """``broker_transport_options`` entries for kombu's Sentinel transport (empty for a single server)."""
    if sentinel_target(settings) is None:
        return {}
    return {"master_name": settings.master_name, "sentinel_kwargs": sentinel_kwargs(settings)}


_UNAVAILABLE = (
    # includes BusyLoadingError (a restarted Redis still loading its AOF) and, with Sentinel,
    # MasterNotFoundError (no Sentinel names a primary yet: a failover is under way)
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,  # a demoted primary (now a replica) answering a write during a failover
    redis.OutOfMemoryError,  # maxmemory reached: writes fail until memory is freed
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    ConnectionError,
    TimeoutError,
)


#: Redis error codes (the first word of an error reply) that redis-py raises as a plain ResponseError but that
#: mean "not now": NOREPLICAS is a primary refusing writes under ``min-replicas-to-write`` until a replica is
#: back (docs/RELIABILITY.md recommends that setting with Sentinel).
_UNAVAILABLE_CODES = frozenset({"NOREPLICAS"})
_PIPELINE_PREFIX = "of pipeline caused error: "  # redis-py puts this before the reply of a failed pipeline command


def _error_code(exc: redis.ResponseError) -> str:
    message = str(exc.args[0]) if exc.args else ""
    return message.rpartition(_PIPELINE_PREFIX)[2].split(" ", 1)[0]


def redis_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot serve now but may later (worth a retry); other Redis errors are bugs."""
    if isinstance(exc, redis.ResponseError) and _error_code(exc) in _UNAVAILABLE_CODES:
        return True
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
