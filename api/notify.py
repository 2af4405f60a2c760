"""`POST /wechatpay/notify[/{mchid}]`: raw bytes in; 204 only after the events are committed."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.responses import fail
from api.state import AppState
from ledger.domain import Outcome
from ledger.errors import (
    BodyTooLarge,
    DecryptionFailed,
    MalformedNotification,
    NotificationRejected,
    SignatureProbe,
    StaleTimestamp,
    StoreUnavailable,
    UnknownSerial,
)

__all__ = ["notify", "read_body"]

log = logging.getLogger("api.notify")
# WeChat counts an answer after 5 s as a failure; leave room for the network.
STORE_DEADLINE = 4.0
# The outcome counted for each refusal; any other verification failure is a bad signature.
_REJECTED = {
    SignatureProbe: "probe",
    StaleTimestamp: "stale",
    UnknownSerial: "unknown_serial",
    MalformedNotification: "malformed",
}
SIGNATURE_HEADERS = frozenset(
    {
        b"wechatpay-timestamp",
        b"wechatpay-nonce",
        b"wechatpay-signature",
        b"wechatpay-serial",
        b"wechatpay-signature-type",
    }
)


def _repeated_signature_header(raw: list[tuple[bytes, bytes]]) -> bool:
    """One pass over the header names."""
    seen: set[bytes] = set()
    for raw_name, _ in raw:
        name = raw_name.lower()
        if name in SIGNATURE_HEADERS:
            if name in seen:
                return True
            seen.add(name)
    return False


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
    metrics = state.notify_metrics
    mchid = request.path_params.get("mchid") or state.default_mchid
    merchant = state.merchants.get(mchid or "")
    if merchant is None:
        log.warning("notification for unknown merchant %r", (mchid or "")[:32], extra={"outcome": "unknown_merchant"})
        metrics.answered("unknown_merchant", started)
        return fail(404, "unknown merchant")
    timeout = state.settings.body_read_timeout
    try:
        async with asyncio.timeout(timeout):
            body = await read_body(request, state.max_body_bytes)
    except BodyTooLarge as exc:
        log.warning("notification refused mchid=%s: %s", mchid, exc.reason, extra={"outcome": "too_large"})
        metrics.answered("too_large", started)
        return _closing(fail(413, exc.reason))
    except TimeoutError:
        log.warning(
            "notification body not received within %ds mchid=%s", timeout, mchid, extra={"outcome": "body_timeout"}
        )
        metrics.answered("body_timeout", started)
        return _closing(fail(408, "request body timeout"))
    except ClientDisconnect:
        metrics.answered("disconnected", started)
        return fail(400, "client disconnected")

    if _repeated_signature_header(request.headers.raw):
        # Which of two values we verified and which one a proxy or an auditor reads could differ.
        log.warning(
            "notification rejected mchid=%s: a signature header is repeated", mchid, extra={"outcome": "bad_signature"}
        )
        metrics.answered("bad_signature", started)
        return fail(401, "duplicate signature headers")
    try:
        notification = merchant.verifier.verify(request.headers, body)
    except DecryptionFailed:
        log.error(
            "SIGNED NOTIFICATION DOES NOT DECRYPT for mchid=%s: WECHATPAY_APIV3_KEY is wrong or was "
            "reset; WeChat will retry, fix the key now",
            mchid,
            extra={"outcome": "decrypt_failure"},
        )
        metrics.answered("decrypt_failure", started)
        return fail(500, DecryptionFailed.reason)
    except NotificationRejected as exc:
        outcome = _REJECTED.get(type(exc), "bad_signature")
        log.warning(
            "notification rejected mchid=%s status=%d: %s",
            mchid,
            exc.status_code,
            exc,
            extra={"mchid": mchid, "outcome": outcome, "status": exc.status_code},
        )
        metrics.answered(outcome, started)
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
            extra={"outcome": "store_unavailable", "notification_id": notification.id},
        )
        metrics.answered("store_unavailable", started)
        return fail(503, StoreUnavailable.reason)
    except Exception as exc:
        # Not stored, for a reason of ours (a bug): logged with its traceback for us, answered
        # with a fixed reason, counted and timed like every other answer. WeChat retries.
        log.error(
            "notification %s not stored: unexpected %s; answering 500 so WeChat retries",
            notification.id,
            type(exc).__name__,
            exc_info=exc,
            extra={"outcome": "error", "notification_id": notification.id},
        )
        metrics.answered("error", started)
        return fail(500, "internal error")
    outcome = "accepted" if result.outcome is Outcome.RECORDED else "duplicate"
    duration_ms = metrics.answered(outcome, started) * 1000
    log.info(
        "notification %s %s mchid=%s %s stream_version=%d in %.1fms",
        notification.id,
        notification.event_type,
        merchant.mchid,
        result.outcome.value,
        result.version,
        duration_ms,
        extra={
            "mchid": merchant.mchid,
            "notification_id": notification.id,
            "outcome": outcome,
            "status": 204,
            "duration_ms": round(duration_ms, 2),
        },
    )
    return Response(status_code=204)
