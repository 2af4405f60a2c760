"""What WeChat Pay says about the sandbox's orders, as JSON: [protocol: The payment resource] (transactions,
direct or partner), [protocol: The refund resource] (refund notifications), [protocol: Querying a refund]
(refund queries, where the state is `status`), and the combined transaction ([next: Combined payment
notification]); and in APIv2's fields, a payment notification's and a refund's `req_info` ([protocol: Legacy
APIv2 XML])."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ledger.wechatpay.sandbox import legacy, resources
from ledger.wechatpay.sandbox.orders import Merchant, Order, Refund, SandboxError

__all__ = [
    "combined_transaction",
    "payer_refund",
    "refund_query",
    "refund_resource",
    "transaction",
    "v2_payment_fields",
    "v2_refund_fields",
]

_TRADE_STATE_DESC = {
    "NOTPAY": "订单未支付",
    "SUCCESS": "支付成功",
    "REFUND": "订单发生过退款",
    "CLOSED": "订单已关闭",
}


def _payment(order: Order) -> dict[str, Any]:
    """A paid order's payment, as the keywords `resources.transaction`, `resources.combine_sub_order` and
    `legacy.payment_fields` take it (an unpaid one's transaction_id and success_time are None)."""
    return dict(
        transaction_id=order.transaction_id,
        success_time=order.success_time,
        payer_total=order.payer_total,
        attach=order.attach,
        promotions=order.promotions,
    )


def _refund(order: Order, refund: Refund) -> dict[str, Any]:
    """A refund of `order`, as the keywords `resources.refund` and `legacy.refund_fields` take it."""
    return dict(
        transaction_id=order.transaction_id or "",
        refund_id=refund.refund_id,
        refund_status=refund.status,
        success_time=refund.success_time,
    )


def transaction(merchant: Merchant, order: Order) -> dict[str, Any]:
    """[protocol: The payment resource; Querying an order], and [next: Partner payment notification] in
    partner mode; an order never paid has no transaction_id, payer or success_time."""
    desc = _TRADE_STATE_DESC.get(order.trade_state, order.trade_state)
    party = merchant.party(order)
    if order.transaction_id is None or order.success_time is None:
        return resources.unpaid_transaction(party, order.out_trade_no, order.total, order.trade_state, desc)
    return resources.transaction(
        party, order.out_trade_no, order.total, trade_state=order.trade_state, trade_state_desc=desc, **_payment(order)
    )


def payer_refund(order: Order, amount: int) -> int:
    """The payer's share of a refund: in proportion to what the payer paid (coupons are not refunded in cash)."""
    share = Decimal(amount) * order.paid_by_payer / order.total
    return int(share.quantize(Decimal(1), ROUND_HALF_UP))


def refund_resource(merchant: Merchant, order: Order, refund: Refund) -> dict[str, Any]:
    """[protocol: The refund resource]: the decrypted REFUND.* notification resource (state named
    `refund_status`), keys as the official sample; [next: Partner refund notification] in partner mode."""
    return resources.refund(
        merchant.party(order),
        order.out_trade_no,
        refund.out_refund_no,
        refund.amount,
        order.total,
        payer_total=order.paid_by_payer,
        payer_refund=payer_refund(order, refund.amount),
        **_refund(order, refund),
    )


def refund_query(order: Order, refund: Refund) -> dict[str, Any]:
    """[protocol: Querying a refund]: the refund query answer (state named `status`)."""
    body: dict[str, Any] = {
        "amount": {
            "currency": "CNY",
            "discount_refund": refund.amount - payer_refund(order, refund.amount),
            "from": [],
            "payer_refund": payer_refund(order, refund.amount),
            "payer_total": order.paid_by_payer,
            "refund": refund.amount,
            "refund_fee": 0,
            "settlement_refund": refund.amount,
            "settlement_total": order.settlement_total,
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


def combined_transaction(merchant: Merchant, orders: list[Order]) -> dict[str, Any]:
    """[next: Combined payment notification]: the combined TRANSACTION.SUCCESS resource, and the combined
    query's answer. The initiator is the merchant (the provider in partner mode), every sub-order's `mchid`
    too."""
    if not orders or orders[0].combine_out_trade_no is None:
        raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")
    sub_orders = [
        resources.combine_sub_order(
            merchant.party(order), order.out_trade_no, order.total, trade_state=order.trade_state, **_payment(order)
        )
        for order in orders
    ]
    return resources.combine_transaction(
        combine_appid=merchant.appid,
        combine_mchid=merchant.mchid,
        combine_out_trade_no=orders[0].combine_out_trade_no,
        sub_orders=sub_orders,
    )


def v2_payment_fields(merchant: Merchant, order: Order, sign_type: str) -> dict[str, str]:
    """[protocol: APIv2 payment notifications]: a paid order's notification fields but `sign`."""
    return legacy.payment_fields(
        merchant.party(order),
        order.out_trade_no,
        order.total,
        nonce=legacy.nonce_str(),
        sign_type=sign_type,
        **_payment(order),
    )


def v2_refund_fields(order: Order, refund: Refund, source: str) -> dict[str, str]:
    """[protocol: APIv2 refund notifications]: the decrypted `req_info` of a refund of `order`."""
    return legacy.refund_fields(
        order.out_trade_no,
        refund.out_refund_no,
        refund.amount,
        order.total,
        settlement_total_fee=order.settlement_total,
        refund_request_source=source,
        **_refund(order, refund),
    )
