"""WeChat Pay's merchant APIs as the sandbox serves them ([protocol: Querying an order … Downloading platform
certificates; Daily bills]): query, close, certificates, and applying for and downloading daily bills;
the service-provider and combined-payment paths are in `api_partner.py`, refund creation in `refunds.py`.

A request needs a valid merchant ``Authorization`` ([protocol: Signing a request]) or it is answered 401 SIGN_ERROR;
every 2xx is signed as WeChat signs it ([protocol: Verifying an answer]), error answers and bill files
([protocol: Downloading a bill]) are not. For the client's tests,
faults can be injected: failures, probe signatures ([protocol: Signature probes]) and a body altered after signing.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.wechatpay import aead
from ledger.wechatpay.keys import normalise_serial
from ledger.wechatpay.sandbox import views
from ledger.wechatpay.sandbox.api_partner import PartnerEndpoints, json_object, not_combined
from ledger.wechatpay.sandbox.bills import parse_bill_date
from ledger.wechatpay.sandbox.orders import Order, SandboxError, rfc3339
from ledger.wechatpay.sandbox.refunds import REFUND_PATH, Held, RefundDesk
from ledger.wechatpay.sandbox.signer import serial_hex
from ledger.wechatpay.signature import (
    PROBE_PREFIX,
    SIGNATURE_TYPE,
    TIMESTAMP_TOLERANCE,
    build_message,
    new_nonce,
    verify,
)

if TYPE_CHECKING:
    from ledger.wechatpay.sandbox.server import Sandbox

__all__ = ["ApiRequest", "RawBody", "WeChatApi", "parse_authorization"]

_PAIR = re.compile(r'\s*([A-Za-z_]+)="([^"]*)"\s*')
_AUTHORIZATION_KEYS = {"mchid", "nonce_str", "timestamp", "serial_no", "signature"}
_DEFAULT_FAILURES = {
    429: ("FREQUENCY_LIMITED", "请求频率超过限制"),
    500: ("SYSTEM_ERROR", "系统繁忙，请稍后重试"),
}
_BAD_FORMAT = "Http头Authorization值格式错误，请参考《微信支付商户REST API签名规则》"

Handler = Callable[[Request, bytes], tuple[int, Any]]
Observer = Callable[[bytes], None]


def parse_authorization(value: str) -> dict[str, str] | None:
    """The ``key="value"`` pairs of a WECHATPAY2-SHA256-RSA2048 header, in any order."""
    scheme, _, params = value.partition(" ")
    if scheme != SIGNATURE_TYPE:
        return None
    pairs: dict[str, str] = {}
    for item in params.split(","):
        match = _PAIR.fullmatch(item)
        if match is None or match[1] in pairs:
            return None
        pairs[match[1]] = match[2]
    return pairs


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


def _request_id() -> str:
    return f"08{secrets.token_hex(15).upper()}"


def _error(status: int, code: str, message: str) -> Response:
    return Response(
        _json({"code": code, "message": message}),
        status,
        headers={"Request-ID": _request_id()},
        media_type="application/json",
    )


def _tampered(body: bytes) -> bytes:
    """One byte changed, still valid JSON of the same length: an amount or id digit if any."""
    data = bytearray(body)
    for i in range(len(data) - 1, -1, -1):
        if 0x30 <= data[i] <= 0x39:
            data[i] = 0x30 + (data[i] - 0x30 + 1) % 10
            return bytes(data)
    for i in range(len(data) - 1, -1, -1):
        if chr(data[i]).isalpha() and data[i] < 0x80:
            data[i] ^= 0x20
            return bytes(data)
    return body


async def _hold(request: Request, seconds: float) -> None:
    """Answer nothing for `seconds`, or until the client hangs up (as a client that timed out does)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.02)


def _check_count(n: int) -> None:
    if n < 0:
        raise SandboxError(400, "PARAM_ERROR", "a count of responses cannot be negative")


@dataclass(frozen=True)
class RawBody:
    """A handler's answer sent as it is, unsigned: a bill file."""

    content: bytes
    media_type: str


@dataclass(frozen=True)
class ApiRequest:
    """One request to a WeChat endpoint, as served."""

    method: str
    path: str
    target: str
    status: int


