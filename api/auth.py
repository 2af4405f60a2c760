"""Who may call the service: with `LEDGER_ADMIN_TOKEN` set, a bearer token on everything but what
must stay open to callers that cannot hold it.

Open: WeChat Pay's notifications (they are verified by signature instead), the probes a load
balancer sends, and the OpenAPI description (it holds no data). The operator pages under /ui check
the token or a login session themselves (api/ui/auth.py), so a browser there gets a login form
rather than a bare 401.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.openapi import OPENAPI_PATH
from api.responses import fail

__all__ = ["AdminTokenMiddleware"]


_NOTIFY_PATHS = ("/wechatpay/notify", "/wechatpay/v2/notify")  # WeChat Pay's callbacks (APIv3, APIv2)


def _is_open(path: str) -> bool:
    if path in ("/healthz", "/readyz", OPENAPI_PATH, *_NOTIFY_PATHS):
        return True
    return path.startswith(tuple(f"{notify}/" for notify in _NOTIFY_PATHS))


def _is_ui(path: str) -> bool:
    """The operator pages check the token or a login session themselves (api/ui/auth.py)."""
    return path == "/ui" or path.startswith("/ui/")


class AdminTokenMiddleware:
    """Every path but the open ones and /ui answers 401 unless the request carries `Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_open(scope["path"]) and not _is_ui(scope["path"]):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                answer = fail(401, "missing or wrong admin token", "UNAUTHORIZED")
                answer.headers["www-authenticate"] = "Bearer"
                await answer(scope, receive, send)
                return
        await self._app(scope, receive, send)
