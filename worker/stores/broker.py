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
its ``rediss://`` TLS options and every transport option are read exactly as by the stock transport. A Sentinel
URL selects :class:`SentinelTransport`, kombu's ``sentinel://`` transport with the same fix: its channel
builds its pool from ``_connparams`` too, so a detached Sentinel channel fails in the same way.

A Sentinel URL lists one ``sentinel://`` part per Sentinel, and kombu takes the parts for failover alternates:
after a failed connect it switches to the next part, and that switch re-reads the part's scheme as the transport,
so the stock ``sentinel`` transport (without the fix) would replace this one after the first failover.
:func:`sentinel_failover` is the Celery ``broker_failover_strategy`` that prevents it (see its docstring).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT_PATH = "worker.stores.broker:Transport"
SENTINEL_TRANSPORT_PATH = "worker.stores.broker:SentinelTransport"


def _detached_guard(channel: Any) -> None:
    if channel.connection is None or channel.connection.client is None:
        raise redis.exceptions.ConnectionError(
            "the broker connection is already closed; unacked messages are restored after the visibility timeout"
        )


class Channel(kombu_redis.Channel):
    """The stock Redis channel, except that a detached channel fails with a connection error."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        _detached_guard(self)
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(kombu_redis.Transport):
    """The stock Redis transport with :class:`Channel`."""

    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    """The stock Sentinel channel, except that a detached channel fails with a connection error. Its
    ``_sentinel_managed_pool`` also reads ``connection.client.alt`` (the Sentinel list): the guard runs first."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        _detached_guard(self)
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return params


class SentinelTransport(kombu_redis.SentinelTransport):
    """The stock Sentinel transport (default port 26379) with :class:`SentinelChannel`."""

    Channel = SentinelChannel


def sentinel_failover(alternates: list[str]) -> Iterator[str]:
    """kombu failover strategy for a Sentinel URL: "switch" to the first Sentinel's host name, for ever.

    The Sentinel channel asks every Sentinel in the URL for the primary on each connect, so moving from part to
    part gains nothing. A bare host name (no ``://``) makes kombu's ``Connection.switch`` keep the transport, port,
    credentials and database it was built with; a URL would swap in the stock transport.
    """
    return itertools.repeat(urlsplit(alternates[0]).hostname or "127.0.0.1")
