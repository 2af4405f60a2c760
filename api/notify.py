"""`POST /wechatpay/notify[/{mchid}]`: raw bytes in; 204 only after the events are committed."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.responses import fail
from api.state import AppState
from ledger.errors import (
    BodyTooLarge,
    DecryptionFailed,
    NotificationRejected,
    StoreUnavailable,
    UnknownSerial,
)

__all__ = ["notify", "read_body"]

log = logging.getLogger("api.notify")
# WeChat counts an answer after 5 s as a failure; leave room for the network.
STORE_DEADLINE = 4.0
SIGNATURE_HEADERS = (
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-signature",
    "wechatpay-serial",
    "wechatpay-signature-type",
)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, byte for byte, refused above `limit` before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"declared {declared} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _closing(response: Response) -> Response:
    """Close the connection after this answer: the rest of the body is never read."""
    response.headers["connection"] = "close"
    return response


async def notify(request: Request) -> Response:
    state: AppState = request.app.state.ledger
    started = time.perf_counter()
    mchid = request.path_params.get("mchid") or state.default_mchid
    merchant = state.merchants.get(mchid or "")
    if merchant is None:
        log.warning("notification for unknown merchant %r", (mchid or "")[:32])
        return fail(404, "unknown merchant")
    timeout = state.settings.body_read_timeout
    try:
        async with asyncio.timeout(timeout):
            body = await read_body(request, state.max_body_bytes)
    except BodyTooLarge as exc:
        log.warning("notification refused mchid=%s: %s", mchid, exc.reason)
        return _closing(fail(413, exc.reason))
    except TimeoutError:
        log.warning("notification body not received within %ds mchid=%s", timeout, mchid)
        return _closing(fail(408, "request body timeout"))
    except ClientDisconnect:
        return fail(400, "client disconnected")

    if any(len(request.headers.getlist(name)) > 1 for name in SIGNATURE_HEADERS):
        # Which of two values we verified and which one a proxy or an auditor reads could differ.
        log.warning("notification rejected mchid=%s: a signature header is repeated", mchid)
        return fail(401, "duplicate signature headers")
    try:
        notification = merchant.verifier.verify(request.headers, body)
    except DecryptionFailed:
        log.error(
            "SIGNED NOTIFICATION DOES NOT DECRYPT for mchid=%s: WECHATPAY_APIV3_KEY is wrong or was "
            "reset; WeChat will retry, fix the key now",
            mchid,
        )
        return fail(500, DecryptionFailed.reason)
    except NotificationRejected as exc:
        log.warning("notification rejected mchid=%s status=%d: %s", mchid, exc.status_code, exc)
        if isinstance(exc, UnknownSerial) and merchant.certificates is not None:
            # Perhaps a rotation we have not seen yet: refresh in the background, rate-limited.
            # This answer stays a failure; WeChat's retry will find the new certificate.
            merchant.certificates.request_refresh(exc.serial)
        return fail(exc.status_code, exc.reason)

    try:
        # On timeout we stop waiting; if the commit still lands, WeChat's retry collapses
        # into it. What matters is that no 2xx precedes the commit.
        async with asyncio.timeout(STORE_DEADLINE):
            result = await state.committer.submit_async(merchant.mchid, notification, expected_appid=merchant.appid)
    except (StoreUnavailable, TimeoutError) as exc:
        log.error(
            "notification %s not stored (%s); answering 503 so WeChat retries",
            notification.id,
            "store unavailable" if isinstance(exc, StoreUnavailable) else f"no commit within {STORE_DEADLINE}s",
        )
        return fail(503, StoreUnavailable.reason)
    log.info(
        "notification %s %s mchid=%s %s stream_version=%d in %.1fms",
        notification.id,
        notification.event_type,
        merchant.mchid,
        result.outcome.value,
        result.version,
        (time.perf_counter() - started) * 1000,
    )
    return Response(status_code=204)
