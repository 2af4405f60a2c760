"""Service providers and combined payments ([protocol: Service providers; Combined payments]), below the HTTP layer.

An order of a service provider is (sp_mchid, sub_mchid, out_trade_no): the same out_trade_no under two
sub-merchants is two orders. A combined payment's one notification settles each of its sub-orders in
that sub-order's own stream, with that sub-order's amount. The resources are the reference's samples
(the partner payment and refund samples and the combined-payment sample of the reference) with our
merchant's numbers.
"""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.audit.integrity import check_all
from ledger.domain import Outcome, PaymentOrder, order_id
from ledger.groupcommit import GroupCommitter
from ledger.identity import NAMESPACE, OrderKey, orders_named
from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.builders import evidence
from tests.support.threads import all_at_once

SP, SUB_A, SUB_B, OTHER = "1230000109", "1900000109", "1900000110", "1900000179"
SP_APPID = "wx8888888888888888"

# The official partner payment sample, for our provider and sub-merchant A.
PARTNER_PAYMENT: dict[str, Any] = {
    "sp_appid": SP_APPID,
    "sp_mchid": SP,
    "sub_appid": "wxd678efh567hg6999",
    "sub_mchid": SUB_A,
    "out_trade_no": "1217752501201407033233368018",
    "transaction_id": "1217752501201407033233368018",
    "trade_type": "JSAPI",
    "trade_state": "SUCCESS",
    "trade_state_desc": "支付成功",
    "bank_type": "CMC",
    "attach": "自定义数据",
    "success_time": "2018-06-08T10:34:56+08:00",
    "payer": {"sp_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "sub_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"},
}
# The reference's constructed partner refund sample.
PARTNER_REFUND: dict[str, Any] = {
    "sp_mchid": SP,
    "sub_mchid": SUB_A,
    "transaction_id": "1217752501201407033233368018",
    "out_trade_no": "1217752501201407033233368018",
    "refund_id": "50200207182018070300011301001",
    "out_refund_no": "7752501201407033233368018",
    "refund_status": "SUCCESS",
    "success_time": "2018-06-08T10:34:56+08:00",
    "user_received_account": "招商银行信用卡0403",
    "amount": {"total": 100, "refund": 100, "payer_total": 100, "payer_refund": 100},
}


def combined(*, partner: bool = False) -> dict[str, Any]:
    """The official combined-payment sample (a merchant's, two sub-orders of two merchants), or its partner form."""

    def sub(mchid: str, out_trade_no: str, transaction_id: str, total: int, attach: str) -> dict[str, Any]:
        order = {
            "mchid": SP if partner else mchid,
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "bank_type": "CMC",
            "attach": attach,
            "amount": {"total_amount": total, "currency": "CNY", "payer_amount": total, "payer_currency": "CNY"},
            "success_time": "2015-05-20T13:29:35.120+08:00",
            "transaction_id": transaction_id,
            "out_trade_no": out_trade_no,
        }
        if partner:
            order["sub_mchid"] = mchid
        return order

    return {
        "combine_appid": SP_APPID if partner else "wxd678efh567hg6787",
        "combine_out_trade_no": "20150806125346",
        "combine_mchid": SP if partner else SUB_A,
        "scene_info": {"device_id": "POS1:1"},
        "sub_orders": [
            sub(SUB_A, "20150806125346", "1009660380201506130728806387", 10, "深圳分店"),
            sub(SUB_B if partner else OTHER, "20150806124855", "1009660380201506130728452147", 20, "广州分店"),
        ],
        "combine_payer_info": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    }


def types(ledger: Ledger, stream: uuid.UUID) -> Counter[str]:
    return Counter(event["type"] for event in ledger.history(stream))


# -- which orders a resource names ---------------------------------------------------------------


def test_a_merchants_order_ids_are_as_they_always_were() -> None:
    assert order_id(SUB_A, "ORDER-1") == uuid.uuid5(NAMESPACE, f"order\x00{SUB_A}\x00ORDER-1")


def test_the_same_out_trade_no_under_two_sub_merchants_is_two_orders() -> None:
    ids = {order_id(SP, "ORDER-1", SUB_A), order_id(SP, "ORDER-1", SUB_B), order_id(SP, "ORDER-1")}
    assert len(ids) == 3
    # NUL separates the parts: ("ab", "c") and ("a", "bc") stay apart.
    assert order_id(SP, "1-X", "19") != order_id(SP, "X", "191")


def test_orders_named_by_each_shape_of_resource() -> None:
    number = PARTNER_PAYMENT["out_trade_no"]
    assert orders_named(SUB_A, {"mchid": SUB_A, "out_trade_no": "N-1"}) == [OrderKey(SUB_A, "N-1")]
    assert orders_named(SP, PARTNER_PAYMENT) == [OrderKey(SP, number, SUB_A)]
    assert orders_named(SP, PARTNER_REFUND) == [OrderKey(SP, number, SUB_A)]
    assert orders_named(SUB_A, combined()) == [
        OrderKey(SUB_A, "20150806125346"),
        OrderKey(OTHER, "20150806124855"),  # another merchant of the combination: its own order
    ]
    assert orders_named(SP, combined(partner=True)) == [
        OrderKey(SP, "20150806125346", SUB_A),
        OrderKey(SP, "20150806124855", SUB_B),
    ]
    assert orders_named(SUB_A, {"mchid": SUB_A, "complaint_id": "200201820200101080076610000"}) == []
    assert orders_named(SUB_A, {"combine_out_trade_no": "C", "sub_orders": []}) == []


# -- the domain ------------------------------------------------------------------------------------


def partner_order(sub_mchid: str = SUB_A) -> PaymentOrder:
    order = PaymentOrder.open(SP, PARTNER_PAYMENT["out_trade_no"], sub_mchid)
    order.register(100, "CNY", "")
    return order


def test_a_partner_payment_decides_the_sub_merchants_order() -> None:
    order = partner_order()
    assert order.receive(evidence(PARTNER_PAYMENT), expected_appid=SP_APPID) is Outcome.RECORDED
    assert (order.paid, order.paid_total, order.anomalies) == (True, 100, [])
    summary = order.summary()
    assert (summary["mchid"], summary["sp_mchid"], summary["sub_mchid"]) == (SP, SP, SUB_A)
    order.receive(evidence(PARTNER_REFUND, "REFUND.SUCCESS", notification_id="n-2"))
    assert (order.trade_state, order.refunded_total) == ("REFUND", 100)


def test_a_partner_payment_for_another_sub_merchant_or_provider_decides_nothing() -> None:
    for changes in ({"sub_mchid": SUB_B}, {"sp_mchid": "1230000999"}, {"sp_appid": "wx0000000000000000"}):
        order = partner_order()
        order.receive(evidence({**PARTNER_PAYMENT, **changes}), expected_appid=SP_APPID)
        assert not order.paid
        [anomaly] = order.anomalies
        assert anomaly["kind"] in {"mchid_mismatch", "appid_mismatch"}
    # A merchant's own order does not take a partner resource either.
    order = PaymentOrder.open(SP, PARTNER_PAYMENT["out_trade_no"])
    order.receive(evidence(PARTNER_PAYMENT))
    assert not order.paid and [a["kind"] for a in order.anomalies] == ["mchid_mismatch"]


def test_a_sub_merchant_not_configured_is_decided_and_flagged_once() -> None:
    order = partner_order()
    known = frozenset({SUB_B})
    order.receive(evidence(PARTNER_PAYMENT), expected_appid=SP_APPID, sub_mchids=known)
    order.receive(evidence(PARTNER_PAYMENT, attempt=1), expected_appid=SP_APPID, sub_mchids=known)
    assert order.paid
    assert [(a["kind"], a["detail"]) for a in order.anomalies] == [
        ("sub_mchid_unknown", {"sub_mchid": SUB_A, "known": [SUB_B]})
    ]
    configured = partner_order()
    configured.receive(evidence(PARTNER_PAYMENT), expected_appid=SP_APPID, sub_mchids=frozenset({SUB_A}))
    assert configured.paid and configured.anomalies == []


def test_a_combined_payment_decides_each_sub_order_with_its_own_amount() -> None:
    resource = combined()
    first = PaymentOrder.open(SUB_A, "20150806125346")
    first.register(10, "CNY", "", combine_out_trade_no="20150806125346")
    second = PaymentOrder.open(OTHER, "20150806124855")
    for order in (first, second):
        order.receive(evidence(resource), expected_appid="wxd678efh567hg6787")
    assert (first.paid_total, first.transaction_id, first.anomalies) == (10, "1009660380201506130728806387", [])
    assert (second.paid_total, second.transaction_id) == (20, "1009660380201506130728452147")
    assert first.summary()["combine_out_trade_no"] == "20150806125346"


def test_a_combined_payment_registered_for_another_amount_is_an_amount_mismatch() -> None:
    order = PaymentOrder.open(SUB_A, "20150806125346")
    order.register(11, "CNY", "")
    order.receive(evidence(combined()))
    assert order.paid and [a["kind"] for a in order.anomalies] == ["amount_mismatch"]


# -- the application: one notification, several streams ------------------------------------------


@pytest.fixture
def verified(factory: NotificationFactory) -> Callable[[dict[str, Any]], VerifiedNotification]:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())

    def make(resource: dict[str, Any]) -> VerifiedNotification:
        delivery = factory.deliver(factory.envelope(resource))
        return verifier.verify(delivery.headers, delivery.body)

    return make


