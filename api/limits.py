"""Request body caps, enforced before a route reads the body.

File uploads (`POST /v1/files`, `PUT /v1/uploads/{id}/parts/{n}`) stream into storage and are
capped there (api.uploads); every other request body (JSON: a merge request, an upload's
creation) is capped at `settings.max_json_body_bytes`: a declared Content-Length over it is
answered 413 at once, and a body without one is cut off as it passes the cap.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

STREAMED = (
    ("POST", re.compile(r"^/v1/files/?$")),
    ("PUT", re.compile(r"^/v1/uploads/[^/]+/parts/[^/]+/?$")),
)


def _too_large(limit: int) -> str:
    return f"the request body is over {limit} bytes; send less (file bytes go to /v1/files or /v1/uploads)"


class BodyLimit:
    """Pure ASGI middleware: 413 request_too_large for non-upload bodies over `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(
            scope["method"] == m and p.match(scope["path"]) for m, p in STREAMED
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and (len(length) > 18 or int(length) > self.limit):
            response = error_response(413, "request_too_large", _too_large(self.limit))
            await response(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, _too_large(self.limit))
            return message

        return counted
