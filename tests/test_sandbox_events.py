"""Notifications of other types from the sandbox ([next: Other notification types] of the reference
../shared/wechatpay-protocol-next.md; [protocol: Event types]): complaints, profit-sharing, payouts, any
event, signed and encrypted like payments, verified and decrypted by the project's own verifier."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox.delivery import COMPLAINT_RETRY_SCHEDULE, RETRY_SCHEDULE
from ledger.wechatpay.sandbox.server import Sandbox, SandboxError
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.constants import MCHID
from tests.support.sandbox import NotifyReceiver, Receiving, serve

SUB_A = "1900000109"


def delivered(receiver: NotifyReceiver, factory: NotificationFactory) -> list[VerifiedNotification]:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    return [verifier.verify(headers, body) for headers, body, _ in receiver.received]


def test_complaints_are_verified_encrypted_notifications_of_their_own_type(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    sandbox = make_sandbox()
    receiver = NotifyReceiver()
    with serve(sandbox.app), receiving(sandbox, receiver):
        created = sandbox.complain()
        changed = sandbox.complain("MERCHANT_APPROVE_REFUND", complaint_id=created)
        sandbox.wait_idle(5)

    # Deliveries run concurrently: they may arrive in any order.
    first, second = sorted(delivered(receiver, factory), key=lambda n: n.event_type)
    assert (first.event_type, first.envelope["summary"]) == ("COMPLAINT.CREATE", "投诉单创建通知")
    assert first.resource == {"complaint_id": created, "action_type": "CREATE_COMPLAINT"}
    assert first.envelope["resource"]["original_type"] == first.envelope["resource"]["associated_data"] == "complaint"
    assert (second.event_type, second.resource["complaint_id"]) == ("COMPLAINT.STATE_CHANGE", changed)
    assert second.resource["action_type"] == "MERCHANT_APPROVE_REFUND"
    assert len(created) == 27 and created.isdigit()


def test_complaints_are_retried_on_their_own_schedule(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving
) -> None:
    """[next: Other notification types]: 5 s once, 1 min ten times, then every 5 min, 1000 retries within a week."""
    assert COMPLAINT_RETRY_SCHEDULE[:12] == (5, *(60,) * 10, 300)
    assert len(COMPLAINT_RETRY_SCHEDULE) == 1000 and sum(COMPLAINT_RETRY_SCHEDULE) <= 7 * 24 * 3600
    sandbox = make_sandbox(time_scale=10)  # the first retry after 0.5 s, where a payment's waits 1.5 s
    receiver = NotifyReceiver(answers=(503, 204))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.complain()
        sandbox.wait_idle(5)
    (_, _, first), (_, _, again) = receiver.received
    assert COMPLAINT_RETRY_SCHEDULE[0] / 10 - 0.01 <= again - first < RETRY_SCHEDULE[0] / 10


def test_profit_sharing_names_the_order_the_receiver_and_the_direction(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    direct = make_sandbox()
    partner = make_sandbox(mchid="1230000109", appid="wx8888888888888888", sub_mchids=(SUB_A,))
    receiver = NotifyReceiver()
    with serve(direct.app), serve(partner.app), receiving(direct, receiver):
        direct.create_order("ORDER-9201", 100)
        transaction_id = direct.pay("ORDER-9201", notify=False)
        direct.share_profit("ORDER-9201", 30, out_order_no="P-9201")
        direct.share_profit("ORDER-9201", 30, out_order_no="P-9201", returned=True)
        direct.wait_idle(5)
        with receiving(partner, receiver):
            partner.create_order("ORDER-9202", 100, sub_mchid=SUB_A)
            partner.pay("ORDER-9202", sub_mchid=SUB_A, notify=False)
            partner.share_profit("ORDER-9202", 10, sub_mchid=SUB_A)
            partner.wait_idle(5)

    *by_direct, provider = delivered(receiver, factory)  # the provider's was sent once the others had arrived
    returned, shared = sorted(by_direct, key=lambda n: n.event_type)
    assert (shared.event_type, shared.envelope["summary"]) == ("PROFITSHARING.SUCCESS", "分账")
    assert (returned.event_type, returned.envelope["summary"]) == ("PROFITSHARING.RETURN", "分账回退")
    assert shared.envelope["resource"]["original_type"] == "profitsharing"
    assert list(shared.resource) == ["mchid", "transaction_id", "order_id", "out_order_no", "receiver", "success_time"]
    assert (shared.resource["mchid"], shared.resource["transaction_id"], shared.resource["out_order_no"]) == (
        MCHID,
        transaction_id,
        "P-9201",
    )
    assert shared.resource["receiver"] == {
        "type": "MERCHANT_ID",
        "account": "1900000110",
        "amount": 30,
        "description": "分给商户",
    }
    assert (provider.resource["sp_mchid"], provider.resource["sub_mchid"]) == ("1230000109", SUB_A)
    direct.create_order("ORDER-9203", 100)
    with pytest.raises(SandboxError):
        direct.share_profit("ORDER-9203", 10)  # not paid


def test_any_event_type_can_be_sent_with_the_resource_given(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    sandbox = make_sandbox()
    receiver = NotifyReceiver()
    payout = {
        "out_bill_no": "plfk2020042013",
        "transfer_bill_no": "1330000071100999991182020050700019480001",
        "state": "SUCCESS",
    }
    with serve(sandbox.app) as control, receiving(sandbox, receiver):
        by_python = sandbox.notify_other("MCHTRANSFER.BILL.FINISHED", payout)
        over_http = control.post(
            "/sandbox/notifications",
            json={
                "event_type": "COUPON.USE",
                "resource": {"stock_id": "9856000"},
                "original_type": "coupon",
                "summary": "用券",
            },
        )
        complaint = control.post("/sandbox/notifications", json={"event_type": "COMPLAINT.CREATE"})
        missing = control.post("/sandbox/notifications", json={"event_type": "COUPON.SEND"})
        sandbox.wait_idle(5)
        listed = control.get("/sandbox/notifications").json()["notifications"]

    assert over_http.status_code == 200 and complaint.status_code == 200
    assert (missing.status_code, missing.json()["code"]) == (400, "PARAM_ERROR")
    by_type = {n.event_type: n for n in delivered(receiver, factory)}
    payout_notification, coupon = by_type["MCHTRANSFER.BILL.FINISHED"], by_type["COUPON.USE"]
    complained = by_type["COMPLAINT.CREATE"]
    assert (payout_notification.id, payout_notification.resource) == (by_python, payout)
    assert payout_notification.envelope["resource"]["original_type"] == "mch_payment"
    assert (coupon.id, coupon.event_type, coupon.envelope["summary"]) == (over_http.json()["id"], "COUPON.USE", "用券")
    assert coupon.envelope["resource"]["original_type"] == "coupon"
    assert complained.resource["complaint_id"] == complaint.json()["complaint_id"]
    assert [n["event_type"] for n in listed] == ["MCHTRANSFER.BILL.FINISHED", "COUPON.USE", "COMPLAINT.CREATE"]
    assert all(n["state"] == "delivered" and n["api"] == "v3" for n in listed)
