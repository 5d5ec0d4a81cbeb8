"""Celery protocol-2 task messages, built by hand and pushed straight onto kombu's Redis lists.

Why by hand: ``Celery.send_task`` costs an app, a connection pool and ~100 µs of Python per message;
building the same JSON envelope here and ``LPUSH``-ing it in a Redis pipeline is ~20x cheaper and lets a
producer enqueue tens of thousands of jobs per second without importing Celery at all.

The envelope is what ``celery.app.amqp.AMQP.as_task_v2`` + ``kombu.transport.redis.Channel._put`` write
(kombu 5.x, Celery 5.x) less everything the consumer reads as the same default (see :func:`build_message`),
in compact JSON. Byte budget (≤ 1 KiB of Redis memory per queued job, lane + ledger): for a job
with a 49-char S3 source the message is 556 bytes (send_task's ~1,410; ours was ~900 with a base64 body and
null fields) and the ledger keeps only the job's fields (:func:`encode`, 117 bytes), not a second copy of
the message. Measured in Redis 7 (used_memory per job, 20,000 jobs): lane 590 B, ledger hash 229 B, ledger
seen zset 154 B; ``python -m bench --only producer`` measures the total (974 B; 2,192 B before).
``tests/integration/test_wire_celery.py`` proves a real Celery worker accepts it. Facts the format depends on:

- kombu's Redis channel ``_put`` does ``LPUSH <queue> json(message)`` and the worker ``BRPOP``s, so the
  list is FIFO. A message with broker priority p > 0 would go to ``<queue>\\x06\\x16<p>``; we use two
  lanes (queues) instead of broker priorities, so priority is always 0 and the list is the queue name.
- The body is the JSON text ``[args, kwargs, embed]`` as a plain string, content type ``application/json``:
  kombu's virtual ``Message`` decodes a body only when ``properties.body_encoding`` names a codec
  (``Channel.decode_body``), then utf-8-encodes a str body (``postencode``) and Celery ``loads`` it as JSON.
  No ``body_encoding`` saves base64's third; kombu's restore of unacked messages re-pushes the raw payload
  it stored, so restored messages are the same JSON. Older producers' base64 bodies still decode here.
- Publishing to a queue by name uses the default exchange ``""`` with the queue as routing key, so no
  ``_kombu.binding.*`` lookup is needed on our side.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterable
from typing import Any, Protocol

from producers.contract import (
    DEFAULT_MODEL,
    TASK_NAME,
    WEBHOOK_TASK_NAME,
    JobMessage,
    JobResult,
    Priority,
    detector_set,
    queue_name,
    side_lane,
)
from producers.redaction import redact_url

# Celery's limit (celery.app.amqp.AMQP.argsrepr_maxsize); ours is far shorter: argsrepr is for logs only.
ARGSREPR_MAXSIZE = 1024
ARGSREPR_SOURCE_MAX = 80
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
_COMPACT = (",", ":")  # no spaces after separators: ~100 bytes less per queued message
_ENCODER = json.JSONEncoder(separators=_COMPACT)  # json.dumps(separators=...) would build one per call
# JobMessage fields the worker's model fills with the same default when absent (None fields are dropped
# too). ``model`` and ``priority`` stay explicit: a worker with other defaults must not re-route a job.
_DEFAULTED_FIELDS = {"schema_version"}
#: The job fields every job has, stored by position in a ledger value (:func:`encode`): naming them in each
#: of a million queued jobs would cost ~50 bytes apiece.
LEDGER_FIELDS = ("tenant", "source", "model", "priority", "submitted_at")
_TAG_BYTES = 12  # delivery tags: 96 random bits (16 characters) only need to be unique among unacked messages


class Pushable(Protocol):
    """What :func:`push` needs: a redis-py client or pipeline."""

    def lpush(self, name: str, *values: Any) -> Any: ...


def queue_key(priority: Priority | str, model: str = DEFAULT_MODEL) -> str:
    """The Redis list kombu's Redis transport consumes for a lane (broker priority 0 = the queue name): one per
    priority and detector set (``model``, comma-separated names)."""
    return queue_name(priority, detector_set(model))


def lane_of(job: JobMessage) -> str:
    """The lane ``job`` is pushed to: its priority's, for its set of detectors."""
    return queue_name(job.priority, job.detectors)


