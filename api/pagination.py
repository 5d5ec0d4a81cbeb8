"""Cursors over a tenant's results index (a sorted set scored by ``finished_at``, epoch seconds). Pure.

Pages run oldest first from ``since``. A cursor is the position of the last entry a page looked at — its
score and job id — because entries that share a score are ordered by job id: resuming strictly after
``(score, job id)`` neither repeats nor skips an entry, whatever was added meanwhile.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime

from producers.errors import ErrorCode, PermanentError


@dataclass(frozen=True, order=True)
class Position:
    score: float
    job_id: str

    def after(self, score: float, job_id: str) -> bool:
        """Whether the index entry ``(score, job_id)`` comes after this position."""
        return (score, job_id) > (self.score, self.job_id)


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(f"{position.score!r}|{position.job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; ``invalid-job`` for anything this module did not write."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, job_id = raw.partition("|")
        position = Position(float(score), job_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise PermanentError(ErrorCode.INVALID_JOB, "invalid cursor: pass next_cursor as it was returned") from exc
    if position.score != position.score:  # NaN
        raise PermanentError(ErrorCode.INVALID_JOB, "invalid cursor: pass next_cursor as it was returned")
    return position


def start(since: datetime | None, cursor: str | None) -> Position:
    """Where a listing starts: after the cursor if one is given, else at ``since`` (inclusive), else at the
    oldest entry."""
    if cursor is not None:
        return decode_cursor(cursor)
    if since is None:
        return Position(float("-inf"), "")
    if since.tzinfo is None:  # results are stamped in UTC; a naive time is read as UTC, not as the server's zone
        since = since.replace(tzinfo=UTC)
    return Position(since.timestamp(), "")
