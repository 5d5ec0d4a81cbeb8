"""An ASGI middleware that refuses request bodies over a size limit with 413, without reading them.

A declared ``Content-Length`` over the limit is refused before the body is read; a chunked body is counted as
it arrives and refused once it passes the limit. It raises Starlette's ``HTTPException(413)`` from inside
``receive``: FastAPI re-raises HTTP exceptions met while reading a body, so the app's own handler renders it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import body
from producers.errors import ErrorCode


class BodyLimit:
    """``max_bytes`` for every path but those of ``paths`` (path -> (limit, the setting that sets it))."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: Mapping[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.paths.get(scope.get("path", ""), (self.max_bytes, "api.max_body_bytes"))
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(send, _message(limit, setting))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _message(limit, setting))
            return message

        await self.app(scope, limited, send)


def _message(max_bytes: int, setting: str) -> str:
    return f"request body over {max_bytes} bytes ({setting})"


async def _refuse(send: Send, message: str) -> None:
    payload = json.dumps(body(ErrorCode.TOO_LARGE, message)).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),  # the unread body is still on the wire: this connection cannot be reused
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
