"""Logging set-up: plain or JSON lines, with the current job id and tenant on every line about a job.

The job context lives in contextvars set by the worker around each job (``job_context``), so library code
just calls ``log.info("...%s", x)`` and still gets job id and tenant stamped on the record.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("fakesake_job_id", default=None)
_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("fakesake_tenant", default=None)


@contextlib.contextmanager
def job_context(job_id: str | None, tenant: str | None) -> Iterator[None]:
    """Stamp ``job_id`` and ``tenant`` on every log record emitted inside the block (this thread/task)."""
    t1, t2 = _job_id.set(job_id), _tenant.set(tenant)
    try:
        yield
    finally:
        _job_id.reset(t1)
        _tenant.reset(t2)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = _job_id.get() or "-"
        record.tenant = _tenant.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; exceptions as a ``exc`` string."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "job_id": getattr(record, "job_id", "-"),
            "tenant": getattr(record, "tenant", "-"),
            "process": record.process,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s tenant=%(tenant)s] %(message)s"


def setup_logging(level: str | None = None, json_format: bool | None = None) -> None:
    """Configure the root logger once per process (stderr). Env: FAKESAKE_LOG__LEVEL, FAKESAKE_LOG__JSON_FORMAT."""
    level = level or os.environ.get("FAKESAKE_LOG__LEVEL", "INFO")
    if json_format is None:
        json_format = os.environ.get("FAKESAKE_LOG__JSON_FORMAT", "").lower() in ("1", "true", "yes")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_fakesake", False):
            root.removeHandler(old)
    handler._fakesake = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter that would drown job lines at INFO.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # The hub client logs every retry of an unreachable hub; the loader reports the outcome in one line.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    # At DEBUG Celery's pool logs every task's full arguments: presigned URL signatures and callback URLs.
    logging.getLogger("celery.pool").setLevel(max(logging.INFO, root.level))
