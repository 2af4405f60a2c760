"""Every error the ledger raises, in one tree.

LedgerError
├── ConfigurationError          bad or missing setting, raised at start-up; names the setting
├── NotificationRejected        an inbound notification we must not acknowledge
│   ├── VerificationFailed      missing headers, stale timestamp, unknown serial,
│   │   │                            probe or bad signature, wrong signature type
│   │   ├── UnknownSerial       no key for this Wechatpay-Serial (may trigger a refresh)
│   │   ├── StaleTimestamp      Wechatpay-Timestamp outside the allowed window
│   │   ├── SignatureProbe      WeChat's deliberate WECHATPAY/SIGNTEST/ signature
│   │   ├── DuplicateSignatureHeader  a Wechatpay-* signature header appears twice
│   │   └── V2SignInvalid       an APIv2 XML notification's `sign` is missing, of an unknown
│   │                                `sign_type`, or does not match
│   ├── MalformedNotification   verified, but the envelope is not what WeChat sends
│   │   ├── V2Malformed         an APIv2 body that is not the flat UTF-8 `<xml>` WeChat sends
│   │   │   └── V2XmlForbidden  a DTD, an entity declaration or an external reference (XXE,
│   │   │                            entity expansion): refused as soon as the parser meets it
│   │   └── V2ReturnCodeFail    an APIv2 notification whose `return_code` is FAIL: nothing to act on
│   ├── BodyTooLarge            the body is above the limit (refused before it is all read)
│   ├── DecryptionFailed        signed correctly but the resource does not decrypt
│   │   │                            (our APIv3 key is wrong); WeChat keeps retrying
│   │   └── V2DecryptionFailed  an APIv2 refund's `req_info` does not decrypt, unpad and parse
│   │                                (our APIv2 key is wrong)
│   ├── UnknownMerchant         no merchant is configured for the notification's mchid
│   ├── BodyTimeout             the body did not arrive within the read timeout
│   └── ClientGone              the client disconnected before its body was read
├── OrderConflict               the order exists with different registration details
├── OrderNotFound               no such order, or no such version of it
├── NotificationNotFound        no notification that names no order has this id (for this mchid)
├── InvalidRequest              a request to our own API is malformed
├── StoreUnavailable            the event store cannot be reached; nothing was stored
├── EventUndecryptable          a stored event's state cannot be decrypted: its key is not in
│                                    LEDGER_ENCRYPTION_KEYS, or the bytes were altered
├── EndpointNotFound            no outbound-webhook endpoint with this id
├── MessageNotFound             no outbound message with this id (webhook-id)
├── InvalidEndpoint             an endpoint's URL or secret cannot be used
├── BillMalformed               a daily bill that is not what WeChat Pay writes (names the line)
├── BillNotStored               no bill is kept for that merchant, day and kind (or the day was empty)
├── StoredBillCorrupt           a kept bill's chunks do not inflate to a whole bill (altered in the store)
├── ReadModelBehind             the orders read model did not reach the log's head in time (also a TimeoutError)
├── ReadModelOutdated           the live orders view has the table layout of an earlier version:
│                                    `payledger rebuild` makes one of the current layout
└── WeChatPayError              an outbound call to WeChat Pay did not give a trusted answer
    ├── WeChatPayUnavailable    network error, timeout, 429 or 5xx, still failing at the deadline
    ├── WeChatPayRejected       a 4xx answer (not retried); carries WeChat's code and message
    ├── OutcomeUnknown          a request that changes something (a refund) got no trusted answer:
    │                                WeChat may or may not have acted on it; ask by query
    ├── ResponseUntrusted       a 2xx whose signature, serial, timestamp or body cannot be trusted
    ├── BillNotFound            NO_STATEMENT_EXIST: no bill for that day (final: an empty day)
    ├── BillNotReady            STATEMENT_CREATING: the bill is being made; apply again later
    └── BillDownloadFailed      the bill file did not arrive whole (corrupt or cut-short gzip):
        │                            discard it and apply again
        └── BillHashMismatch    the file's SHA-1 is not the hash_value of the apply answer

Each error carries a short, fixed `reason` that is safe to put in an answer; the exception
message may hold more detail for logs, never secrets. This module knows no HTTP: what each
error answers (status, code, message, the outcome a notification counts) is the one table in
api/errors.py.
"""

from __future__ import annotations