def test_a_combined_notification_goes_to_every_sub_orders_stream_once(
    ledger_factory: Callable[[], Ledger],
    factory: NotificationFactory,
    verified: Callable[[dict[str, Any]], VerifiedNotification],
) -> None:
    ledger = ledger_factory()
    notification = verified(combined(partner=True))
    result = ledger.record_notification(SP, notification, expected_appid=SP_APPID)
    assert result.outcome is Outcome.RECORDED and result.stream_id == order_id(SP, "20150806125346", SUB_A)
    again = ledger.record_notification(SP, notification, expected_appid=SP_APPID)
    assert again.outcome is Outcome.DUPLICATE
    for sub_mchid, number, total in ((SUB_A, "20150806125346", 10), (SUB_B, "20150806124855", 20)):
        stream = order_id(SP, number, sub_mchid)
        assert types(ledger, stream) == Counter({"Opened": 1, "NotificationReceived": 1, "PaymentSucceeded": 1})
        order = ledger.get_order(SP, number, sub_mchid)
        assert (order.paid_total, order.sub_mchid) == (total, sub_mchid)
        [delivery] = [e for e in ledger.history(stream) if e["type"] == "NotificationReceived"]
        assert delivery["data"]["raw_body"] == notification.body.decode()  # each history complete on its own
    report = check_all(ledger, {SP: factory.key_store()}, apiv3={SP: factory.apiv3_key.encode()}, appids={SP: SP_APPID})
    assert report.ok and report.decisions == 2


