"""The sandbox as a service provider's WeChat Pay ([next: Service-provider mode] of the reference
../shared/wechatpay-protocol-next.md): orders per sub-merchant, the partner notifications and queries,
bills with 特约商户号, and the ledger configuration it writes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.settings import Settings
from ledger.wechatpay import aead
from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox.orders import CST
from ledger.wechatpay.sandbox.resources import Party
from ledger.wechatpay.sandbox.server import Sandbox, SandboxError
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json
from tests.support.sandbox import NotifyReceiver, Receiving, call, serve, trade_bill, verified

SP_MCHID = "1230000109"
SP_APPID = "wx8888888888888888"
SUB_A = "1900000109"
SUB_B = "1900000209"
SUB_APPID = "wxd678efh567hg6999"
APIV3_KEY = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb"  # vector V3's, which D3-D5 use

# [next: Partner payment notification]'s official sample with D3's transaction_id, and D3's ciphertext.
D3_PLAINTEXT = (
    '{"sp_appid":"wx8888888888888888","sp_mchid":"1230000109","sub_appid":"wxd678efh567hg6999",'
    '"sub_mchid":"1900000109","out_trade_no":"1217752501201407033233368018",'
    '"transaction_id":"4200000000002104083200000488","trade_type":"JSAPI","trade_state":"SUCCESS",'
    '"trade_state_desc":"支付成功","bank_type":"CMC","attach":"自定义数据","success_time":"2018-06-08T10:34:56+08:00",'
    '"payer":{"sp_openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o","sub_openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},'
    '"amount":{"total":100,"payer_total":100,"currency":"CNY","payer_currency":"CNY"}}'
).encode()
D3_CIPHERTEXT = (
    "rjkovnc/Tk/NHK8/wmRsmjHaIz3N9d333wNTK6JaHYfQC/nOJeSCcs8hNN3/387iA7x+vyxEkDQsB5g0sUbHtA3HKuU866wfDVD0t+ZZ5MnQ9+lC1"
    "rW5uGUGMiatMFZmJwcQs15Pd75mzjOUsnCPIlDzKVeIMkf82unNVLpN4KrX+H39y2ECZlMoPTLk/O6CQVxKZr0xz4oBa3cyYMVSMwWK1Yz+sMpo4lE"
    "yE3GLuyMZ4CQXKxImyHMOwCeW3c8EaEerMxIBHYa3CjwWLGMpGdAAOnrGVZ/6ijro4dSUg8FOzGPnSYt1nHIRs1pv5zHqRkIXHFGXLghVX938eS9sMY"
    "cvob7ue+wsHlMcKDXiaKVml2hwb4QC/4efFx/PVeu+/cdgyFW3baNeMGPrjt/3OIrNRPYQV8LIuvu2oXIzei5/as1X75nYOC8lRPKL/7RzX6LCeIj7X"
    "3tzZr6rqvVy3mpfYgayHc510oCdJthx2QlkUtpCmanCBmXOlezUcpHehGBdH84PPUrkU3rX5/XjkbQAGyd1TOyLynL9ZpinymSZOe3reTLIQxu6TEHJ"
    "GVVpKJ8FNRCCvT/TYq0vYpUfGK4DyKGzdP+EQimx4ylDEGfXhN0WFCv3+1f9HvNbSmxSsgRcJeS2/LGHpEVdkwIZtYMN6kITn0X9S+YZ+gMlmrk1It"
    "LYu025Zr6s6akiLmnfTbADaIG+j5YrbYlydnUK830lsNlfQdw3+abacCBOo06/yeyetRgoOlxa"
)
# [next: Partner refund notification]'s constructed sample, and D4's ciphertext.
D4_PLAINTEXT = (
    '{"sp_mchid":"1230000109","sub_mchid":"1900000109","transaction_id":"4200000000002104083200000488",'
    '"out_trade_no":"1217752501201407033233368018","refund_id":"50200207182018070300011301001",'
    '"out_refund_no":"7752501201407033233368018","refund_status":"SUCCESS","success_time":"2018-06-08T10:34:56+08:00",'
    '"user_received_account":"招商银行信用卡0403","amount":{"total":100,"refund":100,"payer_total":100,"payer_refund":100}}'
).encode()
D4_CIPHERTEXT = (
    "bQlGiy45bnZrDlbAYwg5wJ8Q1ylpWBGC8vsAshlHHJyWpIAgHiYjNkajlwKeWhMh2JRPy4CHFt5bQe/4vrFpi/FyinEKrr/pUPJ7cQrQspZhSxsTX"
    "Sl4z6OG37LY+uYNSuJER1ubf4bnuvXW8L7OCWH4avSRl1rg3pNc+Mg8J0nxqmy4DsPBJTNpkAZe/3Sv9HnHMp/8RBIDNqOSxZEEnTyu/TDFgDPJFq3"
    "QcLmzcZU/Dbl5ercg7fPVZoRTqdd4eJpeBZZXbnkkK53FEHSItH4s55w3JIe9Ip85chJN797sDvR0XTOdNs814a714XNzbZLeIW89sHopox/ctz0YTr"
    "NMsqNL1SGZuaaV/CXKhFpYLf60D3r4kwnC063RpJ6nzn9pRIfOktarZAC0wCqAy8kZ2c9f0heuQu8hZugg+ZXOmvf+4wz8wasSe4eWeBa2ax5Ai8D2B"
    "fcXpwQys/ykvNeeViETV+5Hh5JGgHhlRmdtJIGKVNgqlDF8PTKs9hLa4zAKYQRwb6VsFkqYpULJ9IU5Pr6OUiKdAsSpiWrsNentC44s4fqczahX/XSu"
    "xYy23cVVFyL5UDSoBg=="
)
PARTNER_PAYMENT_KEYS = [
    "sp_appid", "sp_mchid", "sub_appid", "sub_mchid", "out_trade_no", "transaction_id", "trade_type", "trade_state",
    "trade_state_desc", "bank_type", "attach", "success_time", "payer", "amount",
]  # fmt: skip
PARTNER_REFUND_KEYS = [
    "sp_mchid", "sub_mchid", "transaction_id", "out_trade_no", "refund_id", "out_refund_no", "refund_status",
    "success_time", "user_received_account", "amount",
]  # fmt: skip


@pytest.fixture
def partner(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(mchid=SP_MCHID, appid=SP_APPID, sub_mchids=(SUB_A, SUB_B))


@pytest.fixture
def wechat(partner: Sandbox) -> Iterator[httpx.Client]:
    with serve(partner.app) as client:
        yield client


def verifier(factory: NotificationFactory) -> NotificationVerifier:
    return NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())


def delivered(receiver: NotifyReceiver, factory: NotificationFactory) -> list[VerifiedNotification]:
    """Every delivery, verified and decrypted by the project's own verifier."""
    return [verifier(factory).verify(headers, body) for headers, body, _ in receiver.received]


