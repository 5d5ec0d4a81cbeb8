"""Celery protocol-2 task messages, built by hand and pushed straight onto kombu's Redis lists.

Why by hand: ``Celery.send_task`` costs an app, a connection pool and ~100 µs of Python per message;
building the same JSON envelope here and ``LPUSH``-ing it in a Redis pipeline is ~20x cheaper and lets a
producer enqueue tens of thousands of jobs per second without importing Celery at all.

The envelope is exactly what ``celery.app.amqp.AMQP.as_task_v2`` + ``kombu.transport.redis.Channel._put``
write (kombu 5.x, Celery 5.x); ``tests/integration/test_wire_celery.py`` proves a real Celery worker
accepts it. Facts the format depends on:

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

# Celery's defaults (celery.app.amqp.AMQP.argsrepr_maxsize): argsrepr is for logs and monitors only.
ARGSREPR_MAXSIZE = 1024
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
BODY_ENCODING = "base64"
DELIVERY_MODE_PERSISTENT = 2
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
    """A short stand-in for ``repr(args)``: it is for logs and monitors only, and the full repr would
    repeat the whole job in every queued message (~25% more Redis memory per job)."""
    source = job.source if len(job.source) <= 200 else job.source[:197] + "..."
    text = repr([{"tenant": job.tenant, "source": source, "model": job.model}])
    return text if len(text) <= ARGSREPR_MAXSIZE else text[: ARGSREPR_MAXSIZE - 3] + "..."


def build_message(job: JobMessage, *, sender: str | None = None) -> dict[str, Any]:
    """The kombu Redis envelope of a Celery protocol-2 message calling ``TASK_NAME(job_dict)``.

    ``task_id`` (and ``root_id``/``correlation_id``) is the job id, so Celery's own logs, events and
    ``task.request.id`` name the job.
    """
    args = [job.model_dump(mode="json")]
    queue = queue_key(job.priority)
    body = json.dumps([args, {}, _EMBED]).encode(CONTENT_ENCODING)
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": job.job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": job.job_id,
            "parent_id": None,
            "argsrepr": _argsrepr(job),
            "kwargsrepr": "{}",
            "origin": sender or origin(),
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": job.job_id,
            "reply_to": "",
            "delivery_mode": DELIVERY_MODE_PERSISTENT,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": BODY_ENCODING,
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def encode_message(job: JobMessage, *, sender: str | None = None) -> bytes:
    """The bytes that go into the Redis list (kombu stores ``json.dumps(message)``)."""
    return json.dumps(build_message(job, sender=sender)).encode(CONTENT_ENCODING)


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
