"""Combined payments (合单) in the sandbox ([next: Combined payments] of the reference
../shared/wechatpay-protocol-next.md): one notification for every sub-order, the combined query and
close, each sub-order an order of its own in refunds and bills; as a merchant and as a provider."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.wechatpay import aead
from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox import resources, views
from ledger.wechatpay.sandbox.orders import CST
from ledger.wechatpay.sandbox.resources import Party
from ledger.wechatpay.sandbox.server import Sandbox, SandboxError, SubOrder
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json
from tests.support.constants import APPID, MCHID
from tests.support.sandbox import NotifyReceiver, Receiving, call, serve, trade_bill, verified

APIV3_KEY = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"  # vector V3's, which D5 uses
SP_MCHID, SP_APPID = "1230000109", "wx8888888888888888"
SUB_A, SUB_B = "1900000109", "1900000209"

# [next: Combined payment notification]'s official sample (merchant mode), and D5's ciphertext.
D5_PLAINTEXT = (
    '{"combine_appid":"wxd678efh567hg6787","combine_out_trade_no":"20150806125346","combine_mchid":"1900000109",'
    '"scene_info":{"device_id":"POS1:1"},"sub_orders":[{"mchid":"1900000109","trade_type":"JSAPI",'
    '"trade_state":"SUCCESS","bank_type":"CMC","attach":"深圳分店","amount":{"total_amount":10,"currency":"CNY",'
    '"payer_amount":10,"payer_currency":"CNY"},"success_time":"2015-05-20T13:29:35.120+08:00",'
    '"transaction_id":"1009660380201506130728806387","out_trade_no":"20150806125346"},{"mchid":"1900000179",'
    '"trade_type":"JSAPI","trade_state":"SUCCESS","bank_type":"CMC","attach":"广州分店","amount":{"total_amount":10,'
    '"currency":"CNY","payer_amount":10,"payer_currency":"CNY"},"success_time":"2015-05-20T13:29:35.120+08:00",'
    '"transaction_id":"1009660380201506130728452147","out_trade_no":"20150806124855"}],'
    '"combine_payer_info":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}'
).encode()
D5_CIPHERTEXT = (
    "ZICTKXfNGvVyTbMz5+1GPAHbJjlsg13KdAsfy3eQt7KUSYD2v+pikR+VjuFfAGAsfyEGTh1l8/c32o/dkfPzrtRmqyO1L1OPy0Hb/8bGl97O3RnAp"
    "1rx3ssXufgwDTB0cLZruEKiSjDclgi1bhsdADovYtcSbo9C0VlmJ8R1yLK0LPAD5BhIYS7xQOMV7/kKOsKjw0CL6z3lQCnr4jktDtat58Icoq+Mn9t"
    "vFSkQ4speR1gjoHKyaYV+Yc7DqXAVaEuluxl55Di8uukReo8PGcDQEAI8wzFL9srEWIs+h3oKckbj9pA2/XYwKxJDQRkYrEb1P0LaUIzSdsOwmAFsr/"
    "Vc9kTyfaS3IwfyD2JF8XJE7BMgJIvwi3RoQbkhXDwEv0DSJWxc1alGKMMzeR1JY4dn06uNPlKiNzyWm44ATmhABG4jSDZpR4rjXZt1+wb5J0IGz8GIr"
    "xy1WM7F/EL6A4+f+8VWtEtWwtKAkU90SbZKHXJI54v6Y3khlQIvHuWQeVwSfP1d/2bh9+9M9riQ0XohWBRoiPKPCzYZdZ7ERuRvyLtPpD4dYBTV5a/M"
    "ir1VSpsigRzQTxmzxUXQ6eyG0A5qNXEm1aqsKtYfdm/phRb3Ry/dadNSxVglJjT2utnVa8NmH4Lkm40AtNiPiYCGXyCZp+fZ46BaPb1F5t5v5gTGIOg"
    "EfQ7M2b2DPPHK0S4hIgc1jlq4/MyOJF6UuzMJsFV1LQNaUzIDh905gRsjWrAUFrpgHTluTiRuP4Ov5TRxsRqIB+eCL9pj5TcyxB/fcNNbJigfG3gulM"
    "7iMWdgAb4nAJJ8/tXfoKFGtjCMCHf/ReX6OsZ/vXVi/q0deWmZTYUIv4nI0XFq1BSXA+4youFKqgS9xYIqxfxy2zeAjm1J5QP9WVWNHXSoTvwt4el+j"
    "wM3cAm7rW76VPcJXbTrvMEguvTpxQXxr0FQWC7gLz5+7cZ+on7DKkKziXMQ9cZG4Tk9KWRCPfvCDaRbb4bWyCszAj8VwiIJP7iy/cKuEPIJFnRwdPkF"
    "ppzyS8aaCqLjzqbp8LqoqGw3g7tWto0m/MbMchQLHxISY1cq3xHb09fHBNH3DXfzB++ICw68/gYj3ShJcMOtExl8a0naNy4Xm+s3xdDX0ZR/ASHlArl"
    "e/y3C2VO2V59H7AFXvQaNvraQXUOtHLEu"
)
COMBINE_KEYS = ["combine_appid", "combine_out_trade_no", "combine_mchid", "sub_orders", "combine_payer_info"]
SUB_ORDER_KEYS = [
    "mchid", "trade_type", "trade_state", "bank_type", "attach", "amount", "success_time", "transaction_id",
    "out_trade_no",
]  # fmt: skip


@pytest.fixture
def direct(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def partner(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(mchid=SP_MCHID, appid=SP_APPID, sub_mchids=(SUB_A, SUB_B))


def delivered(receiver: NotifyReceiver, factory: NotificationFactory) -> list[VerifiedNotification]:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    return [verifier.verify(headers, body) for headers, body, _ in receiver.received]


def paid_combined(
    sandbox: Sandbox, factory: NotificationFactory, receiving: Receiving, number: str, sub_orders: list[SubOrder]
) -> tuple[VerifiedNotification, list[str]]:
    """A combined order created and paid: the one notification it sent, verified, and its transaction_ids."""
    receiver = NotifyReceiver()
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_combined_order(number, sub_orders)
        transaction_ids = sandbox.pay_combined_order(number)
        sandbox.wait_idle(5)
    (notification,) = delivered(receiver, factory)
    return notification, transaction_ids


def test_d5_combined_plaintext_and_ciphertext_are_reproduced_byte_for_byte() -> None:
    """[next: Combined payment notification; Derived vectors] D5: 869 bytes, nonce Cb3nV8tE1qWz, AAD transaction."""
    success_time = "2015-05-20T13:29:35.120+08:00"
    sub_orders = [
        resources.combine_sub_order(
            Party(mchid, APPID),
            out_trade_no,
            10,
            transaction_id=transaction_id,
            success_time=success_time,
            bank_type="CMC",
            attach=attach,
        )
        for mchid, attach, transaction_id, out_trade_no in [
            ("1900000109", "深圳分店", "1009660380201506130728806387", "20150806125346"),
            ("1900000179", "广州分店", "1009660380201506130728452147", "20150806124855"),
        ]
    ]
    resource = resources.combine_transaction(
        combine_appid=APPID,
        combine_mchid="1900000109",
        combine_out_trade_no="20150806125346",
        sub_orders=sub_orders,
        device_id="POS1:1",
    )
    assert compact_json(resource) == D5_PLAINTEXT and len(D5_PLAINTEXT) == 869
    assert (
        hashlib.sha256(D5_PLAINTEXT).hexdigest() == "6528a6c46bc2a3a4247a94f058b6b55b9ac6584986074b4bdc359bf6f81e8967"
    )
    assert aead.encrypt(APIV3_KEY.encode(), "Cb3nV8tE1qWz", "transaction", D5_PLAINTEXT) == D5_CIPHERTEXT
    factory = NotificationFactory(apiv3_key=APIV3_KEY)
    body = factory.envelope(resource, nonce="Cb3nV8tE1qWz")
    assert json.loads(body)["resource"]["ciphertext"] == D5_CIPHERTEXT
    delivery = factory.deliver(body)
    verifier = NotificationVerifier(factory.key_store(), APIV3_KEY.encode())
    assert compact_json(verifier.verify(delivery.headers, delivery.body).resource) == D5_PLAINTEXT


def test_paying_a_combined_order_sends_one_notification_for_every_sub_order(
    direct: Sandbox, factory: NotificationFactory, receiving: Receiving
) -> None:
    sub_orders = [SubOrder("ORDER-9001", 100, attach="深圳分店"), SubOrder("ORDER-9002", 250, description="伞")]
    notification, transaction_ids = paid_combined(direct, factory, receiving, "COMBINE-9001", sub_orders)
    resource = notification.resource
    assert (notification.event_type, notification.envelope["resource"]["original_type"]) == (
        "TRANSACTION.SUCCESS",
        "transaction",
    )
    assert list(resource) == COMBINE_KEYS  # D5's order (no scene_info: the sandbox has no device)
    assert (resource["combine_appid"], resource["combine_mchid"], resource["combine_out_trade_no"]) == (
        APPID,
        MCHID,
        "COMBINE-9001",
    )
    assert resource["combine_payer_info"] == {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}
    first, second = resource["sub_orders"]
    assert list(first) == SUB_ORDER_KEYS and list(second) == SUB_ORDER_KEYS
    assert [(s["mchid"], s["out_trade_no"], s["transaction_id"], s["trade_state"]) for s in (first, second)] == [
        (MCHID, "ORDER-9001", transaction_ids[0], "SUCCESS"),
        (MCHID, "ORDER-9002", transaction_ids[1], "SUCCESS"),
    ]
    assert first["amount"] == {"total_amount": 100, "currency": "CNY", "payer_amount": 100, "payer_currency": "CNY"}
    assert second["amount"]["total_amount"] == 250 and first["attach"] == "深圳分店"
    assert first["success_time"] == second["success_time"]  # all succeed together
    assert len(set(transaction_ids)) == 2
    (logged,) = direct.notifications
    assert (logged.combine_out_trade_no, logged.state) == ("COMBINE-9001", "delivered")


def test_a_providers_combined_order_names_each_sub_merchant(
    partner: Sandbox, factory: NotificationFactory, receiving: Receiving
) -> None:
    sub_orders = [
        SubOrder("ORDER-9011", 100, sub_mchid=SUB_A, sub_appid="wxd678efh567hg6999"),
        SubOrder("ORDER-9011", 300, sub_mchid=SUB_B),  # the same number, another sub-merchant
    ]
    notification, _ = paid_combined(partner, factory, receiving, "COMBINE-9011", sub_orders)
    resource = notification.resource
    assert (resource["combine_mchid"], resource["combine_appid"]) == (SP_MCHID, SP_APPID)
    with_appid, plain = resource["sub_orders"]
    # [next: Combined payment notification]: in partner mode each sub-order's mchid is the provider's.
    assert list(with_appid) == ["mchid", "sub_mchid", "sub_appid", "sub_openid", *SUB_ORDER_KEYS[1:]]
    assert (with_appid["mchid"], with_appid["sub_mchid"], with_appid["amount"]["total_amount"]) == (
        SP_MCHID,
        SUB_A,
        100,
    )
    assert list(plain) == ["mchid", "sub_mchid", *SUB_ORDER_KEYS[1:]]
    assert (plain["mchid"], plain["sub_mchid"], plain["amount"]["total_amount"]) == (SP_MCHID, SUB_B, 300)
    assert partner.orders.order("ORDER-9011", SUB_B).trade_state == "SUCCESS"


def test_the_combined_query_answers_signed_and_the_order_paths_do_not_know_sub_orders(
    direct: Sandbox, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    direct.create_combined_order("COMBINE-9021", [SubOrder("ORDER-9021", 100), SubOrder("ORDER-9022", 200)])
    with serve(direct.app) as wechat:
        unpaid = call(wechat, "GET", "/v3/combine-transactions/out-trade-no/COMBINE-9021", key=merchant_key)
        assert unpaid.status_code == 200 and verified(unpaid, factory.key_store()) == factory.public_key_id
        assert [s["trade_state"] for s in unpaid.json()["sub_orders"]] == ["NOTPAY", "NOTPAY"]
        assert not {"transaction_id", "success_time"} & unpaid.json()["sub_orders"][0].keys()

        transaction_ids = direct.pay_combined_order("COMBINE-9021", notify=False)
        paid = call(wechat, "GET", "/v3/combine-transactions/out-trade-no/COMBINE-9021", key=merchant_key)
        assert verified(paid, factory.key_store())
        assert paid.json() == json.loads(compact_json(direct_resource(direct, "COMBINE-9021")))
        assert [s["transaction_id"] for s in paid.json()["sub_orders"]] == transaction_ids

        for target in (
            f"/v3/pay/transactions/out-trade-no/ORDER-9021?mchid={MCHID}",
            f"/v3/pay/transactions/id/{transaction_ids[0]}?mchid={MCHID}",
            "/v3/combine-transactions/out-trade-no/COMBINE-9999",
        ):
            answer = call(wechat, "GET", target, key=merchant_key)
            assert (answer.status_code, answer.json()["code"]) == (404, "ORDER_NOT_EXIST"), target
    with pytest.raises(SandboxError) as one_alone:
        direct.pay("ORDER-9022")
    assert one_alone.value.code == "INVALID_REQUEST"


def direct_resource(sandbox: Sandbox, combine_out_trade_no: str) -> dict[str, Any]:
    return views.combined_transaction(sandbox.merchant, sandbox.orders.combined(combine_out_trade_no))


def test_a_combined_order_is_closed_whole_and_named_exactly(
    partner: Sandbox, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    partner.create_combined_order("COMBINE-9031", [SubOrder("ORDER-9031", 100, sub_mchid=SUB_A)])
    partner.create_combined_order("COMBINE-9032", [SubOrder("ORDER-9032", 100, sub_mchid=SUB_B)])
    partner.pay_combined_order("COMBINE-9032", notify=False)
    path = "/v3/combine-transactions/out-trade-no/{}/close"

    def close(no: str, sub_orders: list[dict[str, str]], appid: str = SP_APPID) -> httpx.Response:
        body = compact_json({"combine_appid": appid, "sub_orders": sub_orders})
        return call(wechat, "POST", path.format(no), body, key=merchant_key, mchid=SP_MCHID)

    exact = [{"mchid": SP_MCHID, "out_trade_no": "ORDER-9031", "sub_mchid": SUB_A}]
    with serve(partner.app) as wechat:
        for wrong in (
            [{"mchid": SP_MCHID, "out_trade_no": "ORDER-9031"}],  # no sub_mchid
            [*exact, {"mchid": SP_MCHID, "out_trade_no": "ORDER-9099", "sub_mchid": SUB_A}],
            [{"mchid": "1900000999", "out_trade_no": "ORDER-9031", "sub_mchid": SUB_A}],
        ):
            refused = close("COMBINE-9031", wrong)
            assert (refused.status_code, refused.json()["code"]) == (400, "PARAM_ERROR"), wrong
        assert close("COMBINE-9031", exact, appid="wxd678efh567hg6787").status_code == 400
        closed = close("COMBINE-9031", exact)
        assert closed.status_code == 204 and verified(closed, factory.key_store())
        paid = close("COMBINE-9032", [{"mchid": SP_MCHID, "out_trade_no": "ORDER-9032", "sub_mchid": SUB_B}])
        assert (paid.status_code, paid.json()["code"]) == (400, "ORDER_PAID")
    with pytest.raises(SandboxError) as after:
        partner.pay_combined_order("COMBINE-9031")
    assert after.value.code == "ORDER_CLOSED"


def test_sub_orders_are_refunded_alone_and_billed_on_their_own_lines(
    direct: Sandbox, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey, receiving: Receiving
) -> None:
    receiver = NotifyReceiver()
    with serve(direct.app) as wechat, receiving(direct, receiver):
        direct.create_combined_order("COMBINE-9041", [SubOrder("ORDER-9041", 100), SubOrder("ORDER-9042", 250)])
        transaction_ids = direct.pay_combined_order("COMBINE-9041", notify=False)
        direct.refund("ORDER-9042", "R-9042", 50)
        direct.wait_idle(5)
        success_time = direct.orders.order("ORDER-9041").success_time or ""
        rows = trade_bill(wechat, merchant_key, dt.datetime.fromisoformat(success_time).astimezone(CST).date())

    # [next: Refunds of sub-orders]: an ordinary refund notification, the sub-order's amount as its total.
    (refund,) = delivered(receiver, factory)
    assert refund.event_type == "REFUND.SUCCESS"
    assert (refund.resource["out_trade_no"], refund.resource["transaction_id"]) == ("ORDER-9042", transaction_ids[1])
    assert refund.resource["amount"]["total"] == 250
    assert not any(key.startswith("combine") for key in refund.resource)
    rows.sort(key=lambda r: (r.out_trade_no, r.trade_state))
    assert [(r.out_trade_no, r.transaction_id, r.trade_state, r.amount_total_fen, r.refund_fen) for r in rows] == [
        ("ORDER-9041", transaction_ids[0], "SUCCESS", 100, 0),
        ("ORDER-9042", transaction_ids[1], "REFUND", 0, 50),
        ("ORDER-9042", transaction_ids[1], "SUCCESS", 250, 0),
    ]


def test_combined_orders_follow_the_rules(direct: Sandbox, partner: Sandbox) -> None:
    def code_of(action: Callable[[], object]) -> str:
        with pytest.raises(SandboxError) as error:
            action()
        return error.value.code

    one = [SubOrder("ORDER-9051", 100)]
    assert code_of(lambda: direct.create_combined_order("COMBINE-9051", one)) == "PARAM_ERROR"  # 2-10 for a merchant
    assert code_of(lambda: direct.create_combined_order("C", [*one, SubOrder("ORDER-9052", 1)])) == "PARAM_ERROR"
    twice = [SubOrder("ORDER-9053", 100), SubOrder("ORDER-9053", 100)]
    assert code_of(lambda: direct.create_combined_order("COMBINE-9053", twice)) == "PARAM_ERROR"
    assert direct.orders.all() == []  # nothing half-made
    partner.create_combined_order("COMBINE-9054", [SubOrder("ORDER-9054", 100, sub_mchid=SUB_A)])  # 1-50 for a provider
    again = [SubOrder("ORDER-9055", 100, sub_mchid=SUB_A)]
    assert code_of(lambda: partner.create_combined_order("COMBINE-9054", again)) == "OUT_TRADE_NO_USED"
    assert code_of(lambda: partner.create_combined_order("COMBINE-9056", [SubOrder("ORDER-9056", 1)])) == "PARAM_ERROR"


def test_combined_orders_over_the_control_endpoints(
    partner: Sandbox, factory: NotificationFactory, receiving: Receiving
) -> None:
    receiver = NotifyReceiver()
    with serve(partner.app) as control, receiving(partner, receiver):
        created = control.post(
            "/sandbox/combined-orders",
            json={
                "combine_out_trade_no": "COMBINE-9061",
                "sub_orders": [
                    {"out_trade_no": "ORDER-9061", "amount_total": 100, "sub_mchid": SUB_A, "attach": "A"},
                    {"out_trade_no": "ORDER-9062", "amount_total": 200, "sub_mchid": SUB_B},
                ],
            },
        )
        assert created.status_code == 201
        assert [s["trade_state"] for s in created.json()["sub_orders"]] == ["NOTPAY", "NOTPAY"]
        paid = control.post("/sandbox/combined-orders/COMBINE-9061/pay", json={})
        partner.wait_idle(5)
        shown = control.get("/sandbox/combined-orders/COMBINE-9061").json()
        bad = control.post("/sandbox/combined-orders", json={"combine_out_trade_no": "COMBINE-9063", "sub_orders": [1]})
    assert paid.status_code == 200 and len(paid.json()["transaction_ids"]) == 2
    assert [s["trade_state"] for s in shown["sub_orders"]] == ["SUCCESS", "SUCCESS"]
    (notification,) = delivered(receiver, factory)
    assert notification.resource == shown
    assert (bad.status_code, bad.json()["code"]) == (400, "PARAM_ERROR")
