"""Celery protocol-2 task messages, built by hand and pushed straight onto kombu's Redis lists.

Why by hand: ``Celery.send_task`` costs an app, a connection pool and ~100 µs of Python per message;
building the same JSON envelope here and ``LPUSH``-ing it in a Redis pipeline is ~20x cheaper and lets a
producer enqueue tens of thousands of jobs per second without importing Celery at all.

The envelope is what ``celery.app.amqp.AMQP.as_task_v2`` + ``kombu.transport.redis.Channel._put`` write
(kombu 5.x, Celery 5.x) less the headers and properties whose absence the consumer reads as the same
default (see :func:`build_message`), in compact JSON: ~890 bytes for a typical S3 job instead of ~1,410.
``tests/integration/test_wire_celery.py`` proves a real Celery worker accepts it. Facts the format depends on:

- kombu's Redis channel ``_put`` does ``LPUSH <queue> json(message)`` and the worker ``BRPOP``s, so the
  list is FIFO. A message with broker priority p > 0 would go to ``<queue>\\x06\\x16<p>``; we use two
  lanes (queues) instead of broker priorities, so priority is always 0 and the list is the queue name.
- The body is ``json([args, kwargs, embed])`` base64-encoded (``body_encoding: base64``, the virtual
  transport's default) with content type ``application/json`` and content encoding ``utf-8``.
- Publishing to a queue by name uses the default exchange ``""`` with the queue as routing key, so no
  ``_kombu.binding.*`` lookup is needed on our side.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from producers.contract import TASK_NAME, JobMessage, Priority, queue_name
from producers.redaction import redact_url

# Celery's limit (celery.app.amqp.AMQP.argsrepr_maxsize); ours is far shorter: argsrepr is for logs only.
ARGSREPR_MAXSIZE = 1024
ARGSREPR_SOURCE_MAX = 80
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
BODY_ENCODING = "base64"
_COMPACT = (",", ":")  # no spaces after separators: ~100 bytes less per queued message
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

_hostname = socket.gethostname()


class Pushable(Protocol):
    """What :func:`push` needs: a redis-py client or pipeline."""

    def lpush(self, name: str, *values: Any) -> Any: ...


def queue_key(priority: Priority | str) -> str:
    """The Redis list kombu's Redis transport consumes for a lane (broker priority 0 = the queue name)."""
    return queue_name(priority)


def origin() -> str:
    """Celery's ``anon_nodename()`` format; evaluated per call so a forked producer reports its own pid."""
    return f"gen{os.getpid()}@{_hostname}"


def _argsrepr(job: JobMessage) -> str:
    """A short stand-in for ``repr(args)``: it is for logs and monitors only (the job id is the task id), and
    the full repr would repeat the whole job in every queued message."""
    source = redact_url(job.source, limit=ARGSREPR_SOURCE_MAX)  # monitors show it: no presigned query
    return repr([source])


def build_message(job: JobMessage, *, sender: str | None = None) -> dict[str, Any]:
    """The kombu Redis envelope of a Celery protocol-2 message calling ``TASK_NAME(job_dict)``.

    ``task_id`` is the job id, so Celery's own logs, events and ``task.request.id`` name the job.

    Only what the consumer reads is sent (a queued job costs Redis memory for every byte). Celery's worker
    requires the ``id`` and ``task`` headers and reads every other header with a default that equals what
    ``send_task`` would have written (``celery.worker.request.Request``: ``retries`` 0, ``eta``/``expires``/
    ``group``/``parent_id``/``root_id`` None, ``timelimit`` none, ``ignore_result`` = the task's setting,
    ``stamps`` none); kombu's Redis channel needs ``delivery_tag`` (its unacked index), ``body_encoding``,
    ``delivery_info`` (restoring unacked messages) and reads ``priority`` with a default. ``correlation_id``,
    ``reply_to`` and ``delivery_mode`` matter only to RPC result backends and AMQP, which we do not use.
    """
    args = [job.model_dump(mode="json")]
    queue = queue_key(job.priority)
    body = json.dumps([args, {}, _EMBED], separators=_COMPACT).encode(CONTENT_ENCODING)
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": {
            "task": TASK_NAME,
            "id": job.job_id,
            "argsrepr": _argsrepr(job),
            "origin": sender or origin(),
        },
        "properties": {
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": BODY_ENCODING,
            "delivery_tag": uuid.uuid4().hex,
        },
    }


def encode_message(job: JobMessage, *, sender: str | None = None) -> bytes:
    """The bytes that go into the Redis list (kombu stores ``json.dumps(message)``)."""
    return json.dumps(build_message(job, sender=sender), separators=_COMPACT).encode(CONTENT_ENCODING)


def decode_message(raw: bytes | str) -> tuple[dict[str, Any], JobMessage]:
    """Inverse of :func:`encode_message` (for tests and tools): the envelope and the job it carries."""
    message: dict[str, Any] = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return message, JobMessage.model_validate(args[0])


def push(target: Pushable, jobs: Iterable[JobMessage]) -> int:
    """LPUSH each job onto its lane's list through ``target`` (use a pipeline for throughput)."""
    count = 0
    sender = origin()
    for job in jobs:
        target.lpush(queue_key(job.priority), encode_message(job, sender=sender))
        count += 1
    return count
