"""Legacy APIv2 XML notifications from the sandbox ([protocol: Legacy APIv2 XML]): payments signed with
its APIv2 key (MD5 or HMAC-SHA256), refunds with an encrypted `req_info`, checked with the project's own
`parse_v2_notification`, the reference's vectors (T1, D6, D7, T8) reproduced by the sandbox's builders,
and deliveries acknowledged only by the exact success XML with HTTP 200."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.errors import ConfigurationError, V2SignInvalid
from ledger.wechatpay.sandbox import legacy
from ledger.wechatpay.sandbox.delivery import RETRY_SCHEDULE
from ledger.wechatpay.sandbox.orders import CST
from ledger.wechatpay.sandbox.resources import Party
from ledger.wechatpay.sandbox.server import Sandbox, SandboxError
from ledger.wechatpay.v2 import (
    HMAC_SHA256,
    V2Notification,
    answer_xml,
    decrypt_ecb,
    encrypt_req_info,
    parse_v2_notification,
    req_info_key,
)
from tests.support.constants import APPID, MCHID
from tests.support.sandbox import NotifyReceiver, Receiving, serve

LIMIT = 64 * 1024
DOC_KEY = "192006250b4c09247ec02edce69f6a2d"  # the v2 documentation's example key
T1_KEY = "ziR0QKsTUfMOuochC9RfCdmfHECorQAP"
SUCCESS = answer_xml(True)
OK = (200, SUCCESS)
SUB_A, SUB_B = "1900000109", "1900000209"


def parsed(body: bytes, key: str) -> V2Notification:
    return parse_v2_notification(body, key, max_bytes=LIMIT)


# -- the reference's vectors, from the sandbox's builders -----------------------------------------


def test_d6_the_official_sample_notification_signs_as_published() -> None:
    """[protocol: APIv2 vectors] D6: the 19 fields of the official sample, MD5 F3F481B7…, HMAC-SHA256 24E6E92F…;
    T8's published sign is a bad sign."""
    fields = {
        "appid": "wx2421b1c4370ec43b", "attach": "支付测试", "bank_type": "CFT", "fee_type": "CNY",
        "is_subscribe": "Y", "mch_id": "10000100", "nonce_str": "5d2b6c2a8db53831f7eda20af46e531c",
        "openid": "oUpF8uMEb4qRXf22hE3X68TekukE", "out_trade_no": "1409811653", "result_code": "SUCCESS",
        "return_code": "SUCCESS", "time_end": "20140903131540", "total_fee": "1", "coupon_fee": "10",
        "coupon_count": "1", "coupon_type": "CASH", "coupon_id": "10000", "trade_type": "JSAPI",
        "transaction_id": "1004400740201409030005092168",
    }  # fmt: skip
    md5 = parsed(legacy.signed_xml(fields, DOC_KEY), DOC_KEY)
    assert md5.fields["sign"] == "F3F481B732273AFA2839E877583F311D"
    hmac_signed = parsed(legacy.signed_xml({**fields, "sign_type": HMAC_SHA256}, DOC_KEY), DOC_KEY)
    assert hmac_signed.fields["sign"] == "24E6E92F0FDF7A6E11079FDA7500F7AC2220CB42E026B3AFB4811FFA0E706008"
    published = legacy.signed_xml(fields, DOC_KEY).replace(
        b"F3F481B732273AFA2839E877583F311D", b"B552ED6B279343CB493C5DD0D78AB241"
    )
    with pytest.raises(V2SignInvalid):
        parsed(published, DOC_KEY)
    with pytest.raises(V2SignInvalid):
        parsed(legacy.signed_xml(fields, T1_KEY), DOC_KEY)  # another merchant's key


