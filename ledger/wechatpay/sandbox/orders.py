"""The sandbox's order book: WeChat Pay's side of orders, combined orders and refunds.

State changes follow [protocol: Querying an order]'s `trade_state` table. A direct merchant's orders
are identified by `out_trade_no`; a service provider's ([next: Service-provider mode]) by (`sub_mchid`,
`out_trade_no`), so the same number under two sub-merchants is two orders, and refund numbers are unique
per sub-merchant. A combined order ([next: Combined payments]) is its sub-orders, each an order of its
own, paid together. What WeChat says about them, as JSON, is `views.py`.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger.wechatpay.sandbox.resources import Party, Promotion

__all__ = [
    "REFUND_STATUSES",
    "Merchant",
    "Order",
    "OrderBook",
    "Refund",
    "RefundAsk",
    "SandboxError",
    "SubOrder",
    "rfc3339",
]

CST = dt.timezone(dt.timedelta(hours=8))
REFUND_STATUSES = ("SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING")
_OUT_TRADE_NO = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
_OUT_REFUND_NO = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
_MCHID = re.compile(r"[0-9]{6,32}")


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


@dataclass(frozen=True)
class Merchant:
    """Who the sandbox is: a direct merchant, or (with `sub_mchids`) a service provider whose `mchid`
    and `appid` are its `sp_mchid` and `sp_appid`, serving those sub-merchants."""

    mchid: str
    appid: str
    sub_mchids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for sub_mchid in self.sub_mchids:
            if not _MCHID.fullmatch(sub_mchid):
                raise ValueError(f"a sub_mchid is 6-32 digits, not {sub_mchid!r}")

    @property
    def partner(self) -> bool:
        return bool(self.sub_mchids)

    def party(self, order: Order) -> Party:
        return Party(self.mchid, self.appid, order.sub_mchid, order.sub_appid)


@dataclass
class Refund:
    out_refund_no: str
    refund_id: str
    amount: int
    status: str
    create_time: str
    success_time: str | None = None
    notify_url: str | None = None  # the refund request's own, which wins over the order's and the sandbox's


@dataclass(frozen=True)
class RefundAsk:
    """A refund asked for through WeChat's API ([protocol: Creating a refund]): of the order named by
    `transaction_id` or `out_trade_no` (a sub-merchant's: `sub_mchid`), `refund` fen of its `total`."""

    out_refund_no: str
    refund: int
    total: int
    transaction_id: str | None = None
    out_trade_no: str | None = None
    sub_mchid: str | None = None
    notify_url: str | None = None


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
    sub_mchid: str | None = None
    sub_appid: str | None = None
    attach: str = ""
    combine_out_trade_no: str | None = None
    promotions: tuple[Promotion, ...] = ()

    @property
    def refundable(self) -> int:
        """What is left to refund; closed refunds gave their amount back."""
        return self.total - sum(r.amount for r in self.refunds.values() if r.status != "CLOSED")

    @property
    def settlement_total(self) -> int:
        """What the merchant is settled: the total less the coupons it funded itself (免充值, NOCASH)."""
        return self.total - sum(p.amount for p in self.promotions if p.type == "NOCASH")

    @property
    def paid_by_payer(self) -> int:
        return self.total if self.payer_total is None else self.payer_total


@dataclass(frozen=True)
class SubOrder:
    """An order asked for: on its own, or as one sub-order of a combined order. Its own number and amount,
    and in partner mode the sub-merchant paid (and, if given, the sub-merchant's appid)."""

    out_trade_no: str
    amount_total: int
    sub_mchid: str | None = None
    sub_appid: str | None = None
    description: str = ""
    attach: str = ""


def _check_amount(total: object, what: str = "amount total") -> None:
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise SandboxError(400, "PARAM_ERROR", f"{what} must be a positive integer (fen)")


class OrderBook:
    """Orders by (`sub_mchid`, `out_trade_no`); every method is atomic under the sandbox's lock."""

    def __init__(
        self,
        merchant: Merchant,
        *,
        rng: random.Random,
        clock: Callable[[], float],
        lock: threading.RLock,
    ) -> None:
        self.merchant = merchant
        self._rng = rng
        self._clock = clock
        self._lock = lock
        self._orders: dict[tuple[str, str], Order] = {}
        self._combined: dict[str, list[tuple[str, str]]] = {}

    # -- who -----------------------------------------------------------------------------------

    def _scope(self, sub_mchid: str | None) -> str:
        """The sub-merchant an order or refund belongs to ("" for a direct merchant's)."""
        if not self.merchant.partner:
            if sub_mchid is not None:
                raise SandboxError(400, "PARAM_ERROR", "a direct merchant's orders have no sub_mchid")
            return ""
        if not sub_mchid:
            raise SandboxError(400, "PARAM_ERROR", "sub_mchid 为必填项")
        return sub_mchid

    def _serves(self, sub_mchid: str | None) -> str:
        scope = self._scope(sub_mchid)
        if self.merchant.partner and scope not in self.merchant.sub_mchids:
            raise SandboxError(400, "INVALID_REQUEST", "特约商户与服务商不存在受理关系")
        return scope

    # -- changes -----------------------------------------------------------------------------

    def create(self, asked: SubOrder, notify_url: str | None = None) -> Order:
        """A NOTPAY order as `asked`; `notify_url` overrides the sandbox's for its notifications."""
        with self._lock:
            order = self._new(asked, notify_url)
            self._orders[(order.sub_mchid or "", order.out_trade_no)] = order
            return copy.deepcopy(order)

    def _new(self, asked: SubOrder, notify_url: str | None) -> Order:
        scope = self._serves(asked.sub_mchid)
        if not _OUT_TRADE_NO.fullmatch(asked.out_trade_no):
            raise SandboxError(400, "PARAM_ERROR", "out_trade_no must be 6-32 of [0-9A-Za-z_-|*]")
        _check_amount(asked.amount_total)
        if asked.sub_appid is not None and not self.merchant.partner:
            raise SandboxError(400, "PARAM_ERROR", "a direct merchant's orders have no sub_appid")
        if (scope, asked.out_trade_no) in self._orders:
            raise SandboxError(400, "OUT_TRADE_NO_USED", "商户订单号重复")
        return Order(
            asked.out_trade_no,
            asked.amount_total,
            asked.description,
            notify_url,
            sub_mchid=asked.sub_mchid,
            sub_appid=asked.sub_appid,
            attach=asked.attach,
        )

    def create_combined(
        self, combine_out_trade_no: str, sub_orders: Sequence[SubOrder], notify_url: str | None = None
    ) -> list[Order]:
        """A combined order ([next: Combined payments]): 2-10 sub-orders for a merchant, 1-50 for a provider."""
        low, high = (1, 50) if self.merchant.partner else (2, 10)
        if not _OUT_TRADE_NO.fullmatch(combine_out_trade_no):
            raise SandboxError(400, "PARAM_ERROR", "combine_out_trade_no must be 6-32 of [0-9A-Za-z_-|*]")
        if not low <= len(sub_orders) <= high:
            raise SandboxError(400, "PARAM_ERROR", f"a combined order has {low}-{high} sub-orders")
        with self._lock:
            if combine_out_trade_no in self._combined:
                raise SandboxError(400, "OUT_TRADE_NO_USED", "合单商户订单号重复")
            orders = [self._new(asked, notify_url) for asked in sub_orders]
            keys = [(o.sub_mchid or "", o.out_trade_no) for o in orders]
            if len(set(keys)) != len(keys):
                raise SandboxError(400, "PARAM_ERROR", "two sub-orders have the same out_trade_no")
            for key, order in zip(keys, orders, strict=True):
                order.combine_out_trade_no = combine_out_trade_no
                self._orders[key] = order
            self._combined[combine_out_trade_no] = keys
            return copy.deepcopy(orders)

    def pay(
        self,
        out_trade_no: str,
        payer_total: int | None = None,
        *,
        sub_mchid: str | None = None,
        promotions: tuple[Promotion, ...] = (),
        after_close: bool = False,
    ) -> Order:
        """`after_close`: the payer pays a CLOSED order, the race WeChat allows when a close and a payment
        cross ([protocol: Closing an order])."""
        with self._lock:
            order = self._single(out_trade_no, sub_mchid)
            self._check_payable(order, after_close)
            discount = sum(p.amount for p in promotions)
            if discount >= order.total:
                raise SandboxError(400, "PARAM_ERROR", "coupons must leave the payer something to pay")
            self._paid(order, rfc3339(self._clock()))
            order.promotions = promotions
            order.payer_total = order.total - discount if promotions and payer_total is None else payer_total
            return copy.deepcopy(order)

    def pay_combined(self, combine_out_trade_no: str, *, after_close: bool = False) -> list[Order]:
        """Every sub-order succeeds together, at one time ([next: Combined payment notification])."""
        with self._lock:
            orders = self._combined_orders(combine_out_trade_no)
            for order in orders:
                self._check_payable(order, after_close)
            success_time = rfc3339(self._clock())
            for order in orders:
                self._paid(order, success_time)
            return copy.deepcopy(orders)

    @staticmethod
    def _check_payable(order: Order, after_close: bool = False) -> None:
        if order.trade_state in {"SUCCESS", "REFUND"}:
            raise SandboxError(400, "ORDER_PAID", "订单已支付")
        if order.trade_state == "CLOSED" and not after_close:
            raise SandboxError(400, "ORDER_CLOSED", "订单已关闭")
        if order.trade_state != "CLOSED" and after_close:
            raise SandboxError(400, "INVALID_REQUEST", "a payment after close needs a closed order")

    def _paid(self, order: Order, success_time: str) -> None:
        order.trade_state = "SUCCESS"
        order.transaction_id = f"42000{self._rng.randrange(10**23):023d}"
        order.success_time = success_time

    def refund(
        self, out_trade_no: str, out_refund_no: str, amount: int, status: str, *, sub_mchid: str | None = None
    ) -> tuple[Order, Refund]:
        """A refund of one order; a combined order is refunded sub-order by sub-order ([next: Refunds of
        sub-orders])."""
        if not _OUT_REFUND_NO.fullmatch(out_refund_no):
            raise SandboxError(400, "PARAM_ERROR", "out_refund_no must be 1-64 of [0-9A-Za-z_-|*@]")
        if status not in REFUND_STATUSES:
            raise SandboxError(400, "PARAM_ERROR", f"refund status must be one of {', '.join(REFUND_STATUSES)}")
        with self._lock:
            order = self._get(out_trade_no, sub_mchid)
            if order.trade_state not in {"SUCCESS", "REFUND"}:
                raise SandboxError(400, "INVALID_REQUEST", "订单未支付，不能退款")
            scope = order.sub_mchid or ""
            if any(out_refund_no in o.refunds for (s, _), o in self._orders.items() if s == scope):
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

    def request_refund(self, ask: RefundAsk) -> tuple[Order, Refund, bool]:
        """[protocol: Creating a refund], atomically: the refund `ask` names, and whether it is new. The same
        out_refund_no asked again of the same order for the same amounts is the refund already made, as it
        now is; of another order or amount, INVALID_REQUEST. An order unknown or unpaid is RESOURCE_NOT_EXISTS
        (WeChat's table: "未支付的订单不能发起退款"); more than is left, NOT_ENOUGH."""
        with self._lock:
            scope = self._scope(ask.sub_mchid)
            known = next(
                ((o, o.refunds[ask.out_refund_no]) for (s, _), o in self._orders.items()
                 if s == scope and ask.out_refund_no in o.refunds),
                None,
            )  # fmt: skip
            order = self._refunded_order(ask, scope)
            if known is not None:
                same = known[0] is order and known[1].amount == ask.refund and order.total == ask.total
                if not same:
                    raise SandboxError(400, "INVALID_REQUEST", "同一退款单号的退款信息与之前的请求不一致")
                return copy.deepcopy(order), copy.deepcopy(known[1]), False
            if order.trade_state not in {"SUCCESS", "REFUND"}:
                raise SandboxError(404, "RESOURCE_NOT_EXISTS", "订单不存在或未支付")
            if ask.total != order.total:
                raise SandboxError(400, "INVALID_REQUEST", "订单金额与原订单金额不一致")
            if ask.refund > order.refundable:
                raise SandboxError(403, "NOT_ENOUGH", "退款金额超过订单可退金额")
            refund = Refund(
                out_refund_no=ask.out_refund_no,
                refund_id=f"50300{self._rng.randrange(10**24):024d}",
                amount=ask.refund,
                status="PROCESSING",
                create_time=rfc3339(self._clock()),
                notify_url=ask.notify_url,
            )
            order.refunds[ask.out_refund_no] = refund
            self._settle(order, refund, "PROCESSING")
            return copy.deepcopy(order), copy.deepcopy(refund), True

    def _refunded_order(self, ask: RefundAsk, scope: str) -> Order:
        """The order a refund names: by transaction_id (and then its out_trade_no must agree) or out_trade_no;
        a combined payment's sub-order by its own ([next: Refunds of sub-orders])."""
        if ask.transaction_id is not None:
            found = [o for (s, _), o in self._orders.items() if s == scope and o.transaction_id == ask.transaction_id]
            if not found:
                raise SandboxError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
            if ask.out_trade_no is not None and found[0].out_trade_no != ask.out_trade_no:
                raise SandboxError(400, "INVALID_REQUEST", "transaction_id与out_trade_no不匹配")
            return found[0]
        order = self._orders.get((scope, ask.out_trade_no or ""))
        if order is None:
            raise SandboxError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        return order

    def complete_refund(self, out_refund_no: str, status: str, *, sub_mchid: str | None = None) -> tuple[Order, Refund]:
        if status not in REFUND_STATUSES[:3]:
            raise SandboxError(400, "PARAM_ERROR", "a refund completes as SUCCESS, CLOSED or ABNORMAL")
        with self._lock:
            order, refund = self._find_refund(out_refund_no, sub_mchid)
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

    def close(self, out_trade_no: str, *, sub_mchid: str | None = None) -> None:
        with self._lock:
            order = self._single(out_trade_no, sub_mchid)
            if order.trade_state in {"SUCCESS", "REFUND"}:
                raise SandboxError(400, "ORDER_PAID", "订单已支付")
            order.trade_state = "CLOSED"

    def close_combined(self, combine_out_trade_no: str) -> None:
        """The whole combined order or nothing ([next: Combined query and close])."""
        with self._lock:
            orders = self._combined_orders(combine_out_trade_no)
            if any(o.trade_state in {"SUCCESS", "REFUND"} for o in orders):
                raise SandboxError(400, "ORDER_PAID", "订单已支付")
            for order in orders:
                order.trade_state = "CLOSED"

    # -- lookups -------------------------------------------------------------------------------

    def order(self, out_trade_no: str, sub_mchid: str | None = None) -> Order:
        with self._lock:
            return copy.deepcopy(self._get(out_trade_no, sub_mchid))

    def combined(self, combine_out_trade_no: str) -> list[Order]:
        """The sub-orders of a combined order, in the order they were asked for."""
        with self._lock:
            return copy.deepcopy(self._combined_orders(combine_out_trade_no))

    def all(self) -> list[Order]:
        """Every order, in the order they were created (the daily bills read them)."""
        with self._lock:
            return copy.deepcopy(list(self._orders.values()))

    def by_transaction_id(self, transaction_id: str, sub_mchid: str | None = None) -> Order:
        with self._lock:
            scope = self._scope(sub_mchid)
            for (s, _), order in self._orders.items():
                if s == scope and order.transaction_id == transaction_id:
                    return copy.deepcopy(order)
        raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")

    def refund_of(self, out_refund_no: str, sub_mchid: str | None = None) -> tuple[Order, Refund]:
        with self._lock:
            order, refund = self._find_refund(out_refund_no, sub_mchid)
            return copy.deepcopy(order), copy.deepcopy(refund)

    def _get(self, out_trade_no: str, sub_mchid: str | None) -> Order:
        order = self._orders.get((self._scope(sub_mchid), out_trade_no))
        if order is None:
            raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def _single(self, out_trade_no: str, sub_mchid: str | None) -> Order:
        """An order that is not part of a combined order: those are paid and closed together."""
        order = self._get(out_trade_no, sub_mchid)
        if order.combine_out_trade_no is not None:
            raise SandboxError(400, "INVALID_REQUEST", "合单的子单只能通过合单支付或关闭")
        return order

    def _combined_orders(self, combine_out_trade_no: str) -> list[Order]:
        keys = self._combined.get(combine_out_trade_no)
        if keys is None:
            raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")
        return [self._orders[key] for key in keys]

    def _find_refund(self, out_refund_no: str, sub_mchid: str | None) -> tuple[Order, Refund]:
        scope = self._scope(sub_mchid)
        for (s, _), order in self._orders.items():
            if s == scope and out_refund_no in order.refunds:
                return order, order.refunds[out_refund_no]
        raise SandboxError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
