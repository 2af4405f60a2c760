"""The sandbox's refund API ([protocol: Creating a refund]) and its closes ([protocol: Closing an order]), over
real HTTP on loopback, as a merchant's signed requests meet them: direct, service provider ([next: Partner
queries]) and combined sub-orders ([next: Refunds of sub-orders]); idempotent by out_refund_no; the faults
the ledger's tests of an unknown outcome need; what WeChat saw, request by request; the late payment of a
closed order."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.wechatpay.notification import NotificationVerifier, VerifiedNotification
from ledger.wechatpay.sandbox.server import Sandbox, SandboxError, SubOrder
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json
from tests.support.constants import MCHID
from tests.support.sandbox import NotifyReceiver, Receiving, call, serve, verified
from tests.support.servers import running

SP_MCHID, SP_APPID = "1230000109", "wx8888888888888888"
SUB_A, SUB_B = "1900000109", "1900000209"
REFUNDS = "/v3/refund/domestic/refunds"


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(refund_delay=None)


@pytest.fixture
def wechat(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with serve(sandbox.app) as client:
        yield client


@pytest.fixture
def partner(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(mchid=SP_MCHID, appid=SP_APPID, sub_mchids=(SUB_A, SUB_B), refund_delay=None)


@pytest.fixture
def partner_wechat(partner: Sandbox) -> Iterator[httpx.Client]:
    with serve(partner.app) as client:
        yield client


def body(out_refund_no: str, refund: int, total: int, **fields: Any) -> bytes:
    if "transaction_id" not in fields:
        fields.setdefault("out_trade_no", "ORDER-7001")
    return compact_json(
        {**fields, "out_refund_no": out_refund_no, "amount": {"refund": refund, "total": total, "currency": "CNY"}}
    )


def refund(client: httpx.Client, key: rsa.RSAPrivateKey, content: bytes, **signing: Any) -> httpx.Response:
    return call(client, "POST", REFUNDS, content, key=key, **signing)


def error(response: httpx.Response) -> tuple[int, str]:
    assert "Wechatpay-Signature" not in response.headers  # WeChat's errors are not signed
    return response.status_code, response.json()["code"]


def paid(sandbox: Sandbox, out_trade_no: str = "ORDER-7001", total: int = 100, **options: Any) -> str:
    sandbox.create_order(out_trade_no, total, **options)
    return sandbox.pay(out_trade_no, notify=False, **options)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


def refunds_of(sandbox: Sandbox, out_trade_no: str, sub_mchid: str | None = None) -> dict[str, tuple[int, str]]:
    order = sandbox.orders.order(out_trade_no, sub_mchid)
    return {no: (r.amount, r.status) for no, r in order.refunds.items()}


def decrypted(receiver: NotifyReceiver, factory: NotificationFactory) -> list[VerifiedNotification]:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    return [verifier.verify(headers, content) for headers, content, _ in receiver.received]


# -- accepted: a signed 200, PROCESSING, then SUCCESS and its notification ----------------------------------------


def test_a_refund_is_accepted_processing_then_succeeds_and_is_notified_where_the_request_said(
    make_sandbox: Callable[..., Sandbox],
    factory: NotificationFactory,
    merchant_key: rsa.RSAPrivateKey,
    receiving: Receiving,
) -> None:
    sandbox = make_sandbox()  # refunds succeed 60 s of WeChat time later, 60 ms at the tests' time scale
    transaction_id = paid(sandbox)
    receiver = NotifyReceiver()
    with serve(sandbox.app) as wechat, receiving(sandbox, receiver) as url:
        sandbox.notify_url = None  # only the request's own notify_url can be where it goes
        answer = refund(wechat, merchant_key, body("R-7001", 30, 100, reason="商品已售完", notify_url=url))

        assert answer.status_code == 200
        assert verified(answer, factory.key_store()) == factory.public_key_id
        data = answer.json()
        assert (data["out_refund_no"], data["out_trade_no"], data["transaction_id"]) == (
            "R-7001",
            "ORDER-7001",
            transaction_id,
        )
        assert data["status"] == "PROCESSING" and "success_time" not in data
        assert data["refund_id"].startswith("503") and len(data["refund_id"]) == 29
        assert (data["amount"]["refund"], data["amount"]["total"]) == (30, 100)

        eventually(lambda: refunds_of(sandbox, "ORDER-7001") == {"R-7001": (30, "SUCCESS")})
        sandbox.wait_idle()
        queried = call(wechat, "GET", f"{REFUNDS}/R-7001", key=merchant_key)
    assert queried.status_code == 200
    assert (queried.json()["refund_id"], queried.json()["status"]) == (data["refund_id"], "SUCCESS")
    assert "success_time" in queried.json()
    (told,) = decrypted(receiver, factory)
    assert told.event_type == "REFUND.SUCCESS"
    assert (told.resource["out_refund_no"], told.resource["refund_id"], told.resource["refund_status"]) == (
        "R-7001",
        data["refund_id"],
        "SUCCESS",
    )
    assert sandbox.orders.order("ORDER-7001").trade_state == "REFUND"


def test_without_a_refund_delay_a_refund_stays_processing_until_completed_by_hand(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    assert refund(wechat, merchant_key, body("R-7002", 100, 100)).status_code == 200
    time.sleep(0.1)
    assert refunds_of(sandbox, "ORDER-7001") == {"R-7002": (100, "PROCESSING")}
    wechat.post("/sandbox/refunds/R-7002/complete", json={"status": "ABNORMAL", "notify": False}).raise_for_status()
    assert call(wechat, "GET", f"{REFUNDS}/R-7002", key=merchant_key).json()["status"] == "ABNORMAL"


def test_a_refund_by_transaction_id(sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey) -> None:
    transaction_id = paid(sandbox)
    answer = refund(wechat, merchant_key, body("R-7003", 40, 100, transaction_id=transaction_id))
    assert (answer.status_code, answer.json()["out_trade_no"]) == (200, "ORDER-7001")
    other = body("R-7004", 10, 100, transaction_id=transaction_id, out_trade_no="ORDER-7999")
    assert error(refund(wechat, merchant_key, other)) == (400, "INVALID_REQUEST")
    assert refunds_of(sandbox, "ORDER-7001") == {"R-7003": (40, "PROCESSING")}


# -- idempotent by out_refund_no --------------------------------------------------------------------------------


def test_the_same_request_again_is_the_same_refund_and_another_body_for_its_number_is_refused(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    paid(sandbox, "ORDER-7002")
    first = refund(wechat, merchant_key, body("R-7010", 60, 100))
    again = refund(wechat, merchant_key, body("R-7010", 60, 100))
    assert first.status_code == again.status_code == 200
    assert again.json()["refund_id"] == first.json()["refund_id"]

    assert error(refund(wechat, merchant_key, body("R-7010", 61, 100))) == (400, "INVALID_REQUEST")
    other_order = body("R-7010", 60, 100, out_trade_no="ORDER-7002")
    assert error(refund(wechat, merchant_key, other_order)) == (400, "INVALID_REQUEST")

    assert refunds_of(sandbox, "ORDER-7001") == {"R-7010": (60, "PROCESSING")}
    assert refunds_of(sandbox, "ORDER-7002") == {}
    assert sandbox.orders.order("ORDER-7001").refundable == 40
    # A repeat of a refund that took all that was left is that refund, not NOT_ENOUGH.
    assert refund(wechat, merchant_key, body("R-7011", 40, 100)).status_code == 200
    assert refund(wechat, merchant_key, body("R-7011", 40, 100)).status_code == 200
    # WeChat saw every request, as it arrived, whatever it answered.
    seen = sandbox.refund_requests("R-7010")
    assert seen == [body("R-7010", 60, 100), body("R-7010", 60, 100), body("R-7010", 61, 100), other_order]
    looked = wechat.get("/sandbox/refunds/R-7010/requests").json()
    assert (looked["count"], looked["distinct_bodies"]) == (4, 3)
    assert looked["bodies"][0] == body("R-7010", 60, 100).decode()


def test_a_request_refused_for_its_signature_was_still_seen(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert error(refund(wechat, stranger, body("R-7012", 10, 100))) == (401, "SIGN_ERROR")
    assert refunds_of(sandbox, "ORDER-7001") == {}
    assert sandbox.refund_requests("R-7012") == [body("R-7012", 10, 100)]
    assert sandbox.refund_requests("R-7099") == []


# -- refusals: nothing is refunded ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json", (400, "PARAM_ERROR")),
        (b"[]", (400, "PARAM_ERROR")),
        (compact_json({"out_trade_no": "ORDER-7001", "out_refund_no": "R-1"}), (400, "PARAM_ERROR")),
        (body("R 1", 10, 100), (400, "PARAM_ERROR")),
        (
            compact_json({"out_refund_no": "R-1", "amount": {"refund": 1, "total": 100, "currency": "CNY"}}),
            (400, "PARAM_ERROR"),
        ),
        (body("R-1", 10, 100).replace(b"CNY", b"USD"), (400, "PARAM_ERROR")),
        (body("R-1", 10, 100).replace(b'"refund":10', b'"refund":true'), (400, "PARAM_ERROR")),
        (body("R-1", 0, 100), (400, "PARAM_ERROR")),
        (body("R-1", 10, 100, reason="x" * 81), (400, "PARAM_ERROR")),
        (body("R-1", 10, 100, sub_mchid=SUB_A), (403, "NO_AUTH")),
        (body("R-1", 10, 100, out_trade_no="ORDER-7404"), (404, "RESOURCE_NOT_EXISTS")),
        (body("R-1", 10, 100, out_trade_no="ORDER-7002"), (404, "RESOURCE_NOT_EXISTS")),  # not paid
        (body("R-1", 10, 99), (400, "INVALID_REQUEST")),  # not the order's total
        (body("R-1", 101, 100), (403, "NOT_ENOUGH")),
    ],
    ids=[
        "not json",
        "not an object",
        "no amount",
        "bad out_refund_no",
        "no order",
        "currency",
        "bool amount",
        "zero",
        "long reason",
        "direct with sub_mchid",
        "unknown order",
        "unpaid order",
        "total",
        "too much",
    ],
)
def test_refusals_refund_nothing(
    sandbox: Sandbox,
    wechat: httpx.Client,
    merchant_key: rsa.RSAPrivateKey,
    content: bytes,
    expected: tuple[int, str],
) -> None:
    paid(sandbox)
    sandbox.create_order("ORDER-7002", 100)
    assert error(refund(wechat, merchant_key, content)) == expected
    assert refunds_of(sandbox, "ORDER-7001") == refunds_of(sandbox, "ORDER-7002") == {}
    assert sandbox.orders.order("ORDER-7001").trade_state == "SUCCESS"


def test_more_than_is_left_is_not_enough(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    assert refund(wechat, merchant_key, body("R-7020", 70, 100)).status_code == 200
    assert error(refund(wechat, merchant_key, body("R-7021", 31, 100))) == (403, "NOT_ENOUGH")
    assert refund(wechat, merchant_key, body("R-7022", 30, 100)).status_code == 200
    assert error(refund(wechat, merchant_key, body("R-7023", 1, 100))) == (403, "NOT_ENOUGH")
    assert refunds_of(sandbox, "ORDER-7001") == {"R-7020": (70, "PROCESSING"), "R-7022": (30, "PROCESSING")}


def test_a_closed_refund_gives_its_amount_back(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    assert refund(wechat, merchant_key, body("R-7024", 100, 100)).status_code == 200
    sandbox.complete_refund("R-7024", "CLOSED", notify=False)
    assert refund(wechat, merchant_key, body("R-7025", 100, 100)).status_code == 200


# -- faults -----------------------------------------------------------------------------------------------------


def test_error_5xx_accepts_nothing_and_not_enough_is_forced(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    sandbox.fail_next_refund("error_5xx")
    sandbox.fail_next_refund("not_enough")
    assert sandbox.refund_faults == ["error_5xx", "not_enough"]
    assert error(refund(wechat, merchant_key, body("R-7030", 10, 100))) == (500, "SYSTEM_ERROR")
    assert error(refund(wechat, merchant_key, body("R-7030", 10, 100))) == (403, "NOT_ENOUGH")
    assert refunds_of(sandbox, "ORDER-7001") == {}
    assert call(wechat, "GET", f"{REFUNDS}/R-7030", key=merchant_key).json()["code"] == "RESOURCE_NOT_EXISTS"
    # The faults are spent: the same request now goes through.
    assert refund(wechat, merchant_key, body("R-7030", 10, 100)).status_code == 200
    assert len(sandbox.refund_requests("R-7030")) == 3


def test_error_5xx_after_accept_refunds_all_the_same(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    sandbox.fail_next_refund("error_5xx_after_accept")
    assert error(refund(wechat, merchant_key, body("R-7031", 10, 100))) == (500, "SYSTEM_ERROR")
    assert refunds_of(sandbox, "ORDER-7001") == {"R-7031": (10, "PROCESSING")}
    assert call(wechat, "GET", f"{REFUNDS}/R-7031", key=merchant_key).json()["status"] == "PROCESSING"


def test_timeout_after_accept_holds_the_answer_until_the_client_gives_up(
    sandbox: Sandbox, merchant_key: rsa.RSAPrivateKey
) -> None:
    paid(sandbox)
    sandbox.fail_next_refund("timeout_after_accept")
    assert sandbox.refund_hold == 30.0
    with running(sandbox.app) as url, httpx.Client(base_url=url, timeout=0.5, trust_env=False) as impatient:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            refund(impatient, merchant_key, body("R-7032", 10, 100))
        assert refunds_of(sandbox, "ORDER-7001") == {"R-7032": (10, "PROCESSING")}
        # The held answer ends when the client hangs up, not 30 s later.
        eventually(lambda: any(r.path == REFUNDS for r in sandbox.requests), timeout=3)
        assert time.monotonic() - started < 5
        assert sandbox.refund_requests("R-7032") == [body("R-7032", 10, 100)]


def test_a_held_answer_is_sent_when_the_hold_ends(sandbox: Sandbox, merchant_key: rsa.RSAPrivateKey) -> None:
    paid(sandbox)
    sandbox.fail_next_refund("timeout_after_accept")
    sandbox.refund_hold = 0.3
    with serve(sandbox.app) as wechat:
        started = time.monotonic()
        answer = refund(wechat, merchant_key, body("R-7033", 10, 100))
    assert time.monotonic() - started >= 0.3
    assert (answer.status_code, answer.json()["status"]) == (200, "PROCESSING")


def test_refund_faults_and_times_through_the_control_api(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    answer = wechat.post(
        "/sandbox/faults",
        json={"refund_faults": ["timeout_after_accept", "error_5xx"], "refund_delay": 5, "refund_hold": 2},
    )
    assert answer.status_code == 200
    assert answer.json()["refund_faults"] == ["timeout_after_accept", "error_5xx"]
    assert (sandbox.refund_delay, sandbox.refund_hold) == (5, 2)
    assert wechat.post("/sandbox/faults", json={"refund_delay": None}).json()["refund_delay"] is None

    for bad in ({"refund_faults": ["error_5xx", "slow"]}, {"refund_faults": "error_5xx"}, {"refund_hold": -1}):
        refused = wechat.post("/sandbox/faults", json=bad)
        assert (refused.status_code, refused.json()["code"]) == (400, "PARAM_ERROR")
    assert sandbox.refund_faults == ["timeout_after_accept", "error_5xx"]
    with pytest.raises(SandboxError):
        sandbox.fail_next_refund("slow")
    # A refused settings request changes nothing, not even its other faults.
    assert wechat.post("/sandbox/faults", json={"fail_next": 1, "refund_hold": "long"}).status_code == 400
    sandbox.create_order("ORDER-7080", 100)
    target = f"/v3/pay/transactions/out-trade-no/ORDER-7080?mchid={MCHID}"
    assert call(wechat, "GET", target, key=merchant_key).status_code == 200


# -- a service provider's sub-merchants -------------------------------------------------------------------------


def test_a_providers_refund_names_its_sub_merchant(
    partner: Sandbox,
    partner_wechat: httpx.Client,
    factory: NotificationFactory,
    merchant_key: rsa.RSAPrivateKey,
    receiving: Receiving,
) -> None:
    partner.refund_delay = 0.0
    paid(partner, sub_mchid=SUB_A)
    paid(partner, sub_mchid=SUB_B)
    receiver = NotifyReceiver()
    with receiving(partner, receiver):
        a = refund(partner_wechat, merchant_key, body("R-7040", 10, 100, sub_mchid=SUB_A), mchid=SP_MCHID)
        b = refund(partner_wechat, merchant_key, body("R-7040", 20, 100, sub_mchid=SUB_B), mchid=SP_MCHID)
        assert a.status_code == b.status_code == 200
        assert a.json()["refund_id"] != b.json()["refund_id"]  # one number, two sub-merchants: two refunds
        eventually(lambda: len(receiver.received) == 2)
        partner.wait_idle()
    assert refunds_of(partner, "ORDER-7001", SUB_A) == {"R-7040": (10, "SUCCESS")}
    assert refunds_of(partner, "ORDER-7001", SUB_B) == {"R-7040": (20, "SUCCESS")}
    queried = call(partner_wechat, "GET", f"{REFUNDS}/R-7040?sub_mchid={SUB_B}", key=merchant_key, mchid=SP_MCHID)
    assert queried.json()["amount"]["refund"] == 20
    told = {n.resource["sub_mchid"]: n.resource for n in decrypted(receiver, factory)}
    assert told.keys() == {SUB_A, SUB_B} and told[SUB_A]["sp_mchid"] == SP_MCHID and "mchid" not in told[SUB_A]
    assert partner.refund_requests("R-7040", sub_mchid=SUB_B) == [body("R-7040", 20, 100, sub_mchid=SUB_B)]


@pytest.mark.parametrize(
    ("sub_mchid", "expected"),
    [(None, (400, "PARAM_ERROR")), ("1900000999", (400, "INVALID_REQUEST")), (SUB_B, (404, "RESOURCE_NOT_EXISTS"))],
)
def test_a_providers_refund_without_its_sub_merchant_is_refused(
    partner: Sandbox,
    partner_wechat: httpx.Client,
    merchant_key: rsa.RSAPrivateKey,
    sub_mchid: str | None,
    expected: tuple[int, str],
) -> None:
    paid(partner, sub_mchid=SUB_A)
    content = body("R-7041", 10, 100, **({} if sub_mchid is None else {"sub_mchid": sub_mchid}))
    assert error(refund(partner_wechat, merchant_key, content, mchid=SP_MCHID)) == expected
    assert refunds_of(partner, "ORDER-7001", SUB_A) == {}


# -- combined payments: each sub-order by its own numbers -------------------------------------------------------


def test_combined_sub_orders_are_refunded_one_by_one(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_combined_order("COMBINE-7050", [SubOrder("ORDER-7051", 300), SubOrder("ORDER-7052", 500)])
    first, _ = sandbox.pay_combined_order("COMBINE-7050", notify=False)
    by_id = refund(wechat, merchant_key, body("R-7051", 300, 300, transaction_id=first))
    by_number = refund(wechat, merchant_key, body("R-7052", 100, 500, out_trade_no="ORDER-7052"))
    assert by_id.status_code == by_number.status_code == 200
    assert by_id.json()["out_trade_no"] == "ORDER-7051"
    assert error(refund(wechat, merchant_key, body("R-7053", 100, 800, out_trade_no="COMBINE-7050"))) == (
        404,
        "RESOURCE_NOT_EXISTS",
    )
    assert error(refund(wechat, merchant_key, body("R-7054", 401, 500, out_trade_no="ORDER-7052"))) == (
        403,
        "NOT_ENOUGH",
    )
    assert refunds_of(sandbox, "ORDER-7051") == {"R-7051": (300, "PROCESSING")}
    assert refunds_of(sandbox, "ORDER-7052") == {"R-7052": (100, "PROCESSING")}


# -- closing, and paying a closed order all the same ------------------------------------------------------------


def test_a_closed_order_is_paid_only_as_the_late_payment_race(
    sandbox: Sandbox,
    wechat: httpx.Client,
    factory: NotificationFactory,
    merchant_key: rsa.RSAPrivateKey,
    receiving: Receiving,
) -> None:
    sandbox.create_order("ORDER-7060", 100)
    sandbox.create_order("ORDER-7061", 100)
    target = "/v3/pay/transactions/out-trade-no/ORDER-7060/close"
    for _ in range(2):  # re-entrant
        closed = call(wechat, "POST", target, compact_json({"mchid": MCHID}), key=merchant_key)
        assert (closed.status_code, closed.content) == (204, b"")
    assert sandbox.orders.order("ORDER-7060").trade_state == "CLOSED"
    refused = wechat.post("/sandbox/orders/ORDER-7060/pay", json={})
    assert (refused.status_code, refused.json()["code"]) == (400, "ORDER_CLOSED")
    not_closed = wechat.post("/sandbox/orders/ORDER-7061/pay", json={"after_close": True})
    assert (not_closed.status_code, not_closed.json()["code"]) == (400, "INVALID_REQUEST")

    receiver = NotifyReceiver()
    with receiving(sandbox, receiver):
        late = wechat.post("/sandbox/orders/ORDER-7060/pay", json={"after_close": True})
        assert late.status_code == 200
        sandbox.wait_idle()
    (told,) = decrypted(receiver, factory)
    assert (told.event_type, told.resource["transaction_id"]) == ("TRANSACTION.SUCCESS", late.json()["transaction_id"])
    assert sandbox.orders.order("ORDER-7060").trade_state == "SUCCESS"
    queried = call(wechat, "GET", f"/v3/pay/transactions/out-trade-no/ORDER-7060?mchid={MCHID}", key=merchant_key)
    assert queried.json()["transaction_id"] == late.json()["transaction_id"]
    # Paid now: it cannot be closed again, and it can be refunded.
    again = call(wechat, "POST", target, compact_json({"mchid": MCHID}), key=merchant_key)
    assert error(again) == (400, "ORDER_PAID")
    assert refund(wechat, merchant_key, body("R-7060", 100, 100, out_trade_no="ORDER-7060")).status_code == 200


def test_a_providers_and_a_combined_closed_order_paid_late(
    partner: Sandbox, partner_wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    partner.create_order("ORDER-7070", 100, sub_mchid=SUB_A)
    target = "/v3/pay/partner/transactions/out-trade-no/ORDER-7070/close"
    closing = compact_json({"sp_mchid": SP_MCHID, "sub_mchid": SUB_A})
    assert call(partner_wechat, "POST", target, closing, key=merchant_key, mchid=SP_MCHID).status_code == 204
    late = partner_wechat.post(
        "/sandbox/orders/ORDER-7070/pay", json={"after_close": True, "sub_mchid": SUB_A, "notify": False}
    )
    assert late.status_code == 200
    assert partner.orders.order("ORDER-7070", SUB_A).trade_state == "SUCCESS"

    partner.create_combined_order(
        "COMBINE-7071", [SubOrder("ORDER-7072", 100, sub_mchid=SUB_A), SubOrder("ORDER-7073", 200, sub_mchid=SUB_B)]
    )
    partner.close_combined_order("COMBINE-7071")
    with pytest.raises(SandboxError, match="ORDER_CLOSED"):
        partner.pay_combined_order("COMBINE-7071", notify=False)
    paid_late = partner_wechat.post(
        "/sandbox/combined-orders/COMBINE-7071/pay", json={"after_close": True, "notify": False}
    )
    assert paid_late.status_code == 200 and len(paid_late.json()["transaction_ids"]) == 2
    assert {o.trade_state for o in partner.orders.combined("COMBINE-7071")} == {"SUCCESS"}


def test_request_log_ignores_bodies_without_a_refund_number(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    assert error(refund(wechat, merchant_key, json.dumps({"out_refund_no": 7}).encode())) == (400, "PARAM_ERROR")
    assert error(refund(wechat, merchant_key, b"\xff")) == (400, "PARAM_ERROR")
    assert wechat.get("/sandbox/refunds/7/requests").json()["count"] == 0
