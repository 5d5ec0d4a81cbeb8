"""kombu's Redis transport with one fix, so a Redis restart cannot stop a worker.

What goes wrong without it (kombu 5.7.0, Celery 5.7.0; seen in ``tests/faults`` about one Redis restart in
five): when the broker connection drops, Celery's consumer calls ``connection.collect()`` and then
``connection.close()``. ``collect()`` detaches the transport from the connection (``transport.client =
None``) even when closing a channel failed half-way, for example because it raised in ``_brpop_read`` or
``queue_delete`` on the dead socket. The second close then reaches ``QoS.restore_unacked_once``, which
builds a fresh Redis client from ``self.connection.client``. That is ``None`` by now, so it raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``. An ``AttributeError`` is not a
connection error, so ``ignore_errors`` lets it through, and Celery treats it as an "Unrecoverable error" and
stops the worker instead of reconnecting (the same trace as kombu #582 and #970).

The fix: a channel whose transport is already detached raises a *connection* error when it needs a new
client. kombu and Celery expect that error on this path: they swallow it and reconnect. Nothing is lost. The
unacked messages are still in Redis's ``unacked`` hash, and the next worker's restore sweep returns them
after the visibility timeout (the ledger sweeper in ``worker.stores.ledger`` covers whatever kombu misses).

Selected with Celery's ``broker_transport`` setting (``worker.service.celery_app.celery_config``); the broker URL,
its ``rediss://`` TLS options and every transport option are read exactly as by the stock transport.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT_PATH = "worker.stores.broker:Transport"


class Channel(kombu_redis.Channel):
    """The stock Redis channel, except that a detached channel fails with a connection error."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection is already closed; unacked messages are restored after the visibility timeout"
            )
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(kombu_redis.Transport):
    """The stock Redis transport with :class:`Channel`."""

    Channel = Channel
