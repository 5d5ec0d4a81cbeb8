"""worker.stores.broker: a broker connection closed while Redis is down must fail with a connection error (which
Celery recovers from), never AttributeError (which stops the worker). Real redis-server, SIGKILLed.

The failing sequence is the one Celery's consumer runs on a lost connection: ``collect()`` then
``close()``. Making it deterministic takes a channel whose close fails twice during ``collect()`` before
it marks itself closed: a BRPOP in flight (``_brpop_read`` raises on the dead socket) and an auto-delete
fanout queue (``queue_delete`` raises next). Celery's consumer channel has both (BRPOP issued by the event
loop; pidbox and gossip bind fanout queues).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors

from producers.settings import RedisSettings
from tests.support.servers import RedisServer, redis_server
from worker.service.celery_app import celery_config
from worker.service.settings import WorkerSettings
from worker.stores.broker import TRANSPORT_PATH, Channel


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server(appendonly=True) as srv:
        yield srv


def _connection_dropped_mid_poll(server: RedisServer, transport: str | None) -> Connection:
    """A connection holding one unacked delivery, its BRPOP in flight, whose Redis then dies, after which
    Celery's recovery step ``collect()`` has run. Redis is back up on return (the AOF keeps the unacked)."""
    conn = Connection(server.url, transport=transport)
    channel = conn.default_channel
    lane = Queue("lane", routing_key="lane")(channel)
    lane.declare()
    broadcast = Queue("broadcast", Exchange("broadcast", type="fanout"), auto_delete=True)(channel)
    broadcast.declare()
    conn.Producer(channel).publish({"job": 1}, routing_key="lane")
    received: list[object] = []
    conn.Consumer([lane, broadcast], callbacks=[lambda _body, msg: received.append(msg)], channel=channel).consume()
    conn.drain_events(timeout=5)
    assert len(received) == 1 and len(channel.qos._delivered) == 1  # held, not acked
    channel._brpop_start()  # the event loop's next BRPOP, outstanding when the socket dies
    server.stop(kill=True)
    conn.collect(socket_timeout=1)
    assert not channel.closed and channel.connection.client is None  # the state that used to crash
    server.start()
    return conn


def test_stock_kombu_raises_attribute_error_here(server: RedisServer) -> None:
    """The upstream defect this module works around. If this starts failing, kombu has fixed it and
    worker.stores.broker can go (check the fault suite's Redis-restart scenario without it first)."""
    conn = _connection_dropped_mid_poll(server, transport=None)
    with pytest.raises(AttributeError, match="hostname"):
        ignore_errors(conn, conn.close)


def test_detached_channel_fails_as_a_connection_error_and_keeps_the_unacked_message(server: RedisServer) -> None:
    conn = _connection_dropped_mid_poll(server, transport=TRANSPORT_PATH)
    ignore_errors(conn, conn.close)  # returns: Celery goes on to reconnect
    client = redis.Redis.from_url(server.url)
    try:
        # Nothing was lost: the delivery is still in kombu's unacked hash, where the visibility-timeout
        # restore (any worker's) finds it.
        assert client.hlen("unacked") == 1 and client.zcard("unacked_index") == 1
    finally:
        client.close()


def test_transport_carries_messages_like_the_stock_one(server: RedisServer) -> None:
    with Connection(server.url, transport=TRANSPORT_PATH) as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        queue = Queue("lane", routing_key="lane")(channel)
        queue.declare()
        conn.Producer(channel).publish({"job": 2}, routing_key="lane")
        message = queue.get(no_ack=False)
        assert message is not None and message.payload == {"job": 2}
        message.ack()
        assert redis.Redis.from_url(server.url).hlen("unacked") == 0


def test_celery_workers_use_it() -> None:
    config = celery_config(WorkerSettings(redis=RedisSettings(url="redis://127.0.0.1:6399/0")))
    assert config["broker_transport"] == TRANSPORT_PATH