def job_fields(job: JobMessage) -> dict[str, Any]:
    """The job as it travels (JSON types): without None fields and ``schema_version``, which the worker's
    :class:`JobMessage` fills with the same values; ``job_id``, then :data:`LEDGER_FIELDS`, then the rest."""
    fields = job.model_dump(mode="json", exclude_none=True, exclude=_DEFAULTED_FIELDS)
    return {"job_id": fields.pop("job_id"), **{name: fields.pop(name) for name in LEDGER_FIELDS}, **fields}


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _argsrepr(source: str) -> str:
    """A short stand-in for ``repr(args)``: it is for logs and monitors only (the job id is the task id), and
    the full repr would repeat the whole job in every queued message. It must not be empty: Celery logs
    ``argsrepr or repr(args)`` (celery.app.trace), which would show a presigned URL's signature."""
    return repr([redact_url(source, limit=ARGSREPR_SOURCE_MAX)])  # monitors show it: no presigned query


def _envelope(job_id: str, source: str, lane: str, job_text: str, task: str = TASK_NAME) -> dict[str, Any]:
    """The kombu Redis envelope around the job's JSON text (see :func:`build_message`); ``job_text`` is the
    task's positional arguments, comma-separated."""
    return {
        "body": f"[[{job_text}],{{}},{{}}]",
        "content-type": CONTENT_TYPE,
        "headers": {"task": task, "id": job_id, "argsrepr": _argsrepr(source)},
        "properties": {
            "delivery_info": {"exchange": "", "routing_key": lane},
            "delivery_tag": secrets.token_urlsafe(_TAG_BYTES),
        },
    }


def build_message(job: JobMessage) -> dict[str, Any]:
    """The kombu Redis envelope of a Celery protocol-2 message calling ``TASK_NAME(job_fields(job))``.

    ``task_id`` is the job id, so Celery's own logs, events and ``task.request.id`` name the job.

    Only what the consumer reads is sent (a queued job costs Redis memory for every byte), each omission
    checked against Celery 5.7 / kombu 5.7:

    - headers: Celery's worker requires ``id`` and ``task`` and reads every other header with a default that
      equals what ``send_task`` would have written for our jobs (``celery.worker.request.Request``:
      ``retries`` 0, ``eta``/``expires``/``group``/``parent_id``/``root_id``/``origin`` None, ``timelimit``
      none, ``ignore_result`` = the task's setting, ``stamps`` none). ``argsrepr`` is kept (see
      :func:`_argsrepr`).
    - body: ``[[job], {}, {}]``: Celery reads ``callbacks``/``errbacks``/``chain``/``chord`` from the embed
      with ``.get`` (``Request.chord``/``errbacks``; ``trace_task`` updates a ``Context`` whose class
      defaults are None), so ``{}`` equals the four explicit nulls.
    - ``content-encoding``: kombu's ``loads`` reads a missing one as utf-8.
    - properties: kombu's Redis channel needs ``delivery_tag`` (its unacked index) and ``delivery_info``
      with ``exchange`` and ``routing_key`` (``QoS.append`` indexes both to restore unacked messages);
      ``priority`` is read with a fallback to ``default_priority`` 0 (``Channel._get_message_priority``)
      and Celery's ``retry`` only copies a non-None one; no ``body_encoding`` means a plain-text body.
      ``correlation_id``, ``reply_to`` and ``delivery_mode`` matter only to RPC result backends and AMQP.
    """
    return _envelope(job.job_id, job.source, lane_of(job), _dumps(job_fields(job)))


def encode_message(job: JobMessage) -> bytes:
    """The bytes that go into the Redis list (kombu stores ``json.dumps(message)``)."""
    return _dumps(build_message(job)).encode(CONTENT_ENCODING)


