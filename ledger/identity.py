"""Who an order or a notification is: stream ids, order keys, and which orders a verified resource names.

A merchant's order is (mchid, out_trade_no); a service provider's is (sp_mchid, sub_mchid,
out_trade_no), the same out_trade_no under two sub-merchants being two orders; a combined
payment names several orders at once. Pure: nothing here does I/O, and of ours it imports only
`ledger.evidence`'s readers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ledger.evidence import amount_object, text_field

__all__ = [
    "NAMESPACE",
    "OrderKey",
    "inbox_id",
    "order_id",
    "orders_named",
    "own_transaction",
    "refund_answer_as_resource",
    "sub_order_transaction",
]

NAMESPACE = uuid.UUID("5b0e3c36-8f5e-4f3a-9f2b-6b7e1c0d9a41")
# NUL cannot occur in an mchid, an out_trade_no or a notification id, so ("ab","c") != ("a","bc").
_SEP = "\x00"


def order_id(mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> uuid.UUID:
    """A merchant's order, or a service provider's (`mchid`) order for sub-merchant `sub_mchid`: the same
    out_trade_no under two sub-merchants is two orders. A merchant's order ids are as they always were."""
    if sub_mchid is None:
        return uuid.uuid5(NAMESPACE, f"order{_SEP}{mchid}{_SEP}{out_trade_no}")
    return uuid.uuid5(NAMESPACE, f"order{_SEP}{mchid}{_SEP}{sub_mchid}{_SEP}{out_trade_no}")


def inbox_id(mchid: str, notification_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"notification{_SEP}{mchid}{_SEP}{notification_id}")


# Which orders a verified resource is about ([protocol: Service providers; Combined payments]).


@dataclass(frozen=True)
class OrderKey:
    """An order's identity: the merchant the ledger serves, the sub-merchant (service providers), the number."""

    mchid: str
    out_trade_no: str
    sub_mchid: str | None = None

    @property
    def stream_id(self) -> uuid.UUID:
        return order_id(self.mchid, self.out_trade_no, self.sub_mchid)


def orders_named(mchid: str, resource: dict[str, Any]) -> list[OrderKey]:
    """The orders a verified resource of merchant `mchid` settles, in its order; empty when it names none.

    A combined payment names each of its `sub_orders`: in a service provider's (partner) one, the
    sub-order's `sub_mchid` is the payee and the order is the provider's; in a merchant's, the
    sub-order's `mchid` (which may be another merchant of the combination). A partner resource
    (`sp_mchid`/`sub_mchid`) names the sub-merchant's order; any other one, the merchant's."""
    sub_orders = resource.get("sub_orders")
    if isinstance(sub_orders, list):
        keys: list[OrderKey] = []
        for sub in sub_orders:
            number = text_field(sub, "out_trade_no") if isinstance(sub, dict) else ""
            if number:
                sub_mchid = text_field(sub, "sub_mchid") or None
                owner = mchid if sub_mchid else (text_field(sub, "mchid") or mchid)
                keys.append(OrderKey(owner, number, sub_mchid))
        return list(dict.fromkeys(keys))
    number = text_field(resource, "out_trade_no")
    if not number:
        return []
    if "sp_mchid" in resource or "sub_mchid" in resource:
        return [OrderKey(mchid, number, text_field(resource, "sub_mchid") or None)]
    return [OrderKey(mchid, number)]


def sub_order_transaction(resource: dict[str, Any], key: OrderKey) -> dict[str, Any] | None:
    """The sub-order of a combined resource that is order `key`, shaped as a single payment's resource
    (`amount.total_amount`/`payer_amount` as `total`/`payer_total`; the combination's appid as the
    payment's); None when the resource has no such sub-order."""
    sub_orders = resource.get("sub_orders")
    for sub in sub_orders if isinstance(sub_orders, list) else []:
        if not isinstance(sub, dict) or text_field(sub, "out_trade_no") != key.out_trade_no:
            continue
        if (text_field(sub, "sub_mchid") or None) != key.sub_mchid:
            continue
        amount = amount_object(sub)
        transaction = {name: value for name, value in sub.items() if name != "amount"}
        appid = resource.get("combine_appid")
        if key.sub_mchid is not None:
            transaction["sp_mchid"] = transaction.pop("mchid", "")
            transaction["sp_appid"] = appid
        else:
            transaction["appid"] = appid
        transaction["combine_out_trade_no"] = resource.get("combine_out_trade_no")
        transaction["amount"] = {
            "total": amount.get("total_amount"),
            "payer_total": amount.get("payer_amount"),
            "currency": amount.get("currency"),
        }
        return transaction
    return None


def own_transaction(resource: dict[str, Any], key: OrderKey) -> dict[str, Any]:
    """A combined payment's resource as order `key`'s own payment (its sub-order; empty when it has none);
    any other resource as it is."""
    if "sub_orders" not in resource:
        return resource
    return sub_order_transaction(resource, key) or {}


def refund_answer_as_resource(answer: dict[str, Any], key: OrderKey) -> dict[str, Any]:
    """A refund query's answer ([protocol: Querying a refund]) as order `key`'s refund resource: its state
    (`status`) as `refund_status`, and the order's own mchid (a provider's `sp_mchid` and `sub_mchid`),
    which the answer does not carry: it is a verified answer to our own query about our own order. An
    answer that names another `out_trade_no` gets no merchant, so the order refuses it."""
    resource = {name: value for name, value in answer.items() if name != "status"}
    resource["refund_status"] = text_field(answer, "status")
    ours = text_field(answer, "out_trade_no") == key.out_trade_no
    if key.sub_mchid is None:
        resource["mchid"] = key.mchid if ours else ""
    else:
        resource["sp_mchid"] = key.mchid if ours else ""
        resource["sub_mchid"] = resource.get("sub_mchid", key.sub_mchid) if ours else ""
    return resource
