"""What a bulk intake reads from one queued message: pure, no Redis.

A bulk intake (``worker.service.intake``) takes many messages of a lane in one Redis script
(``worker.stores.intake``), which already sent everything but plain classify jobs that can run now to the side
lane, where Celery's own consumer handles it. :func:`parse_delivery` turns such a message (the Celery protocol-2
envelope ``producers.wire`` writes, or the one Celery itself writes) into the job's fields; a message it cannot
read raises ``ValueError`` and is handed to Celery too, which dead-letters what it refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from producers.wire import task_arguments


@dataclass(frozen=True)
class Delivery:
    """One classify message taken from ``lane``: the job's fields as queued (validated later, like the Celery
    task does), the rate-limit slots a retried job already holds, and what acking or returning it needs."""

    lane: str
    tag: str  # kombu's delivery tag: the message's key in the unacked hash
    task_id: str
    payload: Any
    reserved: frozenset[str]
    raw: bytes  # the message exactly as queued, for putting it back


class UnreadableMessage(ValueError):
    """A message that is not a readable classify job; ``tag`` is its delivery tag when it has one."""

    def __init__(self, reason: str, tag: str | None) -> None:
        super().__init__(reason)
        self.tag = tag


def delivery_tag(raw: bytes) -> str | None:
    """The kombu delivery tag of a queued message, or None when it has none (or is no message at all)."""
    try:
        tag = json.loads(raw)["properties"]["delivery_tag"]
    except (ValueError, KeyError, TypeError):
        return None
    return tag if isinstance(tag, str) else None


def parse_delivery(lane: str, raw: bytes) -> Delivery:
    """The delivery in ``raw``; :class:`UnreadableMessage` when it is not a Celery protocol-2 classify message."""
    try:
        message = json.loads(raw)
        properties, headers = message["properties"], message["headers"]
        args, kwargs = task_arguments(message)
        payload = args[0]
        reserved = kwargs.get("rate_reserved") or ()
        tag, task_id = properties["delivery_tag"], headers["id"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UnreadableMessage(f"not a classify message: {type(exc).__name__}: {exc}", delivery_tag(raw)) from exc
    if not isinstance(tag, str) or not isinstance(task_id, str) or not isinstance(reserved, list | tuple):
        reason = "not a classify message: delivery tag, task id or rate_reserved of the wrong type"
        raise UnreadableMessage(reason, tag if isinstance(tag, str) else None)
    return Delivery(lane, tag, task_id, payload, frozenset(str(r) for r in reserved), raw)