def test_t1_and_d7_req_info_are_laid_out_and_encrypted_as_published() -> None:
    """[protocol: APIv2 vectors] T1 (a real callback: 820 bytes, one element a line) and D7 (the PHP sample)."""
    t1 = legacy.req_info_plaintext(
        legacy.refund_fields(
            "4893e76d8c8b434cb64e9cd536338e33",
            "50fd012ed1b311e7af7800163e32c503",
            6,
            6,
            transaction_id="4200000015201711256947025404",
            refund_id="50000404922017112502468056157",
            refund_status="SUCCESS",
            success_time="2017-11-25T15:36:17+08:00",
            refund_account="REFUND_SOURCE_RECHARGE_FUNDS",
        )
    )
    assert len(t1) == 820
    assert hashlib.sha256(t1).hexdigest() == "fe9673e322c7ed0db1fa2871c6fce06da29e8063215a8418c54db8f192a7f451"
    t1_req_info = encrypt_req_info(t1, T1_KEY)
    assert t1_req_info.startswith("YYwp8C48th0wnQzTqeI+41pflB26v+smFj9z6h9RPBgxTyZyxc+4YNEz7QEgZNWj")
    assert t1_req_info.endswith("/zFz113EPgWPjp16TwBoziq96MMekvWKY/vdhjol8VFtGH9F61Oy1Xwf6DJtPw==")

    d7 = (
        legacy.req_info_plaintext(
            legacy.refund_fields(
                "71106718111915575302817",
                "131811191610442717309",
                3960,
                3960,
                transaction_id="4200000215201811190261405420",
                refund_id="50000408942018111907145868882",
                refund_status="SUCCESS",
                success_time="2018-11-19T16:24:13+08:00",
                refund_account="REFUND_SOURCE_RECHARGE_FUNDS",
            )
        )
        + b"\n"
    )  # the PHP fixture is a file: it ends in a newline
    assert len(d7) == 813
    assert hashlib.sha256(d7).hexdigest() == "abaac7c4b685e5158e844cd2dfc0c5d29b2f621c8fc5c28471a09bb04a2c06ac"
    d7_req_info = encrypt_req_info(d7, DOC_KEY)
    assert len(d7_req_info) == 1088
    assert d7_req_info.startswith("4gS8kbcHysCW7bHqyEU0M4GTNkgJQP6/zKHbA/E3CvwLlNgCKUkGRy0OpONZjd4s")
    assert d7_req_info.endswith("4/arW1IeJs8Sq12CiJFB")

    notification = parsed(legacy.refund_xml(Party(MCHID, APPID), t1, T1_KEY, nonce="TeqClE3i0mvn3DrK"), T1_KEY)
    assert notification.kind == "refund" and "sign" not in notification.fields
    assert notification.req_info is not None and notification.req_info["refund_recv_accout"] == "支付用户零钱"


# -- the sandbox sending them -------------------------------------------------------------------


def test_a_v2_payment_notification_is_signed_xml_to_the_v2_url(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving
) -> None:
    sandbox = make_sandbox()
    receiver = NotifyReceiver(answers=(OK,))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9101", 100, attach="batch=7")
        sandbox.create_order("ORDER-9102", 100)
        md5_paid = sandbox.pay("ORDER-9101", api="v2")
        hmac_paid = sandbox.pay("ORDER-9102", api="v2", sign_type=HMAC_SHA256, discount=30, coupon_type="NOCASH")
        sandbox.wait_idle(5)

    assert receiver.paths == ["/v2/notify", "/v2/notify"]
    assert all(h["content-type"] == "text/xml" for h, _, _ in receiver.received)
    assert not any(name.startswith("wechatpay-") for h, _, _ in receiver.received for name in h)
    # Deliveries run concurrently: they may arrive in any order.
    by_no = {parsed(body, sandbox.v2_key).fields["out_trade_no"]: body for _, body, _ in receiver.received}
    md5_body = by_no["ORDER-9101"]
    md5, hmac_signed = parsed(md5_body, sandbox.v2_key), parsed(by_no["ORDER-9102"], sandbox.v2_key)
    assert (md5.kind, "sign_type" in md5.fields, len(md5.fields["sign"])) == ("payment", False, 32)
    assert (hmac_signed.fields["sign_type"], len(hmac_signed.fields["sign"])) == (HMAC_SHA256, 64)
    paid_at = dt.datetime.fromisoformat(sandbox.orders.order("ORDER-9101").success_time or "").astimezone(CST)
    assert {
        k: md5.fields[k] for k in ("appid", "mch_id", "out_trade_no", "transaction_id", "total_fee", "cash_fee")
    } == {
        "appid": APPID,
        "mch_id": MCHID,
        "out_trade_no": "ORDER-9101",
        "transaction_id": md5_paid,
        "total_fee": "100",
        "cash_fee": "100",
    }
    assert (md5.fields["time_end"], md5.fields["attach"]) == (paid_at.strftime("%Y%m%d%H%M%S"), "batch=7")
    assert (md5.fields["return_code"], md5.fields["result_code"], md5.fields["trade_type"]) == ("SUCCESS",) * 2 + (
        "JSAPI",
    )
    # A coupon: total_fee is the order's, cash_fee what the payer paid; a NOCASH coupon is not settled.
    coupon = {k: v for k, v in hmac_signed.fields.items() if k.startswith(("coupon", "cash", "total", "settlement"))}
    assert coupon == {
        "cash_fee": "70",
        "coupon_count": "1",
        "coupon_fee": "30",
        "coupon_fee_0": "30",
        "coupon_id_0": coupon["coupon_id_0"],
        "coupon_type_0": "NOCASH",
        "settlement_total_fee": "70",
        "total_fee": "100",
    }
    assert hmac_signed.fields["transaction_id"] == hmac_paid
    with pytest.raises(V2SignInvalid):
        parsed(md5_body, DOC_KEY)
    assert [(n.api, n.state, n.event_type) for n in sandbox.notifications] == [
        ("v2", "delivered", "TRANSACTION.SUCCESS")
    ] * 2


