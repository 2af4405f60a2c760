"""Every request gets an id: the caller's ``X-Request-Id`` when it is short and plain, else a new one.

The id is set in `ledger.logs.request_id` for the log lines written while the request is
served, and returned in the ``X-Request-Id`` answer header so a caller can quote it. Pure
ASGI (no BaseHTTPMiddleware): a header scan and one context-variable set per request.
"""

from __future__ import annotations

import itertools
import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.logs import request_id

__all__ = ["HEADER", "RequestIdMiddleware"]

HEADER = b"x-request-id"
# What may be echoed into our logs and headers: nothing that could forge a line or a field.
_SAFE = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        # A random prefix per process and a counter: unique across replicas without a system
        # call per request (an id only has to be unique, it is not a secret).
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def new_request_id(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"

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
            rid = self.new_request_id()
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
