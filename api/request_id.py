"""Every request gets an id: the caller's ``X-Request-Id`` when it is short and plain, else a new one.

The id is set in `ledger.logs.request_id` for the log lines written while the request is
served, and returned in the ``X-Request-Id`` answer header so a caller can quote it. Pure
ASGI (no BaseHTTPMiddleware): a header scan and one context-variable set per request.
"""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.logs import request_id

__all__ = ["HEADER", "RequestIdMiddleware", "new_request_id"]

HEADER = b"x-request-id"
# What may be echoed into our logs and headers: nothing that could forge a line or a field.
_SAFE = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def new_request_id() -> str:
    return os.urandom(12).hex()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        rid: str | None = None
        for name, value in scope["headers"]:
            if name == HEADER:
                rid = value.decode("ascii") if _SAFE.fullmatch(value) else None
                break
        if rid is None:
            rid = new_request_id()
        header = (HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        # Not reset when the app raises: the error handler outside this middleware still logs
        # under this id (each request runs in a context of its own, so nothing leaks).
        token = request_id.set(rid)
        await self._app(scope, receive, send_with_id)
        request_id.reset(token)