@pytest.mark.parametrize(
    ("status", "v2_status"), [("SUCCESS", "SUCCESS"), ("CLOSED", "REFUNDCLOSE"), ("ABNORMAL", "CHANGE")]
)
def test_a_v2_refund_notification_carries_an_encrypted_req_info(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving, status: str, v2_status: str
) -> None:
    sandbox = make_sandbox()
    receiver = NotifyReceiver(answers=(OK,))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9111", 100)
        transaction_id = sandbox.pay("ORDER-9111", notify=False)
        refund_id = sandbox.refund("ORDER-9111", "R-9111", 40, status=status, api="v2", source="VENDOR_PLATFORM")
        sandbox.wait_idle(5)

    ((_, body, _),) = receiver.received
    notification = parsed(body, sandbox.v2_key)
    assert notification.kind == "refund" and "sign" not in notification.fields
    assert list(notification.fields) == ["return_code", "appid", "mch_id", "nonce_str", "req_info"]
    info = notification.req_info
    assert info is not None
    assert {k: info[k] for k in ("out_trade_no", "out_refund_no", "transaction_id", "refund_id")} == {
        "out_trade_no": "ORDER-9111",
        "out_refund_no": "R-9111",
        "transaction_id": transaction_id,
        "refund_id": refund_id,
    }
    assert (info["refund_fee"], info["total_fee"], info["refund_status"]) == ("40", "100", v2_status)
    assert info["refund_request_source"] == "VENDOR_PLATFORM"
    assert ("success_time" in info) == (status == "SUCCESS")
    # Laid out as a real callback: one element a line, in ASCII order, no newline after </root>.
    raw = decrypt_ecb(req_info_key(sandbox.v2_key), base64.b64decode(notification.fields["req_info"]))
    assert raw.startswith(b"<root>\n<out_refund_no>") and raw.endswith(b"</transaction_id>\n</root>")
    assert list(info) == sorted(info)


def test_a_providers_v2_notifications_name_the_sub_merchant(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving
) -> None:
    sandbox = make_sandbox(mchid="1230000109", appid="wx8888888888888888", sub_mchids=(SUB_A, SUB_B))
    receiver = NotifyReceiver(answers=(OK,))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9121", 100, sub_mchid=SUB_B, sub_appid="wxd678efh567hg6999")
        sandbox.pay("ORDER-9121", sub_mchid=SUB_B, api="v2")
        sandbox.refund("ORDER-9121", "R-9121", 100, sub_mchid=SUB_B, api="v2")
        sandbox.wait_idle(5)

    by_kind = {n.kind: n for n in (parsed(body, sandbox.v2_key) for _, body, _ in receiver.received)}
    payment, refund = by_kind["payment"], by_kind["refund"]
    assert (payment.fields["mch_id"], payment.fields["appid"], payment.fields["sub_mch_id"]) == (
        "1230000109",
        "wx8888888888888888",
        SUB_B,
    )
    assert (payment.fields["sub_appid"], payment.fields["sub_openid"]) == (
        "wxd678efh567hg6999",
        payment.fields["openid"],
    )
    assert (refund.fields["mch_id"], refund.fields["sub_mch_id"], refund.fields["sub_appid"]) == (
        "1230000109",
        SUB_B,
        "wxd678efh567hg6999",
    )


