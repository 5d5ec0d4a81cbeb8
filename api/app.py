"""The FastAPI adapter: routes, authentication, error rendering, metrics. ``create_app(settings)``.

Why FastAPI on uvicorn: the wire contract is already pydantic v2 (``JobMessage``, ``JobResult``), so request
validation and response bodies reuse those models as they are, and the OpenAPI document (``/openapi.json``,
committed as ``docs/openapi.json``) comes from them for free. Routes are thin: each calls
:class:`api.service.ApiService` (synchronous Redis calls, run in FastAPI's thread pool) and every
``FakesakeError`` becomes ``{"error": {"code", "message"}}`` with the status of :mod:`api.errors`.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name locals.
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api import errors
from api.keys import StoredKey
from api.limits import BodyLimit
from api.metrics import Measure, Metrics
from api.models import (
    DetectorList,
    ErrorResponse,
    Feedback,
    FeedbackPage,
    JobPending,
    JobsAccepted,
    JobsPage,
    JobsRequest,
    UploadAccepted,
    UploadOptions,
)
from api.service import ApiService
from api.settings import ApiSettings
from api.uploads import Spool
from producers.contract import FeedbackRecord, JobResult, Status
from producers.errors import ErrorCode, FakesakeError, PermanentError

log = logging.getLogger(__name__)

VERSION = "1"
_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.TOO_LARGE,
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A body that cannot be parsed (not UTF-8, nested too deep)"},
    401: {"model": ErrorResponse, "description": "No API key, an unknown one, or a revoked one"},
    422: {"model": ErrorResponse, "description": "Invalid request (invalid-job, invalid-source, unknown-model)"},
    503: {"model": ErrorResponse, "description": "Redis unavailable (Retry-After)"},
}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_CONTENT = {
    "image/*": _BINARY,
    "application/octet-stream": _BINARY,
    "multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": {"file": _BINARY["schema"]}}
    },
}
_MULTIPART_SLACK_BYTES = 64 * 1024


async def _read_multipart(request: Request, spool: Spool) -> None:
    """The ``file`` part of a multipart body into ``spool`` (Starlette spools parts to disk past 1 MiB)."""
    form = await request.form(max_files=1, max_fields=16)
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise PermanentError(ErrorCode.INVALID_JOB, "multipart/form-data: send the image as a 'file' part")
        while chunk := await part.read(1 << 16):
            spool.write(chunk)
    finally:
        await form.close()


def _error_response(error: FakesakeError) -> JSONResponse:
    return JSONResponse(
        errors.body(error.code, error.message), status_code=errors.status_of(error), headers=errors.headers_of(error)
    )


def create_app(settings: ApiSettings | None = None, service: ApiService | None = None) -> FastAPI:
    """The ASGI app. ``service`` overrides the one built from ``settings`` (tests pass their own Redis)."""
    settings = settings or ApiSettings()
    svc = service or ApiService(settings)
    metrics = Metrics()
    app = FastAPI(
        title="fakesake",
        version=VERSION,
        description="Detect AI-generated images: submit image references, read verdicts. "
        "Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>` (`fakesake api-keys create`).",
    )
    bearer = HTTPBearer(auto_error=False)
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    def caller(
        creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        key: Annotated[str | None, Security(api_key_header)],
    ) -> StoredKey:
        return svc.authenticate(creds.credentials if creds is not None else key)

    Caller = Annotated[StoredKey, Depends(caller)]

    @app.exception_handler(FakesakeError)
    async def _fakesake(request: Request, exc: FakesakeError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        source_fields = {"source", "sources", "source_version"}
        code = ErrorCode.INVALID_SOURCE if any(source_fields & set(map(str, e.get("loc", ()))) for e in errs) else None
        message = errors.validation_message(errs)
        return JSONResponse(errors.body(code or ErrorCode.INVALID_JOB, message), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_JOB if exc.status_code < 500 else ErrorCode.INTERNAL)
        return JSONResponse(
            errors.body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse(errors.body(ErrorCode.INTERNAL, "internal error"), status_code=500)

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobsAccepted,
        responses={**_ERRORS, 413: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
        summary="Submit one image reference or several",
    )
    def submit(
        body: JobsRequest,
        who: Caller,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(alias="Idempotency-Key", description="Resending with the same key returns the same job ids"),
        ] = None,
    ) -> JobsAccepted:
        ids = svc.submit(who.tenant, body, idempotency_key)
        metrics.jobs.inc(len(ids))
        if len(ids) == 1:
            response.headers["Location"] = f"/v1/jobs/{ids[0]}"
        return JobsAccepted(job_ids=ids)

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobResult,
        responses={
            **_ERRORS,
            202: {"model": JobPending, "description": "Accepted, no final result yet (Retry-After)"},
            404: {"model": ErrorResponse, "description": "No such job for this tenant (or expired)"},
        },
        summary="A job's final result",
    )
    def get_job(job_id: str, who: Caller) -> Any:
        found = svc.lookup(who.tenant, job_id)
        if found.result is None:
            return JSONResponse(
                JobPending(job_id=job_id).model_dump(),
                status_code=202,
                headers={"Retry-After": str(settings.api.pending_retry_after_s)},
            )
        return found.result

    @app.post(
        "/v1/jobs/{job_id}/feedback",
        response_model=FeedbackRecord,
        responses={
            **_ERRORS,
            404: {"model": ErrorResponse, "description": "No such job for this tenant (or expired)"},
            409: {"model": ErrorResponse, "description": "not-finished: the job has no result yet (Retry-After)"},
        },
        summary="Tell what a finished job's image really is",
        description="Kept with the job's source, model and score (the latest label wins), for evaluation and "
        "fine-tuning: `fakesake feedback export` writes a tenant's feedback as an `eval --manifest`. A failed job "
        "has no score to label (422 invalid-job).",
    )
    def feedback(job_id: str, body: Feedback, who: Caller) -> FeedbackRecord:
        return svc.feedback(who.tenant, job_id, body)

    @app.get(
        "/v1/jobs/{job_id}/feedback",
        response_model=FeedbackRecord,
        responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No feedback for this job"}},
        summary="The feedback given for a job",
    )
    def job_feedback(job_id: str, who: Caller) -> FeedbackRecord:
        return svc.job_feedback(who.tenant, job_id)

    @app.get("/v1/feedback", response_model=FeedbackPage, responses=_ERRORS, summary="The tenant's feedback")
    def list_feedback(
        who: Caller,
        since: Annotated[datetime | None, Query(description="Feedback given at or after (ISO 8601)")] = None,
        cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=settings.api.page_max)] = 100,
    ) -> FeedbackPage:
        records, next_cursor, more = svc.feedback_page(who.tenant, since=since, cursor=cursor, limit=limit)
        return FeedbackPage(feedback=records, next_cursor=next_cursor, has_more=more)

    @app.get("/v1/jobs", response_model=JobsPage, responses=_ERRORS, summary="The tenant's final results")
    def list_jobs(
        who: Caller,
        since: Annotated[datetime | None, Query(description="Results finished at or after (ISO 8601)")] = None,
        cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
        status: Annotated[Status | None, Query(description="Only ok or only error results")] = None,
        limit: Annotated[int, Query(ge=1, le=settings.api.page_max)] = 100,
    ) -> JobsPage:
        results, next_cursor, more = svc.page(who.tenant, since=since, cursor=cursor, status=status, limit=limit)
        return JobsPage(results=results, next_cursor=next_cursor, has_more=more)

    @app.post(
        "/v1/uploads",
        status_code=202,
        response_model=UploadAccepted,
        responses={
            **_ERRORS,
            404: {"model": ErrorResponse, "description": "Direct upload is off on this server"},
            413: {"model": ErrorResponse, "description": "Over api.upload_max_bytes"},
            415: {"model": ErrorResponse, "description": "not-an-image: the bytes are no image type workers decode"},
            429: {"model": ErrorResponse},
        },
        summary="Upload an image (raw body or multipart 'file') and classify it",
        description="For clients without storage of their own: the image is stored in the server's upload bucket "
        "(`<prefix>/<tenant>/yyyy/mm/dd/<uuid>.<ext>`) and enqueued as an `s3://` job. Off unless the server sets "
        "`FAKESAKE_API__UPLOAD_BUCKET`. The type is judged by the bytes (JPEG, PNG, GIF, WebP, TIFF, BMP).",
        openapi_extra={"requestBody": {"required": True, "content": _UPLOAD_CONTENT}},
    )
    async def upload(
        request: Request,
        who: Caller,
        response: Response,
        options: Annotated[UploadOptions, Query()],
        idempotency_key: Annotated[
            str | None,
            Header(alias="Idempotency-Key", description="Resending with the same key returns the same job id"),
        ] = None,
    ) -> UploadAccepted:
        svc.check_uploads()
        with Spool(settings.api.upload_max_bytes) as spool:
            if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
                await _read_multipart(request, spool)
            else:
                async for chunk in request.stream():
                    spool.write(chunk)
            job_id, source = await run_in_threadpool(svc.upload, who.tenant, spool, options, idempotency_key)
        metrics.jobs.inc()
        response.headers["Location"] = f"/v1/jobs/{job_id}"
        return UploadAccepted(job_id=job_id, source=source)

    @app.get(
        "/v1/detectors",
        response_model=DetectorList,
        responses=_ERRORS,
        summary="The known detectors, and what live workers serve",
        description="Built-in detectors and those of the workers' detectors file (`FAKESAKE_MODEL__DETECTORS_FILE`), "
        "each with the number of live workers serving it, and the detector sets live workers advertise: an "
        "ensemble (`model=a,b`) is accepted when one set holds all of its detectors.",
    )
    def detectors(who: Caller) -> DetectorList:
        return svc.detectors()

    @app.get("/healthz", summary="Redis reachable", responses={503: {"model": ErrorResponse}})
    def healthz() -> dict[str, str]:
        svc.ping()
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Multipart framing is not image bytes: the body may exceed the image limit by a little (the spool is exact).
    upload_limit = (settings.api.upload_max_bytes + _MULTIPART_SLACK_BYTES, "api.upload_max_bytes")
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes, paths={"/v1/uploads": upload_limit})
    app.add_middleware(Measure, metrics=metrics)
    app.state.service = svc
    return app
