"""Sentinel URLs: parsed once, and every client built from them (redis-py, Celery/kombu) gets the same group."""

from __future__ import annotations

import pytest
import redis
import redis.sentinel
from pydantic import SecretStr, ValidationError

from producers.connections import (
    SentinelRedis,
    broker_url,
    celery_sentinel_options,
    celery_ssl_options,
    redis_errors,
    redis_from_settings,
    sentinel_kwargs,
)
from producers.errors import ErrorCode, TransientError
from producers.redaction import redact_url
from producers.redis_url import SentinelTarget, is_sentinel_url, parse_sentinel_url
from producers.settings import RedisSettings

THREE = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (
            THREE,
            SentinelTarget(
                sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)),
                tls=False,
                username=None,
                password="s3cret",
                db=2,
            ),
        ),
        (
            "sentinels://app:p%40ss@s1:1/0;sentinels://app:p%40ss@s2:2/0",
            SentinelTarget(sentinels=(("s1", 1), ("s2", 2)), tls=True, username="app", password="p@ss", db=0),
        ),
        (
            "sentinel://[::1]:26379",
            SentinelTarget(sentinels=(("::1", 26379),), tls=False, username=None, password=None, db=0),
        ),
        (  # the same Sentinel twice is one Sentinel
            "sentinel://a:1;sentinel://a:1",
            SentinelTarget(sentinels=(("a", 1),), tls=False, username=None, password=None, db=0),
        ),
    ],
)
def test_parse_sentinel_url(url: str, want: SentinelTarget) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == want


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sentinel://a:1;redis://b:2", "every part"),
        ("sentinel://a:1;sentinels://b:2", "mixed"),
        ("sentinel://u:x@a:1;sentinel://u:y@b:2", "different credentials"),
        ("sentinel://a:1/0;sentinel://b:2/1", "different databases"),
        ("sentinel://a:1/zero", "is a number"),
        ("sentinel://a:port", "bad Sentinel port"),
        ("sentinel://:1", "no host"),
    ],
)
def test_bad_sentinel_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_sentinel_url(url)


def test_plain_urls_are_not_sentinel() -> None:
    assert not any(is_sentinel_url(u) for u in ("redis://a:1/0", "rediss://a", "unix:///tmp/r.sock"))


def test_settings_require_a_master_name_and_a_valid_url() -> None:
    with pytest.raises(ValidationError, match="MASTER_NAME"):
        RedisSettings(url=THREE)
    with pytest.raises(ValidationError, match="different databases"):
        RedisSettings(url="sentinel://a:1/0;sentinel://b:2/1", master_name="m")
    assert RedisSettings(url=THREE, master_name="m").master_name == "m"


def test_kombu_url_repeats_credentials_and_database_on_every_part() -> None:
    # kombu re-reads the URL of the part it fails over to: each part must carry them
    settings = RedisSettings(url=THREE.replace("sentinel", "sentinels"), master_name="m")
    assert broker_url(settings) == (
        "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://:s3cret@10.0.0.2:26380/2;sentinel://:s3cret@10.0.0.3:26379/2"
    )
    # TLS travels as broker_use_ssl (kombu's Sentinel transport reads only the sentinel:// scheme)
    assert celery_ssl_options(settings) == {"ssl_cert_reqs": 2}
    folded = RedisSettings(url="sentinel://a:1", master_name="m", password=SecretStr("p w"))
    assert broker_url(folded) == "sentinel://:p%20w@a:1/0"


def test_celery_config_selects_the_fixed_sentinel_transport() -> None:
    from worker.service.celery_app import celery_config
    from worker.service.settings import WorkerSettings
    from worker.stores.broker import SentinelChannel, SentinelTransport

    settings = WorkerSettings(
        redis=RedisSettings(url=THREE, master_name="mymaster", sentinel_password=SecretStr("sp"), socket_timeout_s=3)
    )
    conf = celery_config(settings)
    assert conf["broker_transport"] == "worker.stores.broker:SentinelTransport"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {"socket_timeout": 3, "socket_connect_timeout": 3, "password": "sp"}
    assert options["visibility_timeout"] == settings.redis.visibility_timeout_s
    assert SentinelTransport.Channel is SentinelChannel and SentinelTransport.default_port == 26379
    assert celery_config(WorkerSettings())["broker_transport"] == "worker.stores.broker:Transport"
    assert celery_sentinel_options(RedisSettings()) == {}


