"""WeChat's refund API as the sandbox serves it ([protocol: Creating a refund]): `POST /v3/refund/domestic/refunds`,
with the same Authorization check and answer signing as every endpoint of `api.py`.

A direct merchant's refund names no sub-merchant (naming one is 403 NO_AUTH); a provider's names its
`sub_mchid` in the body ([next: Partner queries]); a combined payment's sub-order is refunded by its own
`transaction_id` or `out_trade_no` ([next: Refunds of sub-orders]). The order must be paid and the amount at
most what is left; the same `out_refund_no` asked again for the same order and amounts is answered with the
refund as it now is, and nothing more is refunded ([protocol: Creating a refund]). An accepted refund is
PROCESSING; `refund_delay` seconds later (divided by the time scale, like the retry schedule) it
succeeds and REFUND.SUCCESS is sent, as the sandbox's other refunds are told.

Faults, one per coming refund request (`fail_next`), for the ledger's tests of an unknown outcome:
`timeout_after_accept` (accepted and recorded, the answer held back `refund_hold` seconds or until the
client hangs up), `error_5xx` (500 SYSTEM_ERROR, nothing accepted), `error_5xx_after_accept` (accepted,
then 500 SYSTEM_ERROR), `not_enough` (403 NOT_ENOUGH, nothing accepted). Every request to the path is
kept by out_refund_no as it arrived, before any check (`received`), so a test can prove what WeChat saw.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ledger.wechatpay.sandbox import views
from ledger.wechatpay.sandbox.api_partner import json_object
from ledger.wechatpay.sandbox.orders import RefundAsk, SandboxError

if TYPE_CHECKING:
    from ledger.wechatpay.sandbox.server import Sandbox

__all__ = ["REFUND_FAULTS", "REFUND_PATH", "Held", "RefundDesk"]

REFUND_PATH = "/v3/refund/domestic/refunds"
REFUND_FAULTS = ("timeout_after_accept", "error_5xx", "error_5xx_after_accept", "not_enough")
_OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
_NUMBER = re.compile(r"[0-9A-Za-z_\-|*@]{1,32}")
_SYSTEM_ERROR = (500, "SYSTEM_ERROR", "系统超时，请不要更换商户退款单号，请使用相同参数再次调用API")


@dataclass(frozen=True)
class Held:
    """An answer held back `seconds`, or until the client hangs up, before it is signed and sent."""

    payload: Any
    seconds: float


def _optional_text(data: dict[str, Any], name: str, longest: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= longest:
        raise SandboxError(400, "PARAM_ERROR", f"{name} 长度或格式错误")
    return value


def _fen(amount: dict[str, Any], name: str) -> int:
    value = amount.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SandboxError(400, "PARAM_ERROR", f"amount.{name} 必须为正整数")
    return value


class RefundDesk:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self._faults: list[str] = []
        self._received: dict[tuple[str, str], list[bytes]] = {}

    # -- faults and what was seen ------------------------------------------------------------------

    def fail_next(self, fault: str, n: int = 1) -> None:
        if fault not in REFUND_FAULTS:
            raise SandboxError(400, "PARAM_ERROR", f"a refund fault is one of {', '.join(REFUND_FAULTS)}")
        if n < 0:
            raise SandboxError(400, "PARAM_ERROR", "a count of requests cannot be negative")
        with self._lock:
            self._faults.extend([fault] * n)

    @property
    def faults(self) -> list[str]:
        with self._lock:
            return list(self._faults)

    def observe(self, body: bytes) -> None:
        """Keep a request's body under its out_refund_no (and sub_mchid), whatever is answered."""
        try:
            data = json.loads(body)
        except ValueError:
            return
        if not isinstance(data, dict) or not isinstance(data.get("out_refund_no"), str):
            return
        sub_mchid = data.get("sub_mchid")
        key = (sub_mchid if isinstance(sub_mchid, str) else "", data["out_refund_no"])
        with self._lock:
            self._received.setdefault(key, []).append(body)

    def received(self, out_refund_no: str, sub_mchid: str | None = None) -> list[bytes]:
        """Every refund request body that named `out_refund_no` (a provider's: and `sub_mchid`), in order."""
        with self._lock:
            return list(self._received.get((sub_mchid or "", out_refund_no), []))

    # -- the endpoint ----------------------------------------------------------------------------------

    def _ask(self, data: dict[str, Any]) -> RefundAsk:
        sandbox = self._sandbox
        sub_mchid = data.get("sub_mchid")
        if not sandbox.partner and sub_mchid is not None:
            raise SandboxError(403, "NO_AUTH", "非服务商不能指定子商户号")
        if sandbox.partner:
            if not isinstance(sub_mchid, str) or not sub_mchid:
                raise SandboxError(400, "PARAM_ERROR", "sub_mchid 为必填项")
            if sub_mchid not in sandbox.sub_mchids:
                raise SandboxError(400, "INVALID_REQUEST", "特约商户与服务商不存在受理关系")
        out_refund_no = data.get("out_refund_no")
        if not isinstance(out_refund_no, str) or not _OUT_REFUND_NO.fullmatch(out_refund_no):
            raise SandboxError(400, "PARAM_ERROR", "out_refund_no 为必填项，1-64位数字、大小写字母_-|*@")
        numbers = [data.get(name) for name in ("transaction_id", "out_trade_no")]
        if all(n is None for n in numbers):
            raise SandboxError(400, "PARAM_ERROR", "transaction_id与out_trade_no须二选一")
        if not all(n is None or (isinstance(n, str) and _NUMBER.fullmatch(n)) for n in numbers):
            raise SandboxError(400, "PARAM_ERROR", "transaction_id或out_trade_no格式错误")
        amount = data.get("amount")
        if not isinstance(amount, dict):
            raise SandboxError(400, "PARAM_ERROR", "amount 为必填项")
        refund, total = _fen(amount, "refund"), _fen(amount, "total")
        if amount.get("currency") != "CNY":
            raise SandboxError(400, "PARAM_ERROR", "amount.currency 须为CNY")
        _optional_text(data, "reason", 80)
        notify_url = _optional_text(data, "notify_url", 256)
        if notify_url is not None and not notify_url.startswith(("https://", "http://")):
            raise SandboxError(400, "PARAM_ERROR", "notify_url 格式错误")
        return RefundAsk(
            out_refund_no,
            refund,
            total,
            transaction_id=numbers[0],
            out_trade_no=numbers[1],
            sub_mchid=sub_mchid if sandbox.partner else None,
            notify_url=notify_url,
        )

    def create(self, request: Request, body: bytes) -> tuple[int, Any]:
        """[protocol: Creating a refund]: 200 with the refund (as a refund query shows it), or WeChat's refusal."""
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault == "error_5xx":
            raise SandboxError(*_SYSTEM_ERROR)
        if fault == "not_enough":
            raise SandboxError(403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起")
        sandbox = self._sandbox
        order, refund, new = sandbox.orders.request_refund(self._ask(json_object(body)))
        if new and sandbox.refund_delay is not None:
            delay = sandbox.refund_delay / sandbox.time_scale
            asyncio.get_running_loop().call_later(delay, self._succeed, refund.out_refund_no, order.sub_mchid)
        answer = views.refund_query(order, refund)
        if fault == "error_5xx_after_accept":
            raise SandboxError(*_SYSTEM_ERROR)
        if fault == "timeout_after_accept":
            return 200, Held(answer, sandbox.refund_hold)
        return 200, answer

    def _succeed(self, out_refund_no: str, sub_mchid: str | None) -> None:
        """A refund still PROCESSING succeeds, and REFUND.SUCCESS is sent; one settled meanwhile stays as it is."""
        try:
            self._sandbox.complete_refund(out_refund_no, "SUCCESS", sub_mchid=sub_mchid)
        except SandboxError:
            pass  # completed by hand (`complete_refund`) in the meantime
