"""The one check that tenant ids and job ids stay inside their Redis key namespace (no ``:``, bounded length).

Its own module so that the client, the feedback store and the API share it without importing one another.
"""

from __future__ import annotations

import re

from pydantic import TypeAdapter, ValidationError

from producers.contract import JOB_ID_PATTERN, TenantId
from producers.errors import ErrorCode, PermanentError

_JOB_ID = re.compile(JOB_ID_PATTERN)
_TENANT = TypeAdapter(TenantId)


def validation_messages(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``field: message; …``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def check_ids(tenant: str, job_id: str | None = None, *, bad_job: ErrorCode = ErrorCode.INVALID_JOB) -> None:
    """Reject tenants/job ids that could step outside their key namespace (e.g. containing ``:``). ``bad_job``:
    the code for a malformed job id (a lookup says ``not-found``: no job can have that id)."""
    try:
        _TENANT.validate_python(tenant)
    except ValidationError as exc:
        raise PermanentError(ErrorCode.INVALID_JOB, f"invalid tenant {tenant!r}: {validation_messages(exc)}") from exc
    if job_id is not None and not _JOB_ID.match(job_id):
        raise PermanentError(bad_job, f"invalid job id {job_id!r}: expected 8-64 of [A-Za-z0-9_-]")
