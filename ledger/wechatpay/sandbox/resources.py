"""The decrypted resources WeChat Pay sends and answers with, keys in WeChat's own order.

Pure functions, values in, a dict out; `compact_json` of the result is the plaintext WeChat encrypts.
The key orders are the official samples': a direct payment ([protocol: The payment resource], vector D2),
a partner payment ([next: Partner payment notification], D3), a refund (the official sample of [protocol:
The refund resource]; a partner's, [next: Partner refund notification], D4), a combined payment ([next:
Combined payment notification], D5), and the other notification types, complaints and profit-sharing
([next: Other notification types]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "OPENID",
    "Party",
    "Promotion",
    "amount",
    "combine_sub_order",
    "combine_transaction",
    "complaint",
    "profit_sharing",
    "refund",
    "transaction",
    "unpaid_transaction",
]

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
"""The payer every sandbox transaction names (the official samples' openid)."""


@dataclass(frozen=True)
class Party:
    """Who a resource is about: a direct merchant (`mchid`, `appid`), or a provider (`mchid`, `appid` are
    then its `sp_mchid`, `sp_appid`) acting for the sub-merchant `sub_mchid` (and its `sub_appid`, if the
    order named one)."""

    mchid: str
    appid: str
    sub_mchid: str | None = None
    sub_appid: str | None = None

    @property
    def partner(self) -> bool:
        return self.sub_mchid is not None


@dataclass(frozen=True)
class Promotion:
    """A coupon or discount on a payment ([protocol: The payment resource] `promotion_detail`): `CASH`
    (充值型, funded in advance) or `NOCASH` (免充值, deducted from what the merchant is settled)."""

    amount: int
    type: str = "CASH"
    coupon_id: str = "109519"
    stock_id: str = "931386"
    name: str = "代金券"

    def detail(self) -> dict[str, Any]:
        return {
            "coupon_id": self.coupon_id,
            "name": self.name,
            "scope": "GLOBAL",
            "type": self.type,
            "amount": self.amount,
            "stock_id": self.stock_id,
            "wechatpay_contribute": 0,
            "merchant_contribute": self.amount,
            "other_contribute": 0,
            "currency": "CNY",
        }


def amount(total: int, payer_total: int | None = None) -> dict[str, Any]:
    return {
        "total": total,
        "payer_total": total if payer_total is None else payer_total,
        "currency": "CNY",
        "payer_currency": "CNY",
    }


def _identity(party: Party) -> dict[str, Any]:
    if not party.partner:
        return {"mchid": party.mchid, "appid": party.appid}
    named: dict[str, Any] = {"sp_appid": party.appid, "sp_mchid": party.mchid}
    if party.sub_appid is not None:
        named["sub_appid"] = party.sub_appid
    named["sub_mchid"] = party.sub_mchid
    return named


def _payer(party: Party, openid: str) -> dict[str, str]:
    if not party.partner:
        return {"openid": openid}
    # [next: Partner payment notification]: no `payer.openid`; `sub_openid` only when a sub_appid was given.
    return {"sp_openid": openid, "sub_openid": openid} if party.sub_appid is not None else {"sp_openid": openid}


def transaction(
    party: Party,
    out_trade_no: str,
    total: int,
    *,
    transaction_id: str,
    success_time: str,
    trade_state: str = "SUCCESS",
    trade_state_desc: str = "支付成功",
    payer_total: int | None = None,
    bank_type: str = "OTHERS",
    attach: str = "",
    openid: str = OPENID,
    promotions: tuple[Promotion, ...] = (),
) -> dict[str, Any]:
    """A paid transaction: the TRANSACTION.SUCCESS resource and the query answer (direct: D2's key order;
    partner: D3's). `promotion_detail` follows `amount` when the payment had coupons."""
    resource: dict[str, Any] = {
        **_identity(party),
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": "JSAPI",
        "trade_state": trade_state,
        "trade_state_desc": trade_state_desc,
        "bank_type": bank_type,
        "attach": attach,
        "success_time": success_time,
        "payer": _payer(party, openid),
        "amount": amount(total, payer_total),
    }
    if promotions:
        resource["promotion_detail"] = [p.detail() for p in promotions]
    return resource


def unpaid_transaction(party: Party, out_trade_no: str, total: int, trade_state: str, desc: str) -> dict[str, Any]:
    """The query answer for an order never paid: no transaction_id, payer or success_time."""
    return {
        "amount": {"payer_currency": "CNY", "total": total},
        **_identity(party),
        "out_trade_no": out_trade_no,
        "promotion_detail": [],
        "scene_info": {"device_id": ""},
        "trade_state": trade_state,
        "trade_state_desc": desc,
    }


def refund(
    party: Party,
    out_trade_no: str,
    out_refund_no: str,
    refund: int,
    total: int,
    *,
    transaction_id: str,
    refund_id: str,
    refund_status: str = "SUCCESS",
    success_time: str | None = None,
    user_received_account: str = "支付用户零钱",
    payer_total: int | None = None,
    payer_refund: int | None = None,
) -> dict[str, Any]:
    """The REFUND.* resource, keys as the official sample (`success_time` after `refund_status`, only when
    given); partner: `sp_mchid` and `sub_mchid` in place of `mchid` (D4)."""
    who = {"sp_mchid": party.mchid, "sub_mchid": party.sub_mchid} if party.partner else {"mchid": party.mchid}
    resource: dict[str, Any] = {
        **who,
        "transaction_id": transaction_id,
        "out_trade_no": out_trade_no,
        "refund_id": refund_id,
        "out_refund_no": out_refund_no,
        "refund_status": refund_status,
    }
    if success_time is not None:
        resource["success_time"] = success_time
    resource["user_received_account"] = user_received_account
    resource["amount"] = {
        "total": total,
        "refund": refund,
        "payer_total": total if payer_total is None else payer_total,
        "payer_refund": refund if payer_refund is None else payer_refund,
    }
    return resource


# -- combined payments ([next: Combined payments]) -------------------------------------------------


def combine_sub_order(
    party: Party,
    out_trade_no: str,
    total: int,
    *,
    trade_state: str = "SUCCESS",
    transaction_id: str | None = None,
    success_time: str | None = None,
    payer_total: int | None = None,
    bank_type: str = "OTHERS",
    attach: str = "",
    openid: str = OPENID,
    promotions: tuple[Promotion, ...] = (),
) -> dict[str, Any]:
    """One of `sub_orders` (D5's key order). `mchid` is the participating merchant (direct) or the provider
    (partner, with the payee `sub_mchid`); amounts are `total_amount`/`payer_amount`. A sub-order not paid
    has no bank_type, payer_amount, success_time or transaction_id."""
    sub: dict[str, Any] = {"mchid": party.mchid}
    if party.partner:
        sub["sub_mchid"] = party.sub_mchid
        if party.sub_appid is not None:
            sub["sub_appid"] = party.sub_appid
            sub["sub_openid"] = openid
    sub["trade_type"] = "JSAPI"
    sub["trade_state"] = trade_state
    if transaction_id is None:
        sub["attach"] = attach
        sub["amount"] = {"total_amount": total, "currency": "CNY"}
        sub["out_trade_no"] = out_trade_no
        return sub
    sub["bank_type"] = bank_type
    sub["attach"] = attach
    sub["amount"] = {
        "total_amount": total,
        "currency": "CNY",
        "payer_amount": total if payer_total is None else payer_total,
        "payer_currency": "CNY",
    }
    sub["success_time"] = success_time
    sub["transaction_id"] = transaction_id
    sub["out_trade_no"] = out_trade_no
    if promotions:
        sub["promotion_detail"] = [p.detail() for p in promotions]
    return sub


def combine_transaction(
    *,
    combine_appid: str,
    combine_mchid: str,
    combine_out_trade_no: str,
    sub_orders: list[dict[str, Any]],
    openid: str = OPENID,
    device_id: str | None = None,
) -> dict[str, Any]:
    """The combined TRANSACTION.SUCCESS resource and the combined query answer (D5's key order)."""
    resource: dict[str, Any] = {
        "combine_appid": combine_appid,
        "combine_out_trade_no": combine_out_trade_no,
        "combine_mchid": combine_mchid,
    }
    if device_id is not None:
        resource["scene_info"] = {"device_id": device_id}
    resource["sub_orders"] = sub_orders
    resource["combine_payer_info"] = {"openid": openid}
    return resource


# -- other notification types ([next: Other notification types]) ----------------------------------


def complaint(complaint_id: str, action_type: str = "CREATE_COMPLAINT") -> dict[str, Any]:
    """A COMPLAINT.CREATE / COMPLAINT.STATE_CHANGE resource: the id to query, and what happened."""
    return {"complaint_id": complaint_id, "action_type": action_type}


def profit_sharing(
    party: Party,
    *,
    transaction_id: str,
    order_id: str,
    out_order_no: str,
    receiver_account: str,
    amount: int,
    success_time: str,
    description: str = "分给商户",
) -> dict[str, Any]:
    """A PROFITSHARING.SUCCESS / PROFITSHARING.RETURN resource: money moved to (or back from) a receiver."""
    who = {"sp_mchid": party.mchid, "sub_mchid": party.sub_mchid} if party.partner else {"mchid": party.mchid}
    return {
        **who,
        "transaction_id": transaction_id,
        "order_id": order_id,
        "out_order_no": out_order_no,
        "receiver": {
            "type": "MERCHANT_ID",
            "account": receiver_account,
            "amount": amount,
            "description": description,
        },
        "success_time": success_time,
    }
