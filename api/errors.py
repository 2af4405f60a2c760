"""Every failure's HTTP answer, in one table: exception class → status, code, message, notify outcome.

The exception tree (ledger/errors.py) knows no HTTP; this is where an error becomes an answer.
The app's exception handlers, the notification endpoint (which answers its refusals itself, so
that it counts and logs every one) and the operator pages all read `answer_for`, so a status or
a message is decided here once. A class with no entry of its own answers like its nearest
ancestor that has one; anything that is not ours is `UNEXPECTED`: a 500 with a fixed message,
never exception text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from api.responses import LedgerJSONResponse, fail
from ledger.errors import (
    BillDownloadFailed,
    BillHashMismatch,
    BillMalformed,
    BillNotFound,
    BillNotReady,
    BillNotStored,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    DecryptionFailed,
    EndpointNotFound,
    InvalidEndpoint,
    InvalidRequest,
    LedgerError,
    MalformedNotification,
    MessageNotFound,
    NotificationNotFound,
    OrderConflict,
    OrderNotFound,
    ReadModelOutdated,
    RequestConflict,
    RequestRefused,
    SignatureProbe,
    StaleTimestamp,
    StoredBillCorrupt,
    StoreUnavailable,
    UnknownMerchant,
    UnknownSerial,
    VerificationFailed,
    WeChatPayError,
    WeChatPayRejected,
)

__all__ = ["ANSWERS", "EXCEPTION_HANDLERS", "NOTIFICATION_PATH", "UNEXPECTED", "ErrorAnswer", "answer_for"]

log = logging.getLogger("api")

# A failure under this path is answered to WeChat Pay, which reads only {"code": "FAIL", "message": ...}.
NOTIFICATION_PATH = "/wechatpay/"


def _reason(exc: BaseException) -> str:
    """The class's fixed, answer-safe reason; for anything not ours, nothing about it."""
    return exc.reason if isinstance(exc, LedgerError) else "internal error"


def _own_sentence(exc: BaseException) -> str:
    """Our own API says what was wrong with the request: these messages are our sentences."""
    return str(exc)


def _with_wechat_code(exc: BaseException) -> str:
    """WeChat Pay's code (ORDER_NOT_EXIST, ...) tells the caller what to do; its message stays in the log."""
    code = exc.code if isinstance(exc, WeChatPayRejected) else ""
    return f"{_reason(exc)}: {code}" if code else _reason(exc)


@dataclass(frozen=True)
class ErrorAnswer:
    """How one kind of failure is answered."""

    status: int
    code: str  # our API's error code; an answer to WeChat Pay always says "FAIL"
    outcome: str = "error"  # what /wechatpay/notify counts and logs (api.metrics.NOTIFICATION_OUTCOMES)
    message: Callable[[BaseException], str] = _reason
    closes: bool = False  # the body was not read to its end: close the connection after answering

    def response(self, exc: BaseException, *, notification: bool = False) -> LedgerJSONResponse:
        answer = fail(self.status, self.message(exc), "FAIL" if notification else self.code)
        if self.closes:
            answer.headers["connection"] = "close"
        return answer


ANSWERS: Mapping[type[BaseException], ErrorAnswer] = {
    BaseException: ErrorAnswer(500, "FAIL"),
    LedgerError: ErrorAnswer(500, "FAIL"),
    # Refused notifications: WeChat Pay retries every one of them.
    VerificationFailed: ErrorAnswer(401, "UNAUTHORIZED", "bad_signature"),
    UnknownSerial: ErrorAnswer(401, "UNAUTHORIZED", "unknown_serial"),
    StaleTimestamp: ErrorAnswer(401, "UNAUTHORIZED", "stale"),
    SignatureProbe: ErrorAnswer(401, "UNAUTHORIZED", "probe"),
    MalformedNotification: ErrorAnswer(400, "INVALID_REQUEST", "malformed"),
    BodyTooLarge: ErrorAnswer(413, "FAIL", "too_large", closes=True),
    DecryptionFailed: ErrorAnswer(500, "FAIL", "decrypt_failure"),
    UnknownMerchant: ErrorAnswer(404, "NOT_FOUND", "unknown_merchant"),
    BodyTimeout: ErrorAnswer(408, "FAIL", "body_timeout", closes=True),
    ClientGone: ErrorAnswer(400, "INVALID_REQUEST", "disconnected"),
    # Our own API.
    OrderConflict: ErrorAnswer(409, "CONFLICT"),
    RequestRefused: ErrorAnswer(409, "REFUSED", message=_own_sentence),
    RequestConflict: ErrorAnswer(409, "CONFLICT", message=_own_sentence),
    OrderNotFound: ErrorAnswer(404, "NOT_FOUND"),
    NotificationNotFound: ErrorAnswer(404, "NOT_FOUND"),
    InvalidRequest: ErrorAnswer(400, "INVALID_REQUEST", message=_own_sentence),
    StoreUnavailable: ErrorAnswer(503, "FAIL", "store_unavailable"),
    EndpointNotFound: ErrorAnswer(404, "NOT_FOUND"),
    MessageNotFound: ErrorAnswer(404, "NOT_FOUND"),
    InvalidEndpoint: ErrorAnswer(400, "INVALID_REQUEST"),
    WeChatPayError: ErrorAnswer(502, "FAIL"),
    WeChatPayRejected: ErrorAnswer(502, "FAIL", message=_with_wechat_code),
    BillNotFound: ErrorAnswer(502, "FAIL"),
    BillNotReady: ErrorAnswer(502, "FAIL"),
    BillDownloadFailed: ErrorAnswer(502, "FAIL"),
    BillHashMismatch: ErrorAnswer(502, "FAIL"),
    BillMalformed: ErrorAnswer(502, "FAIL"),  # the bill came from WeChat Pay, not from the caller
    BillNotStored: ErrorAnswer(404, "NOT_FOUND"),
    StoredBillCorrupt: ErrorAnswer(500, "FAIL"),
    # Until `payledger rebuild` (its fixed reason says so); one order is still read from its stream.
    ReadModelOutdated: ErrorAnswer(503, "FAIL"),
}
UNEXPECTED = ANSWERS[BaseException]


def answer_for(error: BaseException | type[BaseException]) -> ErrorAnswer:
    """The entry of `error`'s class, or of its nearest ancestor that has one."""
    kind = error if isinstance(error, type) else type(error)
    return next(ANSWERS[cls] for cls in kind.__mro__ if cls in ANSWERS)


async def _ledger_error(request: Request, exc: Exception) -> Response:
    return answer_for(exc).response(exc, notification=request.url.path.startswith(NOTIFICATION_PATH))


_ROUTING = {404: ("NOT_FOUND", "not found"), 405: ("METHOD_NOT_ALLOWED", "method not allowed")}


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Routing failures (no such path, method not allowed) in the same JSON shape as every other answer."""
    assert isinstance(exc, HTTPException)
    code, message = _ROUTING.get(exc.status_code, ("FAIL", "invalid request"))
    answer = fail(exc.status_code, message, code)
    answer.headers.update(exc.headers or {})
    return answer


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return UNEXPECTED.response(exc)


# For Starlette(exception_handlers=...): ours by the table, routing failures, and everything else.
EXCEPTION_HANDLERS: Mapping[type[Exception], ExceptionHandler] = {
    LedgerError: _ledger_error,
    HTTPException: _routing_error,
    Exception: _unexpected,
}
