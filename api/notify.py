"""`POST /wechatpay/notify[/{mchid}]`: raw bytes in; 204 only after the events are committed.

Every refusal, from an unknown merchant to a bad signature, is a `NotificationRejected`: its
answer and the outcome it is counted under come from the one table (api/errors.py), its log
line from here. The endpoint answers them itself rather than through the app's handler, so
that every answer is counted, timed and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.bootstrap import MerchantServices
from api.errors import UNEXPECTED, ErrorAnswer, answer_for
from api.metrics import NotifyMetrics
from api.state import AppState, app_state
from ledger.application import RecordResult
from ledger.domain import Outcome
from ledger.errors import (
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    DecryptionFailed,
    DuplicateSignatureHeader,
    NotificationRejected,
    StoreUnavailable,
    UnknownMerchant,
    UnknownSerial,
)
from ledger.evidence import Evidence
from ledger.wechatpay.notification import VerifiedNotification

__all__ = [
    "STORE_DEADLINE",
    "commit_delivery",
    "log_refusal",
    "notified_mchid",
    "notify",
    "read_body",
    "read_within_deadline",
    "receive",
]

log = logging.getLogger("api.notify")
# WeChat counts an answer after 5 s as a failure; leave room for the network.
STORE_DEADLINE = 4.0
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


async def read_within_deadline(request: Request, state: AppState) -> bytes:
    """The body within the read timeout, or the refusal that says why not."""
    timeout = state.settings.body_read_timeout
    try:
        async with asyncio.timeout(timeout):
            return await read_body(request, state.max_body_bytes)
    except TimeoutError:
        raise BodyTimeout(f"not received within {timeout}s") from None
    except ClientDisconnect:
        raise ClientGone() from None


def notified_mchid(request: Request, state: AppState) -> str | None:
    """The merchant a notification is for: the one its path names, else the only one configured."""
    return request.path_params.get("mchid") or state.default_mchid


async def receive(request: Request, state: AppState, mchid: str | None) -> tuple[MerchantServices, bytes]:
    """Merchant `mchid`'s services and the raw body, read within the deadline; `UnknownMerchant` first
    when no such merchant is configured."""
    merchant = state.merchants.get(mchid or "")
    if merchant is None:
        raise UnknownMerchant(f"no merchant {(mchid or '')[:32]!r}")
    return merchant, await read_within_deadline(request, state)


def log_refusal(exc: NotificationRejected, answer: ErrorAnswer, mchid: str | None, state: AppState) -> None:
    """One line for each refusal, at the level it deserves, with the outcome it is counted under."""
    outcome = {"outcome": answer.outcome}
    if isinstance(exc, UnknownMerchant):
        log.warning("notification for unknown merchant %r", (mchid or "")[:32], extra=outcome)
    elif isinstance(exc, BodyTooLarge):
        log.warning("notification refused mchid=%s: %s", mchid, exc.reason, extra=outcome)
    elif isinstance(exc, BodyTimeout):
        timeout = state.settings.body_read_timeout
        log.warning("notification body not received within %ds mchid=%s", timeout, mchid, extra=outcome)
    elif isinstance(exc, ClientGone):
        pass  # nobody is left to read the answer or to retry because of it: counted only
    elif isinstance(exc, DuplicateSignatureHeader):
        log.warning("notification rejected mchid=%s: a signature header is repeated", mchid, extra=outcome)
    elif isinstance(exc, DecryptionFailed):
        log.error(
            "SIGNED NOTIFICATION DOES NOT DECRYPT for mchid=%s: WECHATPAY_APIV3_KEY is wrong or was "
            "reset; WeChat will retry, fix the key now",
            mchid,
            extra=outcome,
        )
    else:
        log.warning(
            "notification rejected mchid=%s status=%d: %s",
            mchid,
            answer.status,
            exc,
            extra={"mchid": mchid, "outcome": answer.outcome, "status": answer.status},
        )


def _answered(metrics: NotifyMetrics, started: float, answer: ErrorAnswer, exc: BaseException) -> Response:
    """Count the failure under its outcome and answer it as WeChat Pay reads failures."""
    metrics.answered(answer.outcome, started)
    return answer.response(exc, notification=True)


async def commit_delivery(
    state: AppState,
    merchant: MerchantServices,
    delivery: VerifiedNotification | Evidence,
    *,
    what: str,
    status: int,
    started: float,
) -> RecordResult | tuple[ErrorAnswer, Exception]:
    """Commit a verified delivery through the group committer within `STORE_DEADLINE`. Its result once it
    is durable (counted and logged as accepted or duplicate, `status` being the answer about to be sent);
    else the failure answer to send instead, and why, logged (`what` names the kind of notification;
    `started`: when the request came in, for the answer's timing)."""
    # An APIv3 notification as verified, or an APIv2 one already as evidence: each names its id its way.
    notification_id = delivery.notification_id if isinstance(delivery, Evidence) else delivery.id
    event_type = delivery.event_type
    try:
        # On timeout we stop waiting; if the commit still lands, WeChat's retry collapses
        # into it. What matters is that no success answer precedes the commit.
        async with asyncio.timeout(STORE_DEADLINE):
            result = await state.committer.submit_async(
                merchant.mchid, delivery, expected_appid=merchant.appid, sub_mchids=merchant.settings.sub_mchids
            )
    except (StoreUnavailable, TimeoutError) as exc:
        why = "store unavailable" if isinstance(exc, StoreUnavailable) else f"no commit within {STORE_DEADLINE}s"
        failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(why)
        answer = answer_for(failure)
        log.error(
            "%s %s not stored (%s); answering %d so WeChat retries",
            what,
            notification_id,
            why,
            answer.status,
            extra={"outcome": answer.outcome, "notification_id": notification_id},
        )
        return answer, failure
    except Exception as exc:
        # Not stored, for a reason of ours (a bug): logged with its traceback for us, answered
        # with a fixed reason, counted and timed like every other answer. WeChat retries.
        log.error(
            "%s %s not stored: unexpected %s; answering %d so WeChat retries",
            what,
            notification_id,
            type(exc).__name__,
            UNEXPECTED.status,
            exc_info=exc,
            extra={"outcome": UNEXPECTED.outcome, "notification_id": notification_id},
        )
        return UNEXPECTED, exc
    outcome = "accepted" if result.outcome is Outcome.RECORDED else "duplicate"
    duration_ms = state.notify_metrics.answered(outcome, started) * 1000
    log.info(
        "%s %s %s mchid=%s %s stream_version=%d in %.1fms",
        what,
        notification_id,
        event_type,
        merchant.mchid,
        result.outcome.value,
        result.version,
        duration_ms,
        extra={
            "mchid": merchant.mchid,
            "notification_id": notification_id,
            "outcome": outcome,
            "status": status,
            "duration_ms": round(duration_ms, 2),
        },
    )
    return result


async def notify(request: Request) -> Response:
    state = app_state(request)
    started = time.perf_counter()
    metrics = state.notify_metrics
    mchid = notified_mchid(request, state)
    try:
        merchant, body = await receive(request, state, mchid)
        if _repeated_signature_header(request.headers.raw):
            raise DuplicateSignatureHeader("a signature header is repeated")
        notification = merchant.verifier.verify(request.headers, body)
    except NotificationRejected as exc:
        answer = answer_for(exc)
        log_refusal(exc, answer, mchid, state)
        if isinstance(exc, UnknownSerial):
            # Perhaps a rotation we have not seen yet (of a merchant we have: its verifier refused):
            # refresh in the background, rate-limited. This answer stays a failure; WeChat's retry
            # will find the new certificate.
            certificates = state.merchants[mchid or ""].certificates
            if certificates is not None:
                certificates.request_refresh(exc.serial)
        return _answered(metrics, started, answer, exc)

    committed = await commit_delivery(state, merchant, notification, what="notification", status=204, started=started)
    if isinstance(committed, tuple):
        return _answered(metrics, started, *committed)
    return Response(status_code=204)
