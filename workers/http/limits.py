"""What every HTTP answer and request gets, whatever the route (docs/interfaces.md §4 "Limits").

- `BodyLimit`: a request body over its route's cap is 413. A declared `Content-Length` over the
  cap is answered before a byte of the body is read; a chunked body is counted as it arrives and
  refused at the first chunk past the cap (the rest is never read). Caps: `POST /hl7` the message
  size limit (RXGATE_MAX_MESSAGE_BYTES), CDS Hooks calls 16 MiB, every other route 64 KiB (a
  login form is a few hundred bytes).
- `SecurityHeaders`: every answer carries `X-Content-Type-Options: nosniff`, and `Cache-Control:
  no-store` unless the route set its own (the stylesheet under /static may be cached).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_BODY_LIMIT", "BodyLimit", "BodyTooLarge", "SecurityHeaders"]

DEFAULT_BODY_LIMIT = 64 * 1024


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


async def _send_413(send: Send, limit: int) -> None:
    message = f"request body exceeds {limit} bytes"
    body = json.dumps({"message": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"x-content-type-options", b"nosniff"),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Pure ASGI: no body is buffered here; the route's own read sees at most `limit_for(path)` bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            await _send_413(send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)  # the app's HTTPException handler answers 413
            return message

        await self.app(scope, counted, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _v in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"cache-control" not in names and not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