class WeChatApi:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._failures: list[tuple[int, str, str]] = []
        self._probes = 0
        self._tampers = 0
        self._requests: list[ApiRequest] = []
        self.refunds = RefundDesk(sandbox)

    def routes(self) -> list[Route]:
        def route(path: str, handler: Handler, method: str, observe: Observer | None = None) -> Route:
            async def endpoint(request: Request) -> Response:
                return await self._serve(request, handler, observe)

            return Route(path, endpoint, methods=[method])

        return [
            route("/v3/pay/transactions/out-trade-no/{out_trade_no}", self._query_out_trade_no, "GET"),
            route("/v3/pay/transactions/id/{transaction_id}", self._query_transaction_id, "GET"),
            route("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", self._close, "POST"),
            route("/v3/refund/domestic/refunds/{out_refund_no}", self._query_refund, "GET"),
            route(REFUND_PATH, self.refunds.create, "POST", self.refunds.observe),
            route("/v3/certificates", self._certificates, "GET"),
            route("/v3/bill/tradebill", self._trade_bill, "GET"),
            route("/v3/bill/fundflowbill", self._fundflow_bill, "GET"),
            route("/v3/billdownload/file", self._download_bill, "GET"),
            *(route(path, handler, method) for path, handler, method in PartnerEndpoints(self._sandbox).paths()),
        ]

    # -- fault injection -------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, code: str | None = None, message: str | None = None) -> None:
        _check_count(n)
        if not 400 <= status <= 599:
            raise SandboxError(400, "PARAM_ERROR", "an injected failure is a 4xx or 5xx status")
        default = _DEFAULT_FAILURES.get(status, ("SYSTEM_ERROR" if status >= 500 else "INVALID_REQUEST", ""))
        failure = (status, code or default[0], message or default[1] or f"sandbox injected {status}")
        with self._lock:
            self._failures.extend([failure] * n)

    def probe_next_response(self, n: int = 1) -> None:
        _check_count(n)
        with self._lock:
            self._probes += n

    def tamper_next_response(self, n: int = 1) -> None:
        _check_count(n)
        with self._lock:
            self._tampers += n

    @property
    def requests(self) -> list[ApiRequest]:
        with self._lock:
            return list(self._requests)

    # -- one request -----------------------------------------------------------------------------

    async def _serve(self, request: Request, handler: Handler, observe: Observer | None = None) -> Response:
        body = await request.body()
        if observe is not None:
            observe(body)
        target: bytes = request.scope.get("raw_path") or request.url.path.encode()
        if request.scope.get("query_string"):
            target += b"?" + request.scope["query_string"]
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            response = _error(*failure)
        elif (problem := self._authorization_problem(request, target, body)) is not None:
            response = _error(401, "SIGN_ERROR", problem)
        else:
            try:
                status, payload = handler(request, body)
            except SandboxError as exc:
                response = _error(exc.status, exc.code, exc.message)
            else:
                if isinstance(payload, Held):
                    await _hold(request, payload.seconds)
                    payload = payload.payload
                if isinstance(payload, RawBody):
                    headers = {"Request-ID": _request_id()}
                    response = Response(payload.content, status, headers=headers, media_type=payload.media_type)
                else:
                    response = self._signed(request, status, b"" if payload is None else _json(payload))
        with self._lock:
            self._requests.append(
                ApiRequest(request.method, request.url.path, target.decode("latin-1"), response.status_code)
            )
        return response

    def _authorization_problem(self, request: Request, target: bytes, body: bytes) -> str | None:
        """Why WeChat would answer SIGN_ERROR, or None when the request is signed correctly."""
        sandbox = self._sandbox
        header = request.headers.get("Authorization")
        if header is None:
            return "Http头缺少Authorization"
        params = parse_authorization(header)
        if params is None or not _AUTHORIZATION_KEYS <= params.keys():
            return _BAD_FORMAT
        if params["mchid"] != sandbox.mchid:
            return "Authorization中的mchid与商户号不匹配"
        if normalise_serial(params["serial_no"]) != normalise_serial(sandbox.merchant_serial_no):
            return "商户证书序列号有误。请使用签名私钥匹配的证书序列号"
        ts = params["timestamp"]
        if not (ts.isascii() and ts.isdigit() and len(ts) <= 12):
            return _BAD_FORMAT
        if abs(int(sandbox.clock()) - int(ts)) > TIMESTAMP_TOLERANCE:
            return "Authorization中的timestamp与当前时间相差超过5分钟"
        message = build_message(request.method.upper(), target, ts, params["nonce_str"], body)
        if not verify(sandbox.merchant_private_key.public_key(), message, params["signature"]):
            return "签名错误，请检查后再试"
        return None

    def _signed(self, request: Request, status: int, content: bytes) -> Response:
        sandbox = self._sandbox
        key = sandbox.signing_key(request.headers.get("Wechatpay-Serial"))
        headers = key.factory.sign_headers(content, timestamp=int(sandbox.clock()), serial=key.serial)
        with self._lock:
            probe, self._probes = self._probes > 0, max(0, self._probes - 1)
            tamper = self._tampers > 0 and bool(content)
            self._tampers -= int(tamper)
        if probe:
            headers["Wechatpay-Signature"] = PROBE_PREFIX + secrets.token_urlsafe(24)
        if tamper:
            content = _tampered(content)
        return Response(content, status, headers=headers, media_type="application/json" if content else None)

    # -- the endpoints ---------------------------------------------------------------------------

    def _require_mchid(self, mchid: object) -> None:
        if not isinstance(mchid, str) or not mchid:
            raise SandboxError(400, "PARAM_ERROR", "mchid 为必填项")
        # [protocol: Errors and retries]: a wrong mchid finds no order; a provider has no orders of its own.
        if mchid != self._sandbox.mchid or self._sandbox.partner:
            raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")

    def _transaction(self, order: Order) -> dict[str, Any]:
        return views.transaction(self._sandbox.merchant, not_combined(order))

    def _query_out_trade_no(self, request: Request, body: bytes) -> tuple[int, Any]:
        self._require_mchid(request.query_params.get("mchid"))
        return 200, self._transaction(self._sandbox.orders.order(request.path_params["out_trade_no"]))

    def _query_transaction_id(self, request: Request, body: bytes) -> tuple[int, Any]:
        self._require_mchid(request.query_params.get("mchid"))
        return 200, self._transaction(self._sandbox.orders.by_transaction_id(request.path_params["transaction_id"]))

    def _query_refund(self, request: Request, body: bytes) -> tuple[int, Any]:
        """[next: Partner queries]: the same path for a provider, with `sub_mchid` added."""
        sub_mchid = request.query_params.get("sub_mchid")
        if sub_mchid is not None and not self._sandbox.partner:
            raise SandboxError(403, "NO_AUTH", "非服务商不能指定子商户号")
        orders = self._sandbox.orders
        return 200, views.refund_query(*orders.refund_of(request.path_params["out_refund_no"], sub_mchid))

    def _close(self, request: Request, body: bytes) -> tuple[int, Any]:
        data = json_object(body)
        self._require_mchid(data.get("mchid"))
        orders = self._sandbox.orders
        not_combined(orders.order(request.path_params["out_trade_no"]))
        orders.close(request.path_params["out_trade_no"])
        return 204, None

    def _certificates(self, request: Request, body: bytes) -> tuple[int, Any]:
        sandbox = self._sandbox
        certificates = sandbox.listed_certificates()
        if not certificates:
            raise SandboxError(404, "RESOURCE_NOT_EXISTS", "无可用的平台证书，请在商户平台-API安全申请使用微信支付公钥")
        key = sandbox.factory.apiv3_key.encode()
        data = []
        for cert in certificates:
            nonce = new_nonce(12)
            pem = cert.public_bytes(serialization.Encoding.PEM)
            data.append(
                {
                    "serial_no": serial_hex(cert.serial_number),
                    "effective_time": rfc3339(cert.not_valid_before_utc.timestamp()),
                    "expire_time": rfc3339(cert.not_valid_after_utc.timestamp()),
                    "encrypt_certificate": {
                        "algorithm": aead.ALGORITHM,
                        "nonce": nonce,
                        "associated_data": "certificate",
                        "ciphertext": aead.encrypt(key, nonce, "certificate", pem),
                    },
                }
            )
        return 200, {"data": data}

    # -- daily bills ([protocol: Daily bills]) ---------------------------------------------------------

    @staticmethod
    def _gzipped(tar_type: str | None) -> bool:
        if tar_type not in (None, "GZIP"):
            raise SandboxError(400, "PARAM_ERROR", "tar_type 取值错误")
        return tar_type == "GZIP"

    def _trade_bill(self, request: Request, body: bytes) -> tuple[int, Any]:
        query = request.query_params
        if query.get("bill_type", "ALL") != "ALL":
            raise SandboxError(400, "PARAM_ERROR", "the sandbox writes ALL bills only")
        bills = self._sandbox.bills
        date = parse_bill_date(query.get("bill_date"))
        gzipped = self._gzipped(query.get("tar_type"))
        base_url = str(request.base_url)
        return 200, bills.apply("trade", date, base_url=base_url, gzipped=gzipped, sub_mchid=query.get("sub_mchid"))

    def _fundflow_bill(self, request: Request, body: bytes) -> tuple[int, Any]:
        query = request.query_params
        date = parse_bill_date(query.get("bill_date"))
        gzipped = self._gzipped(query.get("tar_type"))
        account_type = query.get("account_type", "BASIC")
        base_url = str(request.base_url)
        return 200, self._sandbox.bills.apply(
            "fundflow", date, base_url=base_url, gzipped=gzipped, account_type=account_type
        )

    def _download_bill(self, request: Request, body: bytes) -> tuple[int, Any]:
        content, media_type = self._sandbox.bills.download(request.query_params.get("token", ""))
        return 200, RawBody(content, media_type)