__all__ = [
    "BillDownloadFailed",
    "BillHashMismatch",
    "BillMalformed",
    "BillNotFound",
    "BillNotReady",
    "BillNotStored",
    "BodyTimeout",
    "BodyTooLarge",
    "ClientGone",
    "ConfigurationError",
    "DecryptionFailed",
    "DuplicateSignatureHeader",
    "EndpointNotFound",
    "EventUndecryptable",
    "InvalidEndpoint",
    "InvalidRequest",
    "LedgerError",
    "MalformedNotification",
    "MessageNotFound",
    "NotificationNotFound",
    "NotificationRejected",
    "OrderConflict",
    "OrderNotFound",
    "OutcomeUnknown",
    "ReadModelBehind",
    "ReadModelOutdated",
    "RequestConflict",
    "RequestRefused",
    "ResponseUntrusted",
    "SignatureProbe",
    "StaleTimestamp",
    "StoreUnavailable",
    "StoredBillCorrupt",
    "UnknownMerchant",
    "UnknownSerial",
    "V2DecryptionFailed",
    "V2Malformed",
    "V2ReturnCodeFail",
    "V2SignInvalid",
    "V2XmlForbidden",
    "VerificationFailed",
    "WeChatPayError",
    "WeChatPayRejected",
    "WeChatPayUnavailable",
]


class LedgerError(Exception):
    reason = "internal error"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail or reason or self.reason)
        if reason is not None:
            self.reason = reason


class ConfigurationError(LedgerError):
    """A setting is missing or invalid; `setting` names it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class NotificationRejected(LedgerError):
    pass


class VerificationFailed(NotificationRejected):
    reason = "signature verification failed"


class UnknownSerial(VerificationFailed):
    reason = "unknown serial"

    def __init__(self, serial: str) -> None:
        super().__init__(f"unknown serial {serial[:64]!r}")
        self.serial = serial


class StaleTimestamp(VerificationFailed):
    reason = "timestamp outside the allowed window"


class SignatureProbe(VerificationFailed):
    """Answered like any bad signature; its own class so it is counted apart from real failures."""


class MalformedNotification(NotificationRejected):
    reason = "malformed notification"


class BodyTooLarge(NotificationRejected):
    reason = "body too large"


class DecryptionFailed(NotificationRejected):
    reason = "resource decryption failed"


# What the notification endpoint refuses before it verifies anything (and one header check it
# adds to the verifier's): refusals like the others, so the one table in api/errors.py answers them.


class UnknownMerchant(NotificationRejected):
    reason = "unknown merchant"


class BodyTimeout(NotificationRejected):
    reason = "request body timeout"


class ClientGone(NotificationRejected):
    reason = "client disconnected"


class DuplicateSignatureHeader(VerificationFailed):
    """Which of two values we verified and which one a proxy or an auditor reads could differ."""

    reason = "duplicate signature headers"


# Legacy APIv2 XML notifications ([protocol: Legacy APIv2 XML]): refusals like the APIv3 ones, so that
# the one table in api/errors.py answers them with the same statuses (401, 400, 500).


class V2SignInvalid(VerificationFailed):
    reason = "sign verification failed"


class V2Malformed(MalformedNotification):
    reason = "malformed XML notification"


class V2XmlForbidden(V2Malformed):
    """Never in WeChat's XML, and the way in for file reads, requests to other hosts and entity expansion."""

    reason = "DTDs and entities are not accepted"


class V2ReturnCodeFail(MalformedNotification):
    """`return_code` FAIL is WeChat's communication flag: the body carries no business fields."""

    reason = "return_code is FAIL"


class V2DecryptionFailed(DecryptionFailed):
    reason = "req_info decryption failed"


class OrderConflict(LedgerError):
    reason = "order already registered with different details"


class OrderNotFound(LedgerError):
    reason = "order not found"


class NotificationNotFound(LedgerError):
    reason = "notification not found"


class InvalidRequest(LedgerError):
    reason = "invalid request"


class StoreUnavailable(LedgerError):
    reason = "store unavailable"


class EventUndecryptable(LedgerError):
    """`key_id` names the key (its public fingerprint, never the key) the state needs."""

    reason = "stored event cannot be decrypted"

    def __init__(self, detail: str, key_id: str) -> None:
        super().__init__(detail)
        self.key_id = key_id


class WeChatPayError(LedgerError):
    reason = "WeChat Pay answer failed or could not be trusted"


class WeChatPayUnavailable(WeChatPayError):
    """`status` and `code` are the last attempt's answer when there was one (None and "" after a network
    error or a timeout)."""

    reason = "WeChat Pay unavailable"

    def __init__(
        self, detail: str = "", *, status: int | None = None, code: str = "", reason: str | None = None
    ) -> None:
        super().__init__(detail, reason=reason)
        self.status = status
        self.code = code


