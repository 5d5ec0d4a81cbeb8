"""The API's request and response bodies. Job results are ``producers.contract.JobResult`` as stored: the
wire contract is already pydantic, so the HTTP answers and the OpenAPI schema come from the same models."""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from producers.contract import FeedbackRecord, JobResult, Label, Priority

#: What an ``Idempotency-Key`` header may be: printable ASCII without spaces; the API appends ``#<n>`` per source.
IDEMPOTENCY_KEY: Final = re.compile(r"^[\x21-\x7e]{1,200}$")


#: A source given as a bare string: the same bounds as ``SourceRef.source`` (checked here, at validation, so a bad
#: one is a 422 and never an error while the request is handled).
SourceText = Annotated[str, Field(min_length=1, max_length=4096)]


class SourceRef(BaseModel):
    """One image reference with its options."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=4096, description="s3://bucket/key[?versionId=V] or https:// URL")
    source_version: str | None = Field(default=None, max_length=1024, description="S3 object version id")


class JobsRequest(BaseModel):
    """``POST /v1/jobs``: one ``source`` or a list of ``sources``, and options for all of them."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(default=None, min_length=1, max_length=4096, description="One image reference")
    source_version: str | None = Field(default=None, max_length=1024, description="S3 version of ``source``")
    sources: list[SourceText | SourceRef] | None = Field(
        default=None, min_length=1, description="Several image references"
    )
    priority: Priority = Field(default=Priority.INTERACTIVE, description="Lane: interactive or bulk")
    model: str | None = Field(
        default=None,
        max_length=256,
        description="Detector name (GET /v1/detectors), or several comma-separated for an ensemble",
    )
    callback_url: str | None = Field(default=None, max_length=4096, description="Signed webhook per final result")
    queue_anyway: bool = Field(
        default=False, description="Queue even when no live worker serves the detectors (409 unserved-model otherwise)"
    )

    @model_validator(mode="after")
    def _one_of(self) -> JobsRequest:
        if (self.source is None) == (self.sources is None):
            raise ValueError("give exactly one of source and sources")
        if self.sources is not None and self.source_version is not None:
            raise ValueError("source_version goes with source; give each of sources its own")
        return self

    def refs(self) -> list[SourceRef]:
        if self.source is not None:
            return [SourceRef(source=self.source, source_version=self.source_version)]
        return [s if isinstance(s, SourceRef) else SourceRef(source=s) for s in self.sources or ()]


class UploadOptions(BaseModel):
    """``POST /v1/uploads`` query parameters: the job options of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    priority: Priority = Field(default=Priority.INTERACTIVE, description="Lane: interactive or bulk")
    model: str | None = Field(
        default=None,
        max_length=256,
        description="Detector name (GET /v1/detectors), or several comma-separated for an ensemble",
    )
    callback_url: str | None = Field(default=None, max_length=4096, description="Signed webhook of the result")
    queue_anyway: bool = Field(
        default=False, description="Queue even when no live worker serves the detectors (409 unserved-model otherwise)"
    )


class UploadAccepted(BaseModel):
    """``202`` to ``POST /v1/uploads``: the job, and where the image was stored (``source`` null when a known
    ``Idempotency-Key`` returned an earlier job)."""

    job_id: str
    source: str | None


class JobsAccepted(BaseModel):
    """``202`` to ``POST /v1/jobs``: job ids in the order of the sources (an earlier id for a known
    ``Idempotency-Key``)."""

    job_ids: list[str]


class JobPending(BaseModel):
    """``202`` to ``GET /v1/jobs/{id}``: accepted, no final result yet."""

    job_id: str
    status: str = "pending"


class JobsPage(BaseModel):
    """One page of final results, oldest first. ``next_cursor`` continues after this page (also at the end:
    poll with it for results that finish later); ``has_more``: more results are there now."""

    results: list[JobResult]
    next_cursor: str | None
    has_more: bool


class Feedback(BaseModel):
    """``POST /v1/jobs/{id}/feedback``: what the image really is, as the tenant learned it (a reviewer, a
    chargeback). Kept next to the job's score and model: labelled data for calibration and evaluation."""

    model_config = ConfigDict(extra="forbid")

    label: Label = Field(description="ai or human")
    note: str | None = Field(default=None, max_length=1000, description="Free text, e.g. the reviewer's reason")


class FeedbackPage(BaseModel):
    """One page of a tenant's feedback, oldest label first; ``next_cursor`` and ``has_more`` as for
    ``JobsPage`` (a job labelled again moves to the end)."""

    feedback: list[FeedbackRecord]
    next_cursor: str | None
    has_more: bool


class Detector(BaseModel):
    """A detector the API knows: built in, or declared in the workers' detectors file."""

    name: str
    version: str
    ref: str = Field(description="name@version, as results name their model")
    description: str
    input_size_px: int
    default: bool = Field(description="What jobs naming no model are scored by")
    source: Literal["built-in", "configured"] = Field(
        description="built-in: the registry; configured: the detectors file (FAKESAKE_MODEL__DETECTORS_FILE)"
    )
    served: bool = Field(description="A live worker serves it now: jobs naming it are accepted")
    workers: int = Field(ge=0, description="Live worker processes that serve it (each process advertises itself)")


class ServedSet(BaseModel):
    """What a group of live workers serves: each of these detectors, and any ensemble of them (up to all)."""

    detectors: list[str] = Field(description="Detector names, sorted")
    workers: int = Field(ge=1, description="Live worker processes that advertise exactly this set")


class DetectorList(BaseModel):
    """``GET /v1/detectors``: the known detectors, and what live workers serve now (from their adverts, refreshed
    every heartbeat). An ensemble is accepted when one set of ``served`` holds all of its detectors."""

    detectors: list[Detector]
    served: list[ServedSet] = Field(
        description="The detector sets live workers advertise, largest first. Names the API does not know (a "
        "worker's entry-point detectors) appear only here"
    )


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error: ``{"error": {"code": ..., "message": ...}}`` with codes of ``producers.errors.ErrorCode``."""

    error: ErrorBody