def test_only_the_exact_success_xml_with_200_acknowledges_a_v2_notification(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving
) -> None:
    sandbox = make_sandbox(time_scale=1_000_000)
    receiver = NotifyReceiver(
        answers=(
            (200, b""),
            (204, b""),
            (500, SUCCESS),
            (200, b"<xml><return_code>SUCCESS</return_code></xml>"),
            (200, answer_xml(False, "busy")),
            (200, SUCCESS + b"\n"),
            OK,
        )
    )
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9131", 100)
        sandbox.pay("ORDER-9131", api="v2")
        sandbox.wait_idle(5)

    assert len({body for _, body, _ in receiver.received}) == 1  # the same XML every time
    assert [(d.attempt, d.status, d.accepted) for d in sandbox.deliveries] == [
        (0, 200, False),
        (1, 204, False),
        (2, 500, False),
        (3, 200, False),
        (4, 200, False),
        (5, 200, False),
        (6, 200, True),
    ]
    assert [n.state for n in sandbox.notifications] == ["delivered"]


def test_an_unacknowledged_v2_notification_is_retried_on_wechats_schedule(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving
) -> None:
    sandbox = make_sandbox(time_scale=100)
    receiver = NotifyReceiver(answers=((200, b"OK"), OK))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-9141", 100)
        sandbox.pay("ORDER-9141", notify=False)
        sandbox.refund("ORDER-9141", "R-9141", 100, api="v2")
        sandbox.wait_idle(5)
    (_, first, at_first), (_, again, at_again) = receiver.received
    assert first == again and at_again - at_first >= RETRY_SCHEDULE[0] / 100 - 0.01

    never = make_sandbox(time_scale=1_000_000)
    silent = NotifyReceiver(answers=((200, b""),))
    with serve(never.app), receiving(never, silent):
        never.create_order("ORDER-9142", 100)
        never.pay("ORDER-9142", api="v2")
        never.wait_idle(5)
    assert len(silent.received) == len(RETRY_SCHEDULE) + 1
    assert [n.state for n in never.notifications] == ["failed"]


def test_v2_options_are_checked_before_anything_changes(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    sandbox.create_order("ORDER-9151", 100)
    with serve(sandbox.app) as control:
        for options in ({"api": "v1"}, {"api": "v2", "sign_type": "SHA1"}, {"discount": 10, "coupon_type": "GIFT"}):
            refused = control.post("/sandbox/orders/ORDER-9151/pay", json=options)
            assert (refused.status_code, refused.json()["code"]) == (400, "PARAM_ERROR"), options
        assert control.get("/sandbox/orders/ORDER-9151").json()["order"]["trade_state"] == "NOTPAY"
        paid = control.post("/sandbox/orders/ORDER-9151/pay", json={"api": "v2", "sign_type": "HMAC-SHA256"})
        assert paid.status_code == 200
        refund = {"out_refund_no": "R-9151", "amount": 1, "api": "v2", "source": "BY_HAND"}
        assert control.post("/sandbox/orders/ORDER-9151/refunds", json=refund).status_code == 400
    assert sandbox.orders.order("ORDER-9151").refunds == {}
    with pytest.raises(SandboxError):
        sandbox.pay("ORDER-9151", discount=100)  # a coupon leaves the payer something to pay


def test_the_v2_key_is_the_sandboxs_own_and_written_for_the_ledger(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    assert make_sandbox().v2_key != make_sandbox().v2_key
    sandbox = make_sandbox(v2_key=DOC_KEY)
    assert sandbox.write_ledger_config(tmp_path, "http://127.0.0.1:8090")["WECHATPAY_V2_KEY"] == DOC_KEY
    with pytest.raises(ConfigurationError):
        make_sandbox(v2_key="too short")
