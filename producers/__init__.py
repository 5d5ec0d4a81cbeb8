"""fakesake producers: enqueue image references, read verdicts. Importable without torch."""

from producers.contract import Band, JobMessage, JobResult, Label, Priority, Status
from producers.errors import ErrorCode, FakesakeError, PermanentError, TransientError

__all__ = [
    "Band",
    "ErrorCode",
    "FakesakeError",
    "JobMessage",
    "JobResult",
    "Label",
    "PermanentError",
    "Priority",
    "Status",
    "TransientError",
]
