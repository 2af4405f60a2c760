"""Outbound WeChat Pay APIv3 calls: sign, send, retry, verify ([protocol: Calling WeChat Pay]).

Every 2xx is verified before anything in it is trusted ([protocol: Verifying an answer; Signature probes]).
Failures are classified once, by `classify` ([protocol: Errors and retries]): 429, 5xx and transport errors
are retried within a deadline, any other 4xx is final, and an untrusted 2xx is never retried here (the
reconciler re-queries later).

Daily bills ([protocol: Daily bills]) are applied for like any call; the file itself is the one answer not
verified by signature (WeChat does not sign it), only by its SHA-1 (ledger/wechatpay/bill_download.py).

A refund ([protocol: Creating a refund]) is the one call that moves money, and is sent once: never retried
here, whatever happens. A clear refusal is `WeChatPayRejected`; anything else short of a trusted answer
about that refund is `OutcomeUnknown`, which the caller settles by querying the refund."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, BinaryIO, Literal
from urllib.parse import quote, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from ledger.errors import (
    BillNotFound,
    BillNotReady,
    MalformedNotification,
    OutcomeUnknown,
    ResponseUntrusted,
    VerificationFailed,
    WeChatPayRejected,
    WeChatPayUnavailable,
)
from ledger.wechatpay.bill_download import BillDownload, BillTicket, BillWriter, ticket_from_answer
from ledger.wechatpay.keys import KeyStore, normalise_serial
from ledger.wechatpay.notification import parse_json_object
from ledger.wechatpay.refunds import REFUND_PATH, RefundAnswer, RefundRequest, refund_answer
from ledger.wechatpay.signature import (
    SignatureHeaders,
    authorization_header,
    new_nonce,
    request_message,
    sign,
    verify_signed_message,
)

__all__ = [
    "BILL_DOWNLOAD_HOSTS",
    "DEFAULT_BASE_URL",
    "USER_AGENT",
    "AttemptVerdict",
    "WeChatPayClient",
    "WeChatPayResponse",
    "classify",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.mch.weixin.qq.com"
USER_AGENT = "wechatpay-ledger/0.1"
AttemptVerdict = Literal["ok", "retry", "reject"]
# Where a bill's download_url may point besides base_url's own origin ([protocol: Downloading a bill]):
# the signed request is sent there.
BILL_DOWNLOAD_HOSTS = frozenset({"api.mch.weixin.qq.com", "api2.mch.weixin.qq.com"})
_BILL_ERRORS: dict[str, type[BillNotFound | BillNotReady]] = {
    "NO_STATEMENT_EXIST": BillNotFound,
    "STATEMENT_CREATING": BillNotReady,
}


def classify(status_code: int | None, exc: BaseException | None = None) -> AttemptVerdict:
    """What one attempt's result means ([protocol: Errors and retries]): trust it (after verification), try
    again, or stop."""
    if exc is not None:
        # TimeoutException is a TransportError; anything else (a broken gzip stream, a redirect
        # loop) will not heal by itself within the deadline.
        return "retry" if isinstance(exc, httpx.TransportError) else "reject"
    if status_code is None:
        raise ValueError("classify needs a status code or an exception")
    if 200 <= status_code < 300:
        return "ok"
    if status_code == 429 or status_code >= 500:
        return "retry"
    return "reject"


@dataclass(frozen=True)
class WeChatPayResponse:
    """A trusted answer. `key_serial` is "" only for `download_certificates(verify=False)`."""

    status_code: int
    body: bytes
    headers: dict[str, str]
    key_serial: str
    data: dict[str, Any] | None
    request_id: str | None
    received_at: dt.datetime


def _compact(value: dict[str, Any]) -> bytes:
    """Compact JSON, as WeChat's own SDKs send it; these exact bytes are signed and sent."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _segment(value: str) -> str:
    # "." and ".." would be folded away by URL normalisation and change the signed target.
    if value.strip(".") == "":
        raise ValueError(f"not a usable path parameter: {value!r}")
    return quote(value, safe="")


def _error_fields(body: bytes) -> tuple[str, str]:
    """WeChat's `code` and `message` from an error body ([protocol: Errors and retries]); empty when it has none."""
    try:
        value = parse_json_object(body, "error body")
    except MalformedNotification:
        return "", ""
    code, message = value.get("code"), value.get("message")
    return (code if isinstance(code, str) else "")[:64], (message if isinstance(message, str) else "")[:256]


