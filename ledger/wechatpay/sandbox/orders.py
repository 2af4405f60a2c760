"""The sandbox's order book: WeChat Pay's side of orders and refunds, and the JSON it answers with.

State changes follow [protocol: Querying an order]'s `trade_state` table; the JSON is [protocol: The payment
resource] (transactions), [protocol: The refund resource] (refund notifications) and [protocol: Querying a
refund] (refund queries, where the state is `status`)."""

from __future__ import annotations

import copy
import datetime as dt
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger.wechatpay.sandbox.signer import NotificationFactory

__all__ = ["REFUND_STATUSES", "Order", "OrderBook", "Refund", "SandboxError", "rfc3339"]

CST = dt.timezone(dt.timedelta(hours=8))
REFUND_STATUSES = ("SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING")
_OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
_OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
_TRADE_STATE_DESC = {
    "NOTPAY": "订单未支付",
    "SUCCESS": "支付成功",
    "REFUND": "订单发生过退款",
    "CLOSED": "订单已关闭",
}


def rfc3339(timestamp: float) -> str:
    """Beijing time with its offset, to the second, as WeChat writes times."""
    return dt.datetime.fromtimestamp(timestamp, CST).replace(microsecond=0).isoformat()


class SandboxError(Exception):
    """A request WeChat Pay would refuse: `status`, `code` and `message` as WeChat answers them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Refund:
    out_refund_no: str
    refund_id: str
    amount: int
    status: str
    create_time: str
    success_time: str | None = None


@dataclass
class Order:
    out_trade_no: str
    total: int
    description: str = ""
    notify_url: str | None = None
    trade_state: str = "NOTPAY"
    transaction_id: str | None = None
    success_time: str | None = None
    payer_total: int | None = None
    refunds: dict[str, Refund] = field(default_factory=dict)

    @property
    def refundable(self) -> int:
        """What is left to refund; closed refunds gave their amount back."""
        return self.total - sum(r.amount for r in self.refunds.values() if r.status != "CLOSED")


class OrderBook:
    """Orders by `out_trade_no`; every method is atomic under the sandbox's lock."""

    def __init__(
        self,
        factory: NotificationFactory,
        *,
        mchid: str,
        appid: str,
        rng: random.Random,
        clock: Callable[[], float],
        lock: threading.RLock,
    ) -> None:
        self._factory = factory
        self._mchid = mchid
        self._appid = appid
        self._rng = rng
        self._clock = clock
        self._lock = lock
        self._orders: dict[str, Order] = {}

    # -- changes -----------------------------------------------------------------------------

    def create(self, out_trade_no: str, total: int, description: str, notify_url: str | None) -> Order:
        if not _OUT_TRADE_NO.fullmatch(out_trade_no):
            raise SandboxError(400, "PARAM_ERROR", "out_trade_no must be 6-32 of [0-9A-Za-z_-|*]")
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise SandboxError(400, "PARAM_ERROR", "amount total must be a positive integer (fen)")
        with self._lock:
            if out_trade_no in self._orders:
                raise SandboxError(400, "OUT_TRADE_NO_USED", "商户订单号重复")
            order = Order(out_trade_no, total, description, notify_url)
            self._orders[out_trade_no] = order
            return copy.deepcopy(order)

    def pay(self, out_trade_no: str, payer_total: int | None) -> Order:
        with self._lock:
            order = self._get(out_trade_no)
            if order.trade_state in {"SUCCESS", "REFUND"}:
                raise SandboxError(400, "ORDER_PAID", "订单已支付")
            if order.trade_state == "CLOSED":
                raise SandboxError(400, "ORDER_CLOSED", "订单已关闭")
            order.trade_state = "SUCCESS"
            order.transaction_id = f"42000{self._rng.randrange(10**23):023d}"
            order.success_time = rfc3339(self._clock())
            order.payer_total = payer_total
            return copy.deepcopy(order)

    def refund(self, out_trade_no: str, out_refund_no: str, amount: int, status: str) -> tuple[Order, Refund]:
        if not _OUT_REFUND_NO.fullmatch(out_refund_no):
            raise SandboxError(400, "PARAM_ERROR", "out_refund_no must be 1-64 of [0-9A-Za-z_-|*@]")
        if status not in REFUND_STATUSES:
            raise SandboxError(400, "PARAM_ERROR", f"refund status must be one of {', '.join(REFUND_STATUSES)}")
        with self._lock:
            order = self._get(out_trade_no)
            if order.trade_state not in {"SUCCESS", "REFUND"}:
                raise SandboxError(400, "INVALID_REQUEST", "订单未支付，不能退款")
            if any(out_refund_no in o.refunds for o in self._orders.values()):
                raise SandboxError(400, "INVALID_REQUEST", "商户退款单号重复")
            if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= order.refundable:
                raise SandboxError(400, "NOT_ENOUGH", "退款金额超过订单可退金额")
            refund = Refund(
                out_refund_no=out_refund_no,
                refund_id=f"50300{self._rng.randrange(10**24):024d}",
                amount=amount,
                status="PROCESSING",
                create_time=rfc3339(self._clock()),
            )
            order.refunds[out_refund_no] = refund
            self._settle(order, refund, status)
            return copy.deepcopy(order), copy.deepcopy(refund)

    def complete_refund(self, out_refund_no: str, status: str) -> tuple[Order, Refund]:
        if status not in REFUND_STATUSES[:3]:
            raise SandboxError(400, "PARAM_ERROR", "a refund completes as SUCCESS, CLOSED or ABNORMAL")
        with self._lock:
            order, refund = self._find_refund(out_refund_no)
            if refund.status != "PROCESSING":
                raise SandboxError(400, "INVALID_REQUEST", f"refund is already {refund.status}")
            self._settle(order, refund, status)
            return copy.deepcopy(order), copy.deepcopy(refund)

    def _settle(self, order: Order, refund: Refund, status: str) -> None:
        refund.status = status
        if status == "SUCCESS":
            refund.success_time = rfc3339(self._clock())
        # [protocol: Querying an order]: REFUND means a refund was initiated; a closed refund initiated nothing.
        if any(r.status != "CLOSED" for r in order.refunds.values()):
            order.trade_state = "REFUND"

    def close(self, out_trade_no: str) -> None:
        with self._lock:
            order = self._get(out_trade_no)
            if order.trade_state in {"SUCCESS", "REFUND"}:
                raise SandboxError(400, "ORDER_PAID", "订单已支付")
            order.trade_state = "CLOSED"

    # -- lookups -------------------------------------------------------------------------------

    def order(self, out_trade_no: str) -> Order:
        with self._lock:
            return copy.deepcopy(self._get(out_trade_no))

    def all(self) -> list[Order]:
        """Every order, in the order they were created (the daily bills read them)."""
        with self._lock:
            return copy.deepcopy(list(self._orders.values()))

    def by_transaction_id(self, transaction_id: str) -> Order:
        with self._lock:
            for order in self._orders.values():
                if order.transaction_id == transaction_id:
                    return copy.deepcopy(order)
        raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")

    def refund_of(self, out_refund_no: str) -> tuple[Order, Refund]:
        with self._lock:
            order, refund = self._find_refund(out_refund_no)
            return copy.deepcopy(order), copy.deepcopy(refund)

    def _get(self, out_trade_no: str) -> Order:
        order = self._orders.get(out_trade_no)
        if order is None:
            raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def _find_refund(self, out_refund_no: str) -> tuple[Order, Refund]:
        for order in self._orders.values():
            if out_refund_no in order.refunds:
                return order, order.refunds[out_refund_no]
        raise SandboxError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")

    # -- what WeChat says about them -----------------------------------------------------------

    def transaction(self, order: Order) -> dict[str, Any]:
        """[protocol: The payment resource; Querying an order]; an order never paid has no transaction_id,
        payer or success_time."""
        desc = _TRADE_STATE_DESC.get(order.trade_state, order.trade_state)
        if order.transaction_id is None:
            return {
                "amount": {"payer_currency": "CNY", "total": order.total},
                "appid": self._appid,
                "mchid": self._mchid,
                "out_trade_no": order.out_trade_no,
                "promotion_detail": [],
                "scene_info": {"device_id": ""},
                "trade_state": order.trade_state,
                "trade_state_desc": desc,
            }
        resource = self._factory.transaction(
            order.out_trade_no,
            order.total,
            transaction_id=order.transaction_id,
            trade_state=order.trade_state,
            success_time=order.success_time or rfc3339(self._clock()),
            mchid=self._mchid,
            appid=self._appid,
            payer_total=order.payer_total,
        )
        resource["trade_state_desc"] = desc
        return resource

    def refund_resource(self, order: Order, refund: Refund) -> dict[str, Any]:
        """[protocol: The refund resource]: the decrypted REFUND.* notification resource (state named
        `refund_status`)."""
        resource = self._factory.refund(
            order.out_trade_no,
            refund.out_refund_no,
            refund.amount,
            order.total,
            refund_status=refund.status,
            transaction_id=order.transaction_id or "",
            refund_id=refund.refund_id,
            mchid=self._mchid,
        )
        if refund.success_time is not None:
            resource["success_time"] = refund.success_time
        return resource

    def refund_query(self, order: Order, refund: Refund) -> dict[str, Any]:
        """[protocol: Querying a refund]: the refund query answer (state named `status`)."""
        payer_total = order.total if order.payer_total is None else order.payer_total
        body: dict[str, Any] = {
            "amount": {
                "currency": "CNY",
                "discount_refund": 0,
                "from": [],
                "payer_refund": refund.amount,
                "payer_total": payer_total,
                "refund": refund.amount,
                "refund_fee": 0,
                "settlement_refund": refund.amount,
                "settlement_total": order.total,
                "total": order.total,
            },
            "channel": "ORIGINAL",
            "create_time": refund.create_time,
            "funds_account": "AVAILABLE",
            "out_refund_no": refund.out_refund_no,
            "out_trade_no": order.out_trade_no,
            "promotion_detail": [],
            "refund_id": refund.refund_id,
            "status": refund.status,
            "transaction_id": order.transaction_id,
            "user_received_account": "支付用户零钱",
        }
        if refund.success_time is not None:
            body["success_time"] = refund.success_time
        return body
