"""The FastAPI adapter: routes, authentication, error rendering, metrics. ``create_app(settings)``.

Why FastAPI on uvicorn: the wire contract is already pydantic v2 (``JobMessage``, ``JobResult``), so request
validation and response bodies reuse those models as they are, and the OpenAPI document (``/openapi.json``,
committed as ``docs/openapi.json``) comes from them for free. Routes are thin: each calls
:class:`api.service.ApiService` (synchronous Redis calls, run in FastAPI's thread pool) and every
``FakesakeError`` becomes ``{"error": {"code", "message"}}`` with the status of :mod:`api.errors`.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name locals.
import logging
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.keys import StoredKey
from api.limits import BodyLimit
from api.models import (
    DetectorList,
    ErrorResponse,
    Feedback,
    FeedbackRecord,
    JobPending,
    JobsAccepted,
    JobsPage,
    JobsRequest,
)
from api.service import ApiService
from api.settings import ApiSettings
from producers.contract import JobResult, Status
from producers.errors import ErrorCode, FakesakeError

log = logging.getLogger(__name__)

VERSION = "1"
_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.TOO_LARGE,
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No API key, an unknown one, or a revoked one"},
    422: {"model": ErrorResponse, "description": "Invalid request (invalid-job, invalid-source, unknown-model)"},
    503: {"model": ErrorResponse, "description": "Redis unavailable (Retry-After)"},
}


class Metrics:
    """Request counts and latencies per route template, in the app's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fakesake_api_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "fakesake_api_request_seconds", "Time to answer a request", ["route"], registry=self.registry
        )
        self.jobs = Counter("fakesake_api_jobs_accepted", "Jobs accepted over HTTP", registry=self.registry)


class _Measure:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer and re-wrap bodies)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


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
        responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No such job for this tenant"}},
        summary="Tell what a finished job's image really is",
    )
    def feedback(job_id: str, body: Feedback, who: Caller) -> FeedbackRecord:
        return svc.feedback(who.tenant, job_id, body)

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

    @app.get("/v1/detectors", response_model=DetectorList, responses=_ERRORS, summary="The known detectors")
    def detectors(who: Caller) -> DetectorList:
        return DetectorList(detectors=svc.detectors())

    @app.get("/healthz", summary="Redis reachable", responses={503: {"model": ErrorResponse}})
    def healthz() -> dict[str, str]:
        svc.ping()
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(_Measure, metrics=metrics)
    app.state.service = svc
    return app
