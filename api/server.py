"""``fakesake api``: serve :func:`api.app.create_app` with uvicorn."""

from __future__ import annotations

import logging

from api.settings import ApiSettings

log = logging.getLogger(__name__)


def serve(settings: ApiSettings) -> int:
    """Run until SIGINT/SIGTERM (uvicorn finishes in-flight requests first)."""
    import uvicorn

    if settings.api.workers > 1:
        # uvicorn's worker processes import the app by name; each builds its own settings from the environment.
        uvicorn.run(
            "api.server:app_from_env",
            factory=True,
            host=settings.api.host,
            port=settings.api.port,
            workers=settings.api.workers,
            proxy_headers=True,
            log_config=None,
        )
        return 0
    from api.app import create_app

    log.info("fakesake api listening on http://%s:%d", settings.api.host, settings.api.port)
    uvicorn.run(
        create_app(settings), host=settings.api.host, port=settings.api.port, proxy_headers=True, log_config=None
    )
    return 0


def app_from_env() -> object:
    """The app built from ``FAKESAKE_*`` variables (uvicorn's factory for worker processes)."""
    from api.app import create_app

    return create_app(ApiSettings())