def get(client: httpx.Client, target: str, key: rsa.RSAPrivateKey, **signing: Any) -> httpx.Response:
    return call(client, "GET", target, key=key, mchid=SP_MCHID, **signing)


def partner_query(client: httpx.Client, key: rsa.RSAPrivateKey, out_trade_no: str, sub_mchid: str) -> httpx.Response:
    target = f"/v3/pay/partner/transactions/out-trade-no/{out_trade_no}?sp_mchid={SP_MCHID}&sub_mchid={sub_mchid}"
    return get(client, target, key)


# -- the reference's vectors -------------------------------------------------------------------


def test_d3_partner_payment_plaintext_and_ciphertext_are_reproduced_byte_for_byte() -> None:
    """[next: Partner payment notification; Derived vectors] D3: 554 bytes, nonce k4Qb2YtW9xLm, AAD transaction."""
    party = Party(SP_MCHID, SP_APPID, SUB_A, SUB_APPID)
    factory = NotificationFactory(mchid=SP_MCHID, appid=SP_APPID, apiv3_key=APIV3_KEY)
    resource = factory.transaction(
        "1217752501201407033233368018",
        100,
        transaction_id="4200000000002104083200000488",
        success_time="2018-06-08T10:34:56+08:00",
        sub_mchid=party.sub_mchid,
        sub_appid=party.sub_appid,
        bank_type="CMC",
        attach="自定义数据",
    )
    assert compact_json(resource) == D3_PLAINTEXT and len(D3_PLAINTEXT) == 554
    assert aead.encrypt(APIV3_KEY.encode(), "k4Qb2YtW9xLm", "transaction", D3_PLAINTEXT) == D3_CIPHERTEXT
    body = factory.envelope(resource, nonce="k4Qb2YtW9xLm", notification_id="EV-2018022511223320873")
    delivery = factory.deliver(body)
    notification = verifier(factory).verify(delivery.headers, delivery.body)
    assert json.loads(body)["resource"]["ciphertext"] == D3_CIPHERTEXT
    assert compact_json(notification.resource) == D3_PLAINTEXT