def test_sentinel_channel_of_a_detached_connection_fails_with_a_connection_error() -> None:
    from worker.stores.broker import SentinelChannel

    channel = SentinelChannel.__new__(SentinelChannel)
    channel.connection = None
    with pytest.raises(redis.ConnectionError, match="already closed"):
        channel._connparams()


def test_redis_client_asks_the_sentinels_for_the_primary() -> None:
    settings = RedisSettings(
        url="sentinels://app:pw@s1:1/3;sentinels://app:pw@s2:2/3",
        master_name="grp",
        sentinel_password=SecretStr("sp"),
        ssl_ca_certs="/ca.pem",
    )
    client = redis_from_settings(settings)  # builds pools only: nothing connects yet
    try:
        assert isinstance(client, SentinelRedis)
        pool = client.connection_pool
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool) and pool.service_name == "grp"
        assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
        kw = pool.connection_kwargs
        assert (kw["db"], kw["username"], kw["password"], kw["ssl_ca_certs"]) == (3, "app", "pw", "/ca.pem")
        manager = pool.sentinel_manager
        assert [
            (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in manager.sentinels
        ] == [("s1", 1), ("s2", 2)]
        sentinel_conn = manager.sentinels[0].connection_pool.connection_kwargs
        assert sentinel_conn["password"] == "sp"  # the Sentinels' own password, not the data nodes'
    finally:
        client.close()
    assert sentinel_kwargs(RedisSettings(url="sentinel://a:1", master_name="m")) == {
        "socket_timeout": 10.0,
        "socket_connect_timeout": 10.0,
    }


@pytest.mark.parametrize(
    "exc",
    [
        redis.sentinel.MasterNotFoundError("no primary named yet"),
        redis.ConnectionError("The previous master is now a slave"),  # redis-py's rewrite of a ReadOnlyError
        redis.ReadOnlyError("READONLY"),
    ],
)
def test_failover_errors_are_retryable(exc: Exception) -> None:
    with pytest.raises(TransientError) as info, redis_errors("submit"):
        raise exc
    assert info.value.code is ErrorCode.UNAVAILABLE and info.value.retryable


def test_redaction_hides_every_sentinel_password() -> None:
    text = redact_url("sentinel://u:one@h1:1/0;sentinel://:two@h2:2/0")
    assert text == "sentinel://h1:1/0;sentinel://h2:2/0"


def test_broker_failover_keeps_the_fixed_sentinel_transport() -> None:
    """kombu treats the URL's parts as alternates; without the strategy its first switch would bring back the
    stock ``sentinel`` transport (and its crash on a Redis restart)."""
    from kombu import Connection

    from worker.service.celery_app import celery_config
    from worker.service.settings import WorkerSettings
    from worker.stores.broker import SentinelTransport

    conf = celery_config(WorkerSettings(redis=RedisSettings(url=THREE, master_name="m")))
    conn = Connection(
        conf["broker_url"], transport=conf["broker_transport"], failover_strategy=conf["broker_failover_strategy"]
    )
    stock = Connection(conf["broker_url"], transport=conf["broker_transport"])
    for _ in range(4):
        conn.maybe_switch_next()
        stock.maybe_switch_next()
    assert conn.get_transport_cls() is SentinelTransport
    assert (conn.port, conn.password, conn.virtual_host) == (26379, "s3cret", "2")
    assert len(conn.alt) == 3  # every Sentinel still listed for the channel
    assert stock.get_transport_cls() is not SentinelTransport  # the defect the strategy prevents


@pytest.mark.parametrize(
    "reply",
    [
        "NOREPLICAS Not enough good replicas to write.",
        "NOREPLICAS Not enough good replicas to write. script: 897afd, on @user_script:1.",
        "Command # 1 (SET x 1) of pipeline caused error: NOREPLICAS Not enough good replicas to write.",
    ],
)
def test_a_primary_without_replicas_refuses_writes_retryably(reply: str) -> None:
    # min-replicas-to-write: redis-py raises a plain ResponseError for this reply
    with pytest.raises(TransientError), redis_errors("submit"):
        raise redis.ResponseError(reply)


def test_other_error_replies_stay_bugs() -> None:
    with pytest.raises(redis.ResponseError), redis_errors("submit"):
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