class WeChatPayRejected(WeChatPayError):
    """A 4xx from WeChat Pay: `code` and `message` are WeChat's (e.g. ORDER_NOT_EXIST)."""

    reason = "WeChat Pay rejected the request"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ResponseUntrusted(WeChatPayError):
    reason = "WeChat Pay answer could not be verified"


class OutcomeUnknown(WeChatPayError):
    """A request that changes something at WeChat Pay (a refund) was sent, or may have been, and no trusted
    answer came back: a timeout or a connection lost after sending, a 429 or 5xx, a 2xx that does not verify
    or is not about that request. WeChat may have acted on it or not; only a query tells. Not a
    `WeChatPayUnavailable`, whose callers take it to mean that nothing happened. `status` and `code` are
    the answer's when there was one (None and "" after a network error or a timeout)."""

    reason = "WeChat Pay's answer is unknown; the outcome is settled by query"

    def __init__(self, detail: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


# Daily bills ([protocol: Daily bills]): WeChat's 400 codes that are answers, not failures, and a
# downloaded file that is not the one WeChat hashed. Messages name the bill, never the download URL.


class BillNotFound(WeChatPayError):
    """NO_STATEMENT_EXIST: nothing moved that day; final, the day is empty."""

    reason = "no WeChat Pay bill for that day"


class BillNotReady(WeChatPayError):
    """STATEMENT_CREATING: WeChat is still making the bill; apply again later (every 30 minutes)."""

    reason = "WeChat Pay bill not ready yet"


class BillDownloadFailed(WeChatPayError):
    """The downloaded file is unusable; whatever was written of it must be discarded."""

    reason = "WeChat Pay bill download failed"


class BillHashMismatch(BillDownloadFailed):
    reason = "WeChat Pay bill does not match its hash"


class EndpointNotFound(LedgerError):
    reason = "endpoint not found"

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"no endpoint {endpoint_id}")
        self.endpoint_id = endpoint_id


class MessageNotFound(LedgerError):
    reason = "message not found"

    def __init__(self, message_id: str) -> None:
        super().__init__(f"no message {message_id}")
        self.message_id = message_id


class InvalidEndpoint(LedgerError):
    """The message says what is wrong (the URL's scheme or host, a secret's form), never quoting a secret."""

    reason = "invalid endpoint"


class BillMalformed(LedgerError):
    """A daily bill that cannot be read as WeChat Pay writes them: a row whose field count differs
    from its header, an amount that is not one, a summary that is missing or does not match the
    rows. `line` is the 1-based line number, `column` the header name when one is concerned; the
    message names those and never quotes the bill's content."""

    reason = "bill malformed"

    def __init__(self, line: int, problem: str, *, column: str | None = None) -> None:
        where = f"line {line}" if column is None else f"line {line}, column {column}"
        super().__init__(f"{where}: {problem}")
        self.line = line
        self.column = column


class BillNotStored(LedgerError):
    """No bill is kept for that (mchid, bill day, kind): never fetched, or WeChat had none that day."""

    reason = "bill not stored"


class StoredBillCorrupt(LedgerError):
    """A kept bill's chunks are not one whole gzip stream: the store was altered (`payledger verify` says where)."""

    reason = "stored bill is corrupt"


class ReadModelBehind(LedgerError, TimeoutError):
    """The orders read model had not processed the log's order events up to `head` when the wait
    ended: another projector holds the view and is slow or stuck. Nothing was decided from it."""

    reason = "read model behind the log"

    def __init__(self, view: str, position: int, head: int, timeout: float) -> None:
        super().__init__(f"{view} at position {position}, order events up to {head}; waited {timeout:g} s")
        self.view = view
        self.position = position
        self.head = head


class ReadModelOutdated(LedgerError):
    """The orders view `view` was made by an earlier version, in a table layout this one does not
    write (its orders lack `sub_mchid`): nothing is read from it or written to it until
    `payledger rebuild` has made a version of the current layout live."""

    reason = "the orders view has the layout of an earlier version: run payledger rebuild"

    def __init__(self, view: str) -> None:
        super().__init__(f"orders view {view} has the table layout of an earlier version; run `payledger rebuild`")
        self.view = view


class RequestRefused(LedgerError):
    """A refund or close the order's state does not allow (not paid, more than is left, paid already)."""

    reason = "request refused by the order's state"


class RequestConflict(LedgerError):
    """An out_refund_no asked again with another amount or reason (or known from elsewhere)."""

    reason = "request conflicts with one recorded"
