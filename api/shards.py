"""One service over several stores: each request goes to the app of its merchant's shard.

A ledger whose merchants name different `database_url`s is split into shards (`Settings.shards`):
each shard is a whole app of its own (`create_app` on that shard's settings: its event table, read
model, outbox, operators), and `ShardRouter` sends every request to one of them, by, in order:

1. the mchid in a notify path (`/wechatpay/notify/<mchid>`, `/wechatpay/v2/notify/<mchid>`);
2. the `Wechatpay-Serial` of a bare notify (each merchant's public key id or certificate serial);
3. `?mchid=` in the query;
4. the `mchid` of a JSON object body (`POST /orders`, refunds, closes): the body is read (up to the
   body limit, as the app would) and handed on unchanged;
5. else the first merchant's shard (health, metrics, the console without `?mchid=`).

Each shard's lifespan runs inside the router's, so every shard starts (and its store is opened)
before the first request, and a shard that cannot start stops the service.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette

from api.app import create_app
from api.responses import fail
from ledger.settings import Settings

__all__ = ["ShardRouter", "create_service"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NOTIFY_PATH = re.compile(r"^/wechatpay/(?:v2/)?notify/(\d{1,32})/?$")


def create_service(settings: Settings, *, background: bool = True) -> Starlette | ShardRouter:
    """The HTTP service for `settings`: the app itself on one store, a `ShardRouter` over one app per
    shard when merchants are on several (`LEDGER_SHARD` set: that shard's app alone)."""
    shards = settings.shards() if settings.shard is None else (settings.shard_of(settings.shard),)
    if len(shards) == 1:
        return create_app(shards[0], background=background)
    return ShardRouter([(shard, create_app(shard, background=background)) for shard in shards])


class ShardRouter:
    def __init__(self, shards: list[tuple[Settings, Starlette]]) -> None:
        self._apps = [app for _, app in shards]
        self._by_mchid: dict[str, Starlette] = {}
        self._by_serial: dict[str, Starlette] = {}
        for settings, app in shards:
            for merchant in settings.merchants:
                self._by_mchid[merchant.mchid] = app
                for serial in merchant.keys.serials:
                    self._by_serial.setdefault(serial.upper(), app)
        self._default = self._apps[0]
        self._max_body = shards[0][0].max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self._default(scope, receive, send)
            return
        app = self._by_path_or_headers(scope)
        if app is None and scope["method"] == "POST":
            body = await _read_body(receive, self._max_body)
            if body is None:
                await fail(413, "too_large")(scope, receive, send)
                return
            app = self._by_mchid.get(_body_mchid(body) or "", self._default)
            await app(scope, _replay(body, receive), send)
            return
        await (app or self._default)(scope, receive, send)

    def _by_path_or_headers(self, scope: Scope) -> Starlette | None:
        path: str = scope["path"]
        match = _NOTIFY_PATH.match(path)
        if match:
            return self._by_mchid.get(match.group(1), self._default)
        if path.rstrip("/") in ("/wechatpay/notify", "/wechatpay/v2/notify"):
            for name, value in scope["headers"]:
                if name == b"wechatpay-serial":
                    return self._by_serial.get(value.decode("latin-1").strip().upper(), self._default)
            return self._default
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=20)
        mchid = query.get("mchid", [""])[0]
        if mchid:
            return self._by_mchid.get(mchid, self._default)
        return None

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with contextlib.AsyncExitStack() as stack:
            try:
                for app in self._apps:
                    await stack.enter_async_context(app.router.lifespan_context(app))
            except BaseException:
                await send({"type": "lifespan.startup.failed", "message": "a shard did not start"})
                raise
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes `limit` (what was read is then dropped)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _body_mchid(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    mchid = value.get("mchid") if isinstance(value, dict) else None
    return mchid if isinstance(mchid, str) else None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then waits on the real one (for a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