def test_d4_partner_refund_plaintext_and_ciphertext_are_reproduced_byte_for_byte() -> None:
    """[next: Partner refund notification; Derived vectors] D4: 426 bytes, nonce Rf7Hq2Zp0sNc, AAD refund."""
    factory = NotificationFactory(mchid=SP_MCHID, appid=SP_APPID, apiv3_key=APIV3_KEY)
    resource = factory.refund(
        "1217752501201407033233368018",
        "7752501201407033233368018",
        100,
        100,
        transaction_id="4200000000002104083200000488",
        refund_id="50200207182018070300011301001",
        sub_mchid=SUB_A,
        success_time="2018-06-08T10:34:56+08:00",
        user_received_account="招商银行信用卡0403",
    )
    assert compact_json(resource) == D4_PLAINTEXT and len(D4_PLAINTEXT) == 426
    assert aead.encrypt(APIV3_KEY.encode(), "Rf7Hq2Zp0sNc", "refund", D4_PLAINTEXT) == D4_CIPHERTEXT
    body = factory.envelope(resource, "REFUND.SUCCESS", nonce="Rf7Hq2Zp0sNc")
    assert json.loads(body)["resource"]["ciphertext"] == D4_CIPHERTEXT
    delivery = factory.deliver(body)
    assert compact_json(verifier(factory).verify(delivery.headers, delivery.body).resource) == D4_PLAINTEXT


# -- orders per sub-merchant and their notifications ---------------------------------------------