def _retry_after(response: httpx.Response | None) -> float | None:
    value = response.headers.get("Retry-After", "").strip() if response is not None else ""
    return float(value) if value.isascii() and value.isdigit() else None


class WeChatPayClient:
    """Synchronous, thread-safe client for the query, refund, close and certificate APIs ([protocol: Querying
    an order … Downloading platform certificates])."""

    def __init__(
        self,
        *,
        mchid: str,
        merchant_serial_no: str,
        merchant_private_key: RSAPrivateKey,
        keys: Callable[[], KeyStore],
        base_url: str = DEFAULT_BASE_URL,
        wechatpay_serial: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 5.0,
        deadline: float = 15.0,
        max_attempts: int = 4,
        backoff: float = 0.5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_unknown_serial: Callable[[str], None] | None = None,
        nonce: Callable[[], str] = new_nonce,
    ) -> None:
        origin = httpx.URL(base_url)
        if origin.query or not origin.host:
            raise ValueError("base_url must be scheme://host[:port][/prefix] without a query")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.mchid = mchid
        self.base_url = base_url
        self._origin = origin
        # A sandbox may sit under a prefix; the signed URL line is always the full path sent.
        self._prefix = origin.raw_path.decode("ascii").rstrip("/")
        self._merchant_serial_no = merchant_serial_no
        self._private_key = merchant_private_key
        self._keys = keys
        self._wechatpay_serial = wechatpay_serial
        self._timeout = timeout
        self._deadline = deadline
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._on_unknown_serial = on_unknown_serial
        self._nonce = nonce
        # Kept apart so a bill download can go straight through it: httpx's own request log prints
        # full URLs, and a download URL's token must not reach any log.
        self._transport = transport if transport is not None else httpx.HTTPTransport()
        self._http = httpx.Client(transport=self._transport, timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:
        return f"WeChatPayClient(mchid={self.mchid!r}, base_url={self.base_url!r})"

    def __enter__(self) -> WeChatPayClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._transport.close()

    # -- the APIs ----------------------------------------------------------------------------

    def query_by_out_trade_no(self, out_trade_no: str, *, sub_mchid: str | None = None) -> WeChatPayResponse:
        """[protocol: Querying an order]: the transaction by our own order number (works for unpaid orders
        too); with `sub_mchid`, a provider's ([protocol: Service providers]: sp_mchid, then sub_mchid)."""
        mchid = quote(self.mchid, safe="")
        number = _segment(out_trade_no)
        if sub_mchid is None:
            return self._call("GET", f"/v3/pay/transactions/out-trade-no/{number}?mchid={mchid}")
        sub = quote(sub_mchid, safe="")
        return self._call("GET", f"/v3/pay/partner/transactions/out-trade-no/{number}?sp_mchid={mchid}&sub_mchid={sub}")

    def query_combined(self, combine_out_trade_no: str) -> WeChatPayResponse:
        """[protocol: Combined payments]: a combined payment and all its sub-orders (no query string: the
        ordinary query answers ORDER_NOT_EXIST for a sub-order)."""
        return self._call("GET", f"/v3/combine-transactions/out-trade-no/{_segment(combine_out_trade_no)}")

    def query_by_transaction_id(self, transaction_id: str) -> WeChatPayResponse:
        """[protocol: Querying an order]: the transaction by WeChat's order number."""
        mchid = quote(self.mchid, safe="")
        return self._call("GET", f"/v3/pay/transactions/id/{_segment(transaction_id)}?mchid={mchid}")

    def query_refund(self, out_refund_no: str, *, sub_mchid: str | None = None) -> WeChatPayResponse:
        """[protocol: Querying a refund]: one refund by our refund number (a sub-merchant's: `sub_mchid`)."""
        target = f"/v3/refund/domestic/refunds/{_segment(out_refund_no)}"
        return self._call("GET", target if sub_mchid is None else f"{target}?sub_mchid={quote(sub_mchid, safe='')}")

    def create_refund(self, request: RefundRequest) -> RefundAnswer:
        """[protocol: Creating a refund]: ask for one refund, sent ONCE (no retry here: the caller settles an
        unknown outcome by `query_refund`, and may send the very same request again, which WeChat refunds
        at most once). `request.body()` is the exact bytes sent.

        Returns WeChat's verified answer about that refund. Raises `WeChatPayRejected` for a clear refusal
        (a 4xx but 429: NOT_ENOUGH, INVALID_REQUEST, PARAM_ERROR, RESOURCE_NOT_EXISTS, NO_AUTH, SIGN_ERROR…;
        nothing was refunded), `OutcomeUnknown` for everything else: a timeout or a connection lost, a 429 or
        a 5xx, a 2xx that does not verify or is not about this refund."""
        body = request.body()
        try:
            # A 429 or 5xx is classified "retry", so one attempt ends in WeChatPayUnavailable; another 4xx
            # is WeChatPayRejected and goes to the caller as it is.
            response = self._call("POST", REFUND_PATH, body, max_attempts=1)
        except WeChatPayRejected as exc:
            if 400 <= exc.status < 500:
                raise
            # A 3xx is no answer of WeChat's: a proxy's, and what became of the request nobody knows.
            raise OutcomeUnknown(f"POST {REFUND_PATH}: HTTP {exc.status}", status=exc.status) from None
        except WeChatPayUnavailable as exc:
            raise OutcomeUnknown(str(exc), status=exc.status, code=exc.code) from None
        except ResponseUntrusted as exc:
            raise OutcomeUnknown(f"{exc} (HTTP 2xx, untrusted)") from None
        try:
            return refund_answer(
                request,
                status_code=response.status_code,
                body=response.body,
                headers=response.headers,
                key_serial=response.key_serial,
                request_id=response.request_id,
                received_at=response.received_at,
                data=response.data,
            )
        except ResponseUntrusted as exc:
            raise OutcomeUnknown(str(exc), status=response.status_code) from None

    def close_order(self, out_trade_no: str, *, sub_mchid: str | None = None) -> WeChatPayResponse:
        """[protocol: Closing an order]: close an unpaid order; success is a signed 204 with an empty body.
        With `sub_mchid`, a provider's ([protocol: Service providers]: `sp_mchid` and `sub_mchid` in the
        body). Closing again is harmless, so it is retried like a query."""
        number = _segment(out_trade_no)
        if sub_mchid is None:
            body = _compact({"mchid": self.mchid})
            return self._call("POST", f"/v3/pay/transactions/out-trade-no/{number}/close", body)
        body = _compact({"sp_mchid": self.mchid, "sub_mchid": sub_mchid})
        return self._call("POST", f"/v3/pay/partner/transactions/out-trade-no/{number}/close", body)

    def close_combined(
        self, combine_out_trade_no: str, *, combine_appid: str, sub_orders: Sequence[tuple[str, str | None]]
    ) -> WeChatPayResponse:
        """[protocol: Combined payments]: close a whole combined payment, naming every sub-order as
        (out_trade_no, sub_mchid or None); each sub-order's `mchid` is this merchant's (a provider's
        for its sub-merchants). A signed 204 like any close."""
        named: list[dict[str, str]] = []
        for out_trade_no, sub_mchid in sub_orders:
            entry = {"mchid": self.mchid, "out_trade_no": out_trade_no}
            named.append(entry if sub_mchid is None else {**entry, "sub_mchid": sub_mchid})
        body = _compact({"combine_appid": combine_appid, "sub_orders": named})
        return self._call("POST", f"/v3/combine-transactions/out-trade-no/{_segment(combine_out_trade_no)}/close", body)

    def download_certificates(self, *, verify: bool = True) -> WeChatPayResponse:
        """[protocol: Downloading platform certificates]: platform certificates. verify=False is only
        for the very first download, which the caller must re-verify with the certificates it contains."""
        return self._call("GET", "/v3/certificates", verify=verify)

    # -- daily bills ([protocol: Daily bills]) -----------------------------------------------

    def apply_trade_bill(
        self,
        bill_date: dt.date,
        *,
        bill_type: str = "ALL",
        tar_type: str | None = "GZIP",
        sub_mchid: str | None = None,
    ) -> BillTicket:
        """[protocol: Applying for a bill]: the trade bill of a Beijing day. `BillNotFound` for a day with
        nothing in it (final), `BillNotReady` while WeChat is making it."""
        query = [("bill_date", bill_date.isoformat()), ("sub_mchid", sub_mchid), ("bill_type", bill_type)]
        return self._apply_bill("/v3/bill/tradebill", [*query, ("tar_type", tar_type)])

    def apply_fundflow_bill(
        self, bill_date: dt.date, *, account_type: str = "BASIC", tar_type: str | None = "GZIP"
    ) -> BillTicket:
        """[protocol: Applying for a bill]: the fund-flow bill of one account for a Beijing day."""
        query = [("bill_date", bill_date.isoformat()), ("account_type", account_type), ("tar_type", tar_type)]
        return self._apply_bill("/v3/bill/fundflowbill", query)

    def _apply_bill(self, path: str, query: list[tuple[str, str | None]]) -> BillTicket:
        # The order WeChat's Java SDK sends, each value encoded; absent values are left out.
        target = path + "?" + "&".join(f"{name}={quote(value, safe='')}" for name, value in query if value)
        try:
            response = self._call("GET", target)
        except WeChatPayRejected as exc:
            bill_error = _BILL_ERRORS.get(exc.code) if exc.status == 400 else None
            if bill_error is None:
                raise
            raise bill_error(f"GET {target}: {exc.code}") from None
        tar_type = dict(query).get("tar_type")
        return ticket_from_answer(response.data, gzip=(tar_type or "").upper() == "GZIP")

    def download_bill(self, ticket: BillTicket, into: BinaryIO | IO[bytes]) -> BillDownload:
        """[protocol: Downloading a bill]: stream the file into `into`, decompressed, and check its SHA-1.

        Signed like every request, with the URL's path and query exactly as received; the answer is not
        signed and not verified, only hashed. On `BillDownloadFailed` (or `BillHashMismatch`) what was
        written to `into` is not the bill: discard it (`download_bill_to_temp` does). Not retried here: a
        download URL lives seconds to minutes, so a failed download is applied for again."""
        parts = urlsplit(ticket.download_url)
        where = f"GET {parts.path}"  # never the query: it holds the token
        if not self._may_download_from(parts.scheme, parts.hostname, parts.port):
            raise ResponseUntrusted(f"{where}: the download_url is not on WeChat Pay's host")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            request = self._request(
                "GET", target, b"", self._timeout, origin=httpx.URL(f"{parts.scheme}://{parts.netloc}"), accept="*/*"
            )
        except ValueError:
            raise ResponseUntrusted(f"{where}: the download_url cannot be sent as received") from None
        try:
            response = self._transport.handle_request(request)
        except httpx.HTTPError as exc:
            raise WeChatPayUnavailable(f"{where}: {type(exc).__name__}") from None
        response.request = request
        try:
            log.debug("wechatpay %s -> HTTP %d", where, response.status_code)
            if classify(response.status_code) != "ok":
                code, message = _error_fields(response.read())
                if classify(response.status_code) == "reject":
                    raise WeChatPayRejected(response.status_code, code, message)
                raise WeChatPayUnavailable(f"{where}: HTTP {response.status_code} {code}".rstrip())
            writer = BillWriter(ticket, into)
            for chunk in response.iter_bytes():
                writer.feed(chunk)
            return writer.finish()
        except httpx.HTTPError as exc:
            raise WeChatPayUnavailable(f"{where}: {type(exc).__name__}") from None
        finally:
            response.close()

    def _may_download_from(self, scheme: str, host: str | None, port: int | None) -> bool:
        origin = self._origin
        if (scheme, host, port or None) == (origin.scheme, origin.host, origin.port):
            return True
        return scheme == "https" and port in (None, 443) and host in BILL_DOWNLOAD_HOSTS

    # -- one call: attempts, retries, deadline -----------------------------------------------

    def _call(
        self, method: str, target: str, body: bytes = b"", *, verify: bool = True, max_attempts: int | None = None
    ) -> WeChatPayResponse:
        path = self._prefix + target
        started = self._clock()
        last = "no attempt within the deadline"
        last_status: int | None = None
        last_code = ""
        attempts = 0
        max_attempts = self._max_attempts if max_attempts is None else max_attempts
        while attempts < max_attempts:
            remaining = self._deadline - (self._clock() - started)
            if remaining <= 0:
                break
            attempts += 1
            response: httpx.Response | None = None
            sent_at = self._clock()
            try:
                response = self._http.send(self._request(method, path, body, min(self._timeout, remaining)))
            except httpx.HTTPError as exc:
                verdict, last = classify(None, exc), type(exc).__name__
            else:
                verdict, last = classify(response.status_code), f"HTTP {response.status_code}"
            duration = self._clock() - sent_at
            log.debug("wechatpay %s %s -> %s attempt=%d %.3fs", method, path, last, attempts, duration)
            if verdict == "ok" and response is not None:
                return self._trusted(method, path, response, verify)
            if response is not None:
                code, message = _error_fields(response.content)
                if verdict == "reject":
                    raise WeChatPayRejected(response.status_code, code, message)
                last = f"{last} {code}".rstrip()
                last_status, last_code = response.status_code, code
            elif verdict == "reject":
                raise WeChatPayUnavailable(f"{method} {path}: {last}")
            else:
                last_status, last_code = None, ""
            if attempts >= max_attempts:
                break
            delay = _retry_after(response)
            if delay is None:
                delay = random.uniform(0, self._backoff * 2 ** (attempts - 1))
            # Waiting past the deadline only to give up then helps nobody; give up now.
            if self._clock() - started + delay >= self._deadline:
                break
            self._sleep(delay)
        raise WeChatPayUnavailable(
            f"{method} {path}: gave up after {attempts} attempt(s), last {last}", status=last_status, code=last_code
        )

    def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        timeout: float,
        *,
        origin: httpx.URL | None = None,
        accept: str = "application/json",
    ) -> httpx.Request:
        timestamp = str(int(self._clock()))
        nonce = self._nonce()
        signature = sign(self._private_key, request_message(method, path, timestamp, nonce, body))
        headers = {
            "Accept": accept,
            "User-Agent": USER_AGENT,
            "Authorization": authorization_header(
                mchid=self.mchid,
                serial_no=self._merchant_serial_no,
                timestamp=timestamp,
                nonce=nonce,
                signature=signature,
            ),
        }
        if body:
            headers["Content-Type"] = "application/json"
        if self._wechatpay_serial:
            headers["Wechatpay-Serial"] = self._wechatpay_serial
        url = (origin or self._origin).copy_with(raw_path=path.encode("ascii"))
        request = self._http.build_request(method, url, content=body or None, headers=headers, timeout=timeout)
        # The signature covers the target byte for byte ([protocol: Signing a request]); never send one it
        # does not match.
        if request.url.raw_path != path.encode("ascii"):
            raise ValueError(f"request target would be rewritten: {path!r}")
        return request

    # -- trusting a 2xx ([protocol: Verifying an answer]) ----------------------------------------------------

    def _trusted(self, method: str, path: str, response: httpx.Response, verify: bool) -> WeChatPayResponse:
        body = response.content
        key_serial = self._verify(f"{method} {path}", response.headers, body) if verify else ""
        try:
            data = parse_json_object(body, "response body") if body else None
        except MalformedNotification as exc:
            raise ResponseUntrusted(f"{method} {path}: {exc}") from None
        return WeChatPayResponse(
            status_code=response.status_code,
            body=body,
            headers=_received_headers(response.headers),
            key_serial=key_serial,
            data=data,
            request_id=response.headers.get("Request-ID"),
            received_at=dt.datetime.fromtimestamp(self._clock(), dt.UTC),
        )

    def _verify(self, where: str, headers: httpx.Headers, body: bytes) -> str:
        try:
            signed = SignatureHeaders.from_headers(headers)
        except VerificationFailed as exc:
            raise ResponseUntrusted(f"{where}: {exc}") from exc
        keys = self._keys()
        try:
            return verify_signed_message(signed, body, keys, self._clock())
        except VerificationFailed as exc:
            serial = normalise_serial(signed.serial)
            if serial not in keys.serials:
                self._report_unknown_serial(serial)
            raise ResponseUntrusted(f"{where}: {exc}") from exc

    def _report_unknown_serial(self, serial: str) -> None:
        if self._on_unknown_serial is None:
            return
        try:
            self._on_unknown_serial(serial)
        except Exception:
            # A failing refresh must not hide the real answer: this response is untrusted.
            log.warning("on_unknown_serial hook failed for serial %s", serial[:64], exc_info=True)


def _received_headers(headers: httpx.Headers) -> dict[str, str]:
    """The headers with their names as received; a repeated header is joined with ", "."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers.raw:
        name, value = raw_name.decode(headers.encoding), raw_value.decode(headers.encoding)
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out
