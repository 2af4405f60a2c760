"""The app in-process: its lifespan running, and requests as raw ASGI scopes.

No HTTP client in between, so a test can send what a client library would refuse to build
(control characters, bytes that are not UTF-8, repeated headers) and see what the app itself does.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["Answer", "InProcess", "Receive", "in_process"]

# What the app awaits for the request's body, message by message, as a server hands it over.
Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class InProcess:
    def __init__(self, app: Any, portal: BlockingPortal) -> None:
        self._app = app
        self._portal = portal

    def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        *,
        receive: Receive | None = None,
    ) -> Answer:
        """One request; `receive`, when given, decides how the body arrives (in parts, never, or
        cut off by the client) instead of `body` arriving whole."""
        return self._portal.call(self._request, method, path, headers or [], body, receive)

    async def _request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes, given: Receive | None
    ) -> Answer:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            # As a server hands them over: names lowercased, values untouched.
            "headers": [(name.lower(), value) for name, value in headers],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        received = False
        done = anyio.Event()
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        await self._app(scope, receive if given is None else given, send)
        done.set()
        headers_out = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
        return Answer(start["status"], headers_out, b"".join(chunks))


@contextlib.contextmanager
def in_process(app: Any) -> Iterator[InProcess]:
    """Run `app`'s lifespan (startup before, shutdown after) in a thread of its own."""
    with start_blocking_portal() as portal:
        to_app_send, to_app_receive = anyio.create_memory_object_stream[dict[str, Any]](10)
        from_app_send, from_app_receive = anyio.create_memory_object_stream[dict[str, Any]](10)

        async def lifespan() -> None:
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            await app(scope, to_app_receive.receive, from_app_send.send)

        future = portal.start_task_soon(lifespan)
        portal.call(to_app_send.send, {"type": "lifespan.startup"})
        started = portal.call(from_app_receive.receive)
        assert started["type"] == "lifespan.startup.complete", started
        try:
            yield InProcess(app, portal)
        finally:
            portal.call(to_app_send.send, {"type": "lifespan.shutdown"})
            stopped = portal.call(from_app_receive.receive)
            assert stopped["type"] == "lifespan.shutdown.complete", stopped
            future.result(10)
            for stream in (to_app_send, to_app_receive, from_app_send, from_app_receive):
                portal.call(stream.aclose)