def test_partner_payments_notify_with_the_partner_fields(
    partner: Sandbox, factory: NotificationFactory, receiving: Receiving
) -> None:
    receiver = NotifyReceiver()
    with serve(partner.app), receiving(partner, receiver):
        partner.create_order("ORDER-8001", 100, sub_mchid=SUB_A, sub_appid=SUB_APPID, attach="自定义数据")
        partner.create_order("ORDER-8002", 250, sub_mchid=SUB_B)
        first = partner.pay("ORDER-8001", sub_mchid=SUB_A)
        second = partner.pay("ORDER-8002", sub_mchid=SUB_B)
        partner.wait_idle(5)

    by_no = {n.resource["out_trade_no"]: n for n in delivered(receiver, factory)}
    with_appid, without = by_no["ORDER-8001"].resource, by_no["ORDER-8002"].resource
    assert list(with_appid) == PARTNER_PAYMENT_KEYS  # D3's key order
    assert (with_appid["sp_mchid"], with_appid["sp_appid"], with_appid["sub_mchid"]) == (SP_MCHID, SP_APPID, SUB_A)
    assert (with_appid["sub_appid"], with_appid["transaction_id"], with_appid["attach"]) == (
        SUB_APPID,
        first,
        "自定义数据",
    )
    assert with_appid["payer"] == {
        "sp_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "sub_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
    }
    assert with_appid["amount"] == {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"}
    # No sub_appid at order time: no sub_appid, no sub_openid; never a direct merchant's mchid, appid or openid.
    assert list(without) == [k for k in PARTNER_PAYMENT_KEYS if k != "sub_appid"]
    assert (without["sub_mchid"], without["transaction_id"], without["payer"]) == (
        SUB_B,
        second,
        {"sp_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    )
    assert not {"mchid", "appid"} & (with_appid.keys() | without.keys())
    assert [(n.out_trade_no, n.sub_mchid) for n in partner.notifications] == [
        ("ORDER-8001", SUB_A),
        ("ORDER-8002", SUB_B),
    ]


def test_partner_refund_notifications_name_the_provider_and_the_sub_merchant(
    partner: Sandbox, factory: NotificationFactory, receiving: Receiving
) -> None:
    receiver = NotifyReceiver()
    with serve(partner.app), receiving(partner, receiver):
        partner.create_order("ORDER-8011", 100, sub_mchid=SUB_B)
        transaction_id = partner.pay("ORDER-8011", sub_mchid=SUB_B, notify=False)
        refund_id = partner.refund("ORDER-8011", "R-8011", 40, sub_mchid=SUB_B)
        partner.refund("ORDER-8011", "R-8012", 60, sub_mchid=SUB_B, status="PROCESSING")
        partner.complete_refund("R-8012", "ABNORMAL", sub_mchid=SUB_B)
        partner.wait_idle(5)

    succeeded, abnormal = sorted(delivered(receiver, factory), key=lambda n: n.event_type, reverse=True)
    assert (succeeded.event_type, abnormal.event_type) == ("REFUND.SUCCESS", "REFUND.ABNORMAL")
    resource = succeeded.resource
    assert list(resource) == PARTNER_REFUND_KEYS  # D4's key order
    assert (resource["sp_mchid"], resource["sub_mchid"], resource["transaction_id"]) == (
        SP_MCHID,
        SUB_B,
        transaction_id,
    )
    assert (resource["refund_id"], resource["out_refund_no"], resource["refund_status"]) == (
        refund_id,
        "R-8011",
        "SUCCESS",
    )
    assert resource["amount"] == {"total": 100, "refund": 40, "payer_total": 100, "payer_refund": 40}
    assert list(abnormal.resource) == [k for k in PARTNER_REFUND_KEYS if k != "success_time"]
    assert abnormal.resource["refund_status"] == "ABNORMAL"
    assert succeeded.envelope["resource"]["original_type"] == "refund"


def test_the_same_out_trade_no_under_two_sub_merchants_is_two_orders(
    partner: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    partner.create_order("ORDER-8021", 100, sub_mchid=SUB_A)
    partner.create_order("ORDER-8021", 300, sub_mchid=SUB_B)
    paid = partner.pay("ORDER-8021", sub_mchid=SUB_A, notify=False)
    partner.refund("ORDER-8021", "R-8021", 10, sub_mchid=SUB_A, notify=False)

    a, b = (
        partner_query(wechat, merchant_key, "ORDER-8021", SUB_A),
        partner_query(wechat, merchant_key, "ORDER-8021", SUB_B),
    )
    assert verified(a, factory.key_store()) and verified(b, factory.key_store())
    assert (
        a.json()["sub_mchid"],
        a.json()["trade_state"],
        a.json()["amount"]["total"],
        a.json()["transaction_id"],
    ) == (
        SUB_A,
        "REFUND",
        100,
        paid,
    )
    assert (b.json()["sub_mchid"], b.json()["trade_state"], b.json()["amount"]["total"]) == (SUB_B, "NOTPAY", 300)
    # Refund numbers are unique per sub-merchant: B may use A's, and each is found under its own.
    partner.pay("ORDER-8021", sub_mchid=SUB_B, notify=False)
    partner.refund("ORDER-8021", "R-8021", 200, sub_mchid=SUB_B, notify=False)
    refunds = [
        get(wechat, f"/v3/refund/domestic/refunds/R-8021?sub_mchid={sub}", merchant_key) for sub in (SUB_A, SUB_B)
    ]
    assert [r.json()["amount"]["refund"] for r in refunds] == [10, 200]
    assert all(verified(r, factory.key_store()) for r in refunds)


def test_a_provider_must_name_a_sub_merchant_it_serves(partner: Sandbox, make_sandbox: Callable[..., Sandbox]) -> None:
    def code_of(action: Callable[[], object]) -> str:
        with pytest.raises(SandboxError) as error:
            action()
        return error.value.code

    assert code_of(lambda: partner.create_order("ORDER-8031", 100)) == "PARAM_ERROR"
    assert code_of(lambda: partner.create_order("ORDER-8031", 100, sub_mchid="1900000999")) == "INVALID_REQUEST"
    partner.create_order("ORDER-8031", 100, sub_mchid=SUB_A)
    assert code_of(lambda: partner.pay("ORDER-8031")) == "PARAM_ERROR"
    assert code_of(lambda: partner.pay("ORDER-8031", sub_mchid=SUB_B)) == "ORDER_NOT_EXIST"
    direct = make_sandbox()
    assert code_of(lambda: direct.create_order("ORDER-8032", 100, sub_mchid=SUB_A)) == "PARAM_ERROR"
    with pytest.raises(ValueError):
        make_sandbox(sub_mchids=("not-a-mchid",))


# -- the partner queries ([next: Partner queries]) -----------------------------------------------


def test_partner_queries_are_signed_and_need_both_merchant_ids(
    partner: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    partner.create_order("ORDER-8041", 100, sub_mchid=SUB_A)
    transaction_id = partner.pay("ORDER-8041", sub_mchid=SUB_A, notify=False)

    by_id = get(
        wechat, f"/v3/pay/partner/transactions/id/{transaction_id}?sp_mchid={SP_MCHID}&sub_mchid={SUB_A}", merchant_key
    )
    assert by_id.status_code == 200 and verified(by_id, factory.key_store()) == factory.public_key_id
    assert (by_id.json()["out_trade_no"], by_id.json()["sp_mchid"]) == ("ORDER-8041", SP_MCHID)
    assert "mchid" not in by_id.json() and "sub_appid" not in by_id.json()

    base = "/v3/pay/partner/transactions/out-trade-no/ORDER-8041"
    for target, status, code in [
        (f"{base}?sub_mchid={SUB_A}", 400, "PARAM_ERROR"),
        (f"{base}?sp_mchid={SP_MCHID}", 400, "PARAM_ERROR"),
        (f"{base}?sp_mchid=1230000999&sub_mchid={SUB_A}", 404, "ORDER_NOT_EXIST"),
        (f"{base}?sp_mchid={SP_MCHID}&sub_mchid={SUB_B}", 404, "ORDER_NOT_EXIST"),
        (
            f"/v3/pay/transactions/out-trade-no/ORDER-8041?mchid={SP_MCHID}",
            404,
            "ORDER_NOT_EXIST",
        ),  # not the direct path
        (
            f"/v3/pay/partner/transactions/id/{transaction_id}?sp_mchid={SP_MCHID}&sub_mchid={SUB_B}",
            404,
            "ORDER_NOT_EXIST",
        ),
        ("/v3/refund/domestic/refunds/R-NONE", 400, "PARAM_ERROR"),  # a provider's refund query names the sub-merchant
    ]:
        answer = get(wechat, target, merchant_key)
        assert (answer.status_code, answer.json()["code"]) == (status, code), target
        assert "Wechatpay-Signature" not in answer.headers

    partner.create_order("ORDER-8042", 100, sub_mchid=SUB_B)
    body = compact_json({"sp_mchid": SP_MCHID, "sub_mchid": SUB_B})
    closed = call(
        wechat,
        "POST",
        "/v3/pay/partner/transactions/out-trade-no/ORDER-8042/close",
        body,
        key=merchant_key,
        mchid=SP_MCHID,
    )
    assert closed.status_code == 204 and verified(closed, factory.key_store())
    assert partner_query(wechat, merchant_key, "ORDER-8042", SUB_B).json()["trade_state"] == "CLOSED"


def test_a_direct_merchant_is_refused_the_partner_paths(
    make_sandbox: Callable[..., Sandbox], merchant_key: rsa.RSAPrivateKey
) -> None:
    direct = make_sandbox()
    direct.create_order("ORDER-8051", 100)
    with serve(direct.app) as client:
        for target in (
            f"/v3/pay/partner/transactions/out-trade-no/ORDER-8051?sp_mchid={direct.mchid}&sub_mchid={SUB_A}",
            f"/v3/refund/domestic/refunds/R-1?sub_mchid={SUB_A}",
            f"/v3/bill/tradebill?bill_date=2026-05-04&sub_mchid={SUB_A}",
        ):
            answer = call(client, "GET", target, key=merchant_key, mchid=direct.mchid)
            assert (answer.status_code, answer.json()["code"]) == (403, "NO_AUTH"), target


# -- bills ([next: Partner queries]: the trade bill with sub_mchid) -------------------------------------


def test_the_trade_bill_fills_the_sub_merchant_and_can_be_asked_for_one(
    partner: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    partner.create_order("ORDER-8061", 100, sub_mchid=SUB_A)
    partner.create_order("ORDER-8061", 300, sub_mchid=SUB_B)
    partner.pay("ORDER-8061", sub_mchid=SUB_A, notify=False)
    partner.pay("ORDER-8061", sub_mchid=SUB_B, notify=False)
    day = dt.datetime.fromisoformat(partner.orders.order("ORDER-8061", SUB_A).success_time or "").astimezone(CST).date()

    every = trade_bill(wechat, merchant_key, day, mchid=SP_MCHID)
    assert sorted((r.mchid, r.sub_mchid, r.appid, r.out_trade_no, r.amount_total_fen) for r in every) == [
        (SP_MCHID, SUB_A, SP_APPID, "ORDER-8061", 100),
        (SP_MCHID, SUB_B, SP_APPID, "ORDER-8061", 300),
    ]
    only_b = trade_bill(wechat, merchant_key, day, mchid=SP_MCHID, sub_mchid=SUB_B)
    assert [(r.sub_mchid, r.amount_total_fen) for r in only_b] == [(SUB_B, 300)]
    unknown = get(wechat, f"/v3/bill/tradebill?bill_date={day}&sub_mchid=1900000999", merchant_key)
    assert (unknown.status_code, unknown.json()["code"]) == (400, "PARAM_ERROR")
    # The sub-merchants' money is settled to them: the provider's own fund-flow bill has none of it.
    fund = get(wechat, f"/v3/bill/fundflowbill?bill_date={day}", merchant_key)
    assert (fund.status_code, fund.json()["code"]) == (400, "NO_STATEMENT_EXIST")


# -- the control endpoints and the ledger's configuration ----------------------------------------


def test_control_endpoints_take_the_sub_merchant(partner: Sandbox, wechat: httpx.Client, receiving: Receiving) -> None:
    receiver = NotifyReceiver()
    with receiving(partner, receiver):
        created = wechat.post(
            "/sandbox/orders", json={"out_trade_no": "ORDER-8071", "amount_total": 100, "sub_mchid": SUB_A}
        )
        assert (created.status_code, created.json()["sub_mchid"]) == (201, SUB_A)
        other = wechat.post(
            "/sandbox/orders?sub_mchid=" + SUB_B, json={"out_trade_no": "ORDER-8071", "amount_total": 7}
        )
        assert (other.status_code, other.json()["sub_mchid"], other.json()["amount"]["total"]) == (201, SUB_B, 7)
        assert wechat.post("/sandbox/orders/ORDER-8071/pay", json={"sub_mchid": SUB_A}).status_code == 200
        refunded = wechat.post(
            "/sandbox/orders/ORDER-8071/refunds", json={"sub_mchid": SUB_A, "out_refund_no": "R-8071", "amount": 30}
        )
        assert refunded.status_code == 200
        missing = wechat.post("/sandbox/orders/ORDER-8071/pay", json={})
        assert (missing.status_code, missing.json()["code"]) == (400, "PARAM_ERROR")
        partner.wait_idle(5)
        a = wechat.get(f"/sandbox/orders/ORDER-8071?sub_mchid={SUB_A}").json()
        b = wechat.get(f"/sandbox/orders/ORDER-8071?sub_mchid={SUB_B}").json()
    assert (a["order"]["trade_state"], a["refunds"][0]["amount"]["refund"]) == ("REFUND", 30)
    assert (b["order"]["trade_state"], b["refunds"]) == ("NOTPAY", [])
    assert len(receiver.received) == 2


def test_a_partner_ledger_configuration_names_the_mode_and_the_sub_merchants(partner: Sandbox, tmp_path: Path) -> None:
    env = partner.write_ledger_config(tmp_path / "sandbox", "http://127.0.0.1:8090")
    assert (env["WECHATPAY_MODE"], env["WECHATPAY_SUB_MCHIDS"]) == ("partner", f"{SUB_A},{SUB_B}")
    assert (env["WECHATPAY_MCHID"], env["WECHATPAY_APPID"]) == (SP_MCHID, SP_APPID)
    assert env["WECHATPAY_V2_KEY"] == partner.v2_key
    lines = (tmp_path / "sandbox" / "env").read_text().splitlines()
    assert dict(line.split("=", 1) for line in lines) == env
    merchant = Settings.load({**env, "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'l.sqlite3'}"}).default_merchant
    assert merchant is not None and merchant.mchid == SP_MCHID
