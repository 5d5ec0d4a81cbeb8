"""An ASGI middleware that refuses request bodies over a size limit with 413, without reading them.

A declared ``Content-Length`` over the limit is refused before the body is read; a chunked body is counted as
it arrives and refused once it passes the limit. It raises Starlette's ``HTTPException(413)`` from inside
``receive``: FastAPI re-raises HTTP exceptions met while reading a body, so the app's own handler renders it.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import body
from producers.errors import ErrorCode


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(send, self.max_bytes)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, _message(self.max_bytes))
            return message

        await self.app(scope, limited, send)


def _message(max_bytes: int) -> str:
    return f"request body over {max_bytes} bytes (api.max_body_bytes)"


async def _refuse(send: Send, max_bytes: int) -> None:
    payload = json.dumps(body(ErrorCode.TOO_LARGE, _message(max_bytes))).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),  # the unread body is still on the wire: this connection cannot be reused
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