def test_concurrent_deliveries_of_one_combined_notification_decide_once_per_sub_order(
    ledger_factory: Callable[[], Ledger],
    factory: NotificationFactory,
    verified: Callable[[dict[str, Any]], VerifiedNotification],
) -> None:
    resource = combined(partner=True)
    body = factory.envelope(resource)
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    ledgers = [ledger_factory() for _ in range(3)]
    committers = [GroupCommitter(ledger) for ledger in ledgers]
    retries = [factory.deliver(body) for _ in range(12)]  # WeChat re-signs each retry
    notifications = [verifier.verify(retry.headers, retry.body) for retry in retries]

    def deliver(n: int) -> None:
        committers[n % 3].record_notification(SP, notifications[n], expected_appid=SP_APPID)

    errors = all_at_once(deliver, range(12))
    for committer in committers:
        committer.close()
    assert errors == []
    for sub_mchid, number in ((SUB_A, "20150806125346"), (SUB_B, "20150806124855")):
        counts = types(ledgers[0], order_id(SP, number, sub_mchid))
        assert counts["PaymentSucceeded"] == 1
        assert counts["NotificationReceived"] == 12  # every (re-signed) delivery kept, one decision


def test_a_partner_payment_and_a_merchant_order_of_the_same_number_stay_apart(
    ledger_factory: Callable[[], Ledger], verified: Callable[[dict[str, Any]], VerifiedNotification]
) -> None:
    ledger = ledger_factory()
    number = PARTNER_PAYMENT["out_trade_no"]
    ledger.register_order(SP, number, 100, sub_mchid=SUB_A)
    ledger.register_order(SP, number, 300, sub_mchid=SUB_B)
    other = copy.deepcopy(PARTNER_PAYMENT)
    other.update(sub_mchid=SUB_B, transaction_id="4200000000000000000000000999")
    other["amount"]["total"] = 300
    ledger.record_notification(SP, verified(PARTNER_PAYMENT), expected_appid=SP_APPID)
    ledger.record_notification(SP, verified(other), expected_appid=SP_APPID)
    a, b = ledger.get_order(SP, number, SUB_A), ledger.get_order(SP, number, SUB_B)
    assert (a.paid_total, a.transaction_id, a.anomalies) == (100, PARTNER_PAYMENT["transaction_id"], [])
    assert (b.paid_total, b.transaction_id, b.anomalies) == (300, "4200000000000000000000000999", [])