def encode(job: JobMessage) -> tuple[bytes, str]:
    """One job's queued message and its ledger value, from one dump.

    The ledger value is the job's fields less ``job_id`` (the ledger field's name), compact: the JSON array of
    the :data:`LEDGER_FIELDS` values, plus an object of any other fields when there are any (e.g.
    ``["acme","s3://b/k.jpg","ffs-mj-5m","bulk","2024-05-01T10:00:00Z",{"idempotency_key":"k1"}]``).
    :func:`message_from_ledger` rebuilds the same message from it."""
    fields = job_fields(job)
    message = _envelope(job.job_id, job.source, lane_of(job), _dumps(fields))
    del fields["job_id"]
    values: list[Any] = [fields.pop(name) for name in LEDGER_FIELDS]
    return _dumps(message).encode(CONTENT_ENCODING), _dumps([*values, fields] if fields else values)


def _job_text(job_id: str, values: list[Any], rest: dict[str, Any]) -> str:
    """The job's JSON text from its ledger value: the same text as ``job_fields`` dumped (:func:`encode`),
    field order included, so a rebuilt message equals the first one."""
    return _dumps({"job_id": job_id, **dict(zip(LEDGER_FIELDS, values, strict=True)), **rest})


def message_from_ledger(job_id: str, stored: str | bytes) -> tuple[str, str, bytes]:
    """Lane, tenant and queued message of a job from its ledger value (:func:`encode`). The message equals
    the one first pushed but for a fresh delivery tag. Raises ``ValueError`` on a value that is not one."""
    parsed = json.loads(stored)
    n = len(LEDGER_FIELDS)
    if not (isinstance(parsed, list) and n <= len(parsed) <= n + 1):
        raise ValueError(f"ledger value of job {job_id} is not a job's fields: {stored[:200]!r}")
    values, rest = parsed[:n], parsed[n] if len(parsed) > n else {}
    if not all(isinstance(v, str) for v in values) or not isinstance(rest, dict):
        raise ValueError(f"ledger value of job {job_id} is not a job's fields: {stored[:200]!r}")
    tenant, source, model, priority = values[:4]
    lane = queue_key(priority, model)  # ValueError for an unknown lane
    message = _envelope(job_id, source, lane, _job_text(job_id, values, rest))
    return lane, tenant, _dumps(message).encode(CONTENT_ENCODING)


def encode_webhook_message(
    result: JobResult, url: str, task_id: str, priority: Priority | str = Priority.INTERACTIVE
) -> tuple[str, bytes]:
    """Side lane and queued message of ``WEBHOOK_TASK_NAME(result, url)``: what the worker's
    ``deliver_webhook.apply_async`` sends after a job finishes, built like :func:`build_message` (its task id
    is ``task_id``, not the job id: a job's webhook may be sent more than once). ``argsrepr`` shows the URL
    redacted: a callback's query often carries the receiver's token."""
    lane = side_lane(queue_key(priority))  # a follow-up, like the worker's own (producers.contract.side_lane)
    args = f"{_dumps(result.model_dump(mode='json'))},{_dumps(url)}"
    message = _envelope(task_id, url, lane, args, task=WEBHOOK_TASK_NAME)
    return lane, _dumps(message).encode(CONTENT_ENCODING)


def task_arguments(message: dict[str, Any]) -> tuple[Any, Any]:
    """A protocol-2 envelope's task ``args`` and ``kwargs``, as the worker decodes them: the body is JSON text, or
    base64 of it when ``properties.body_encoding`` says so (older producers; Celery's own publishes). Raises
    what a malformed envelope raises (KeyError, ValueError, TypeError)."""
    body: str | bytes = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    return args, kwargs


def decode_message(raw: bytes | str) -> tuple[dict[str, Any], JobMessage]:
    """Inverse of :func:`encode_message` (for tests and tools): the envelope and the job it carries. Reads
    base64 bodies (``properties.body_encoding``) too, as older producers wrote them."""
    message: dict[str, Any] = json.loads(raw)
    args, _kwargs = task_arguments(message)
    return message, JobMessage.model_validate(args[0])


def push(target: Pushable, jobs: Iterable[JobMessage]) -> int:
    """LPUSH each job onto its lane's list through ``target`` (use a pipeline for throughput)."""
    count = 0
    for job in jobs:
        target.lpush(lane_of(job), encode_message(job))
        count += 1
    return count
