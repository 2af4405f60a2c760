"""The client's refunds and closes ([protocol: Creating a refund; Closing an order]) against the sandbox over real
HTTP: the request sent once, byte for byte the same for the same request; a clear refusal told apart from an
unknown outcome; the unknown settled by a refund query; what WeChat saw, request by request.

Two answers the sandbox never gives (a proxy's redirect, a signed answer about another refund) are played
by an `httpx.MockTransport`."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.errors import OutcomeUnknown, WeChatPayRejected, WeChatPayUnavailable
from ledger.wechatpay.client import WeChatPayClient
from ledger.wechatpay.refunds import RefundAnswer, RefundRequest
from ledger.wechatpay.sandbox.server import Sandbox, SubOrder
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json
from tests.support.clients import client_maker
from tests.support.constants import APPID
from tests.support.servers import free_port, running

SP_MCHID, SP_APPID = "1230000109", "wx8888888888888888"
SUB_A, SUB_B = "1900000109", "1900000209"
REFUNDS = "/v3/refund/domestic/refunds"


@pytest.fixture
def make_client(
    factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> Iterator[Callable[..., WeChatPayClient]]:
    # Retries allowed, as for queries: a refund must still be sent once.
    with client_maker(factory, merchant_key, max_attempts=4, backoff=0.01, timeout=2.0) as make:
        yield make


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(refund_delay=None)


@pytest.fixture
def wechat(sandbox: Sandbox, make_client: Callable[..., WeChatPayClient]) -> Iterator[WeChatPayClient]:
    with running(sandbox.app) as url:
        yield make_client(base_url=url)


def paid(sandbox: Sandbox, out_trade_no: str = "ORDER-8001", total: int = 100, **options: Any) -> str:
    sandbox.create_order(out_trade_no, total, **options)
    return sandbox.pay(out_trade_no, notify=False, **options)


def ask(out_refund_no: str, refund: int, total: int = 100, **fields: Any) -> RefundRequest:
    if "transaction_id" not in fields:
        fields.setdefault("out_trade_no", "ORDER-8001")
    return RefundRequest(out_refund_no=out_refund_no, refund=refund, total=total, **fields)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


# -- the request: the same bytes for the same request ------------------------------------------------------------


def test_the_body_is_compact_utf8_in_wechats_order_and_the_same_every_time() -> None:
    request = RefundRequest(
        out_refund_no="R-8001",
        refund=30,
        total=100,
        transaction_id="4200000000002104083200000488",
        reason="商品已售完",
        notify_url="https://ledger.example/wechatpay/notify",
        sub_mchid=SUB_A,
    )
    assert (
        request.body()
        == (
            '{"sub_mchid":"1900000109","transaction_id":"4200000000002104083200000488","out_refund_no":"R-8001",'
            '"reason":"商品已售完","notify_url":"https://ledger.example/wechatpay/notify",'
            '"amount":{"refund":30,"total":100,"currency":"CNY"}}'
        ).encode()
    )
    assert ask("R-8001", 30).body() == ask("R-8001", 30).body()
    assert (
        ask("R-8001", 30).body()
        == b'{"out_trade_no":"ORDER-8001","out_refund_no":"R-8001","amount":{"refund":30,"total":100,"currency":"CNY"}}'
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"out_refund_no": "R 1"},
        {"out_refund_no": "R" * 65},
        {"transaction_id": "4200000000002104083200000488"},  # and out_trade_no: both
        {"out_trade_no": None},  # neither
        {"refund": 0},
        {"refund": True},
        {"refund": 101},
        {"total": 1.5},
        {"reason": ""},
        {"reason": "x" * 81},
        {"notify_url": "https://x/\n"},
        {"sub_mchid": "19000001O9"},
        {"currency": "USD"},
    ],
)
def test_a_request_wechat_would_refuse_for_its_form_is_never_made(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RefundRequest(**{"out_refund_no": "R-8002", "refund": 10, "total": 100, "out_trade_no": "ORDER-8001", **fields})


# -- accepted ---------------------------------------------------------------------------------------------------


def test_a_refund_is_sent_once_and_answered_with_the_evidence(
    sandbox: Sandbox, wechat: WeChatPayClient, factory: NotificationFactory
) -> None:
    transaction_id = paid(sandbox)
    request = ask("R-8010", 30, transaction_id=transaction_id, out_trade_no=None, reason="退货")

    answer = wechat.create_refund(request)

    assert isinstance(answer, RefundAnswer)
    assert (answer.out_refund_no, answer.status, answer.status_code) == ("R-8010", "PROCESSING", 200)
    assert answer.refund_id == sandbox.orders.refund_of("R-8010")[1].refund_id
    assert answer.request_body == request.body().decode()
    assert json.loads(answer.raw_body) == answer.data and answer.data["transaction_id"] == transaction_id
    assert answer.key_serial == factory.public_key_id
    headers = {name.lower(): value for name, value in answer.headers.items()}  # as received
    assert headers["wechatpay-serial"] == factory.public_key_id and "wechatpay-signature" in headers
    assert answer.request_id and answer.received_at.tzinfo is dt.UTC
    assert sandbox.refund_requests("R-8010") == [request.body()]


def test_the_same_request_again_is_answered_with_the_same_refund(sandbox: Sandbox, wechat: WeChatPayClient) -> None:
    sandbox.refund_delay = 0.0
    paid(sandbox)
    first = wechat.create_refund(ask("R-8011", 100))
    eventually(lambda: sandbox.orders.refund_of("R-8011")[1].status == "SUCCESS")
    again = wechat.create_refund(ask("R-8011", 100))
    assert (again.refund_id, again.status) == (first.refund_id, "SUCCESS")
    assert sandbox.refund_requests("R-8011") == [ask("R-8011", 100).body()] * 2


def test_a_providers_and_a_combined_sub_orders_refunds(
    make_sandbox: Callable[..., Sandbox], make_client: Callable[..., WeChatPayClient]
) -> None:
    partner = make_sandbox(mchid=SP_MCHID, appid=SP_APPID, sub_mchids=(SUB_A, SUB_B), refund_delay=None)
    paid(partner, sub_mchid=SUB_B)
    partner.create_combined_order(
        "COMBINE-8020", [SubOrder("ORDER-8021", 300, sub_mchid=SUB_A), SubOrder("ORDER-8022", 500, sub_mchid=SUB_B)]
    )
    first, second = partner.pay_combined_order("COMBINE-8020", notify=False)
    with running(partner.app) as url:
        client = make_client(base_url=url, mchid=SP_MCHID)
        plain = client.create_refund(ask("R-8020", 10, sub_mchid=SUB_B))
        sub_order = client.create_refund(
            ask("R-8021", 500, 500, transaction_id=second, out_trade_no=None, sub_mchid=SUB_B)
        )
        with pytest.raises(WeChatPayRejected) as wrong_sub:
            client.create_refund(ask("R-8022", 300, 300, transaction_id=first, out_trade_no=None, sub_mchid=SUB_B))
        queried = client.query_refund("R-8021", sub_mchid=SUB_B)
    assert plain.data["out_trade_no"] == "ORDER-8001" and sub_order.data["out_trade_no"] == "ORDER-8022"
    assert (wrong_sub.value.status, wrong_sub.value.code) == (404, "RESOURCE_NOT_EXISTS")
    assert queried.data is not None and queried.data["refund_id"] == sub_order.refund_id
    assert partner.refund_requests("R-8021", sub_mchid=SUB_B) == [
        ask("R-8021", 500, 500, transaction_id=second, out_trade_no=None, sub_mchid=SUB_B).body()
    ]


# -- a clear refusal: WeChatPayRejected, nothing refunded, nothing retried ------------------------------------------


def _more_than_is_left(sandbox: Sandbox) -> None:
    sandbox.refund("ORDER-8001", "R-8039", 95, notify=False)


def _unpaid(sandbox: Sandbox) -> None:
    sandbox.create_order("ORDER-8002", 100)


@pytest.mark.parametrize(
    ("setup", "out_trade_no", "expected"),
    [
        (lambda s: s.fail_next_refund("not_enough"), "ORDER-8001", (403, "NOT_ENOUGH")),
        (_more_than_is_left, "ORDER-8001", (403, "NOT_ENOUGH")),
        (_unpaid, "ORDER-8002", (404, "RESOURCE_NOT_EXISTS")),
        (lambda s: s.fail_next(1, 400, "INVALID_REQUEST", "订单已全额退款"), "ORDER-8001", (400, "INVALID_REQUEST")),
        (lambda s: s.fail_next(1, 401, "SIGN_ERROR"), "ORDER-8001", (401, "SIGN_ERROR")),
    ],
    ids=["not_enough fault", "more than is left", "unpaid", "invalid request", "sign error"],
)
def test_a_clear_refusal_is_rejected_with_its_code_after_one_request(
    sandbox: Sandbox,
    wechat: WeChatPayClient,
    setup: Callable[[Sandbox], None],
    out_trade_no: str,
    expected: tuple[int, str],
) -> None:
    paid(sandbox)
    setup(sandbox)
    before = {o.out_trade_no: dict(o.refunds) for o in sandbox.orders.all()}
    with pytest.raises(WeChatPayRejected) as refused:
        wechat.create_refund(ask("R-8030", 10, out_trade_no=out_trade_no))
    assert (refused.value.status, refused.value.code) == expected
    assert not isinstance(refused.value, OutcomeUnknown)
    assert {o.out_trade_no: dict(o.refunds) for o in sandbox.orders.all()} == before
    assert sandbox.refund_requests("R-8030") == [ask("R-8030", 10, out_trade_no=out_trade_no).body()]


# -- an unknown outcome: OutcomeUnknown after one request, settled by query -------------------------------------------


def test_a_timeout_after_accept_is_unknown_and_the_refund_query_finds_it(
    sandbox: Sandbox, make_client: Callable[..., WeChatPayClient]
) -> None:
    paid(sandbox)
    sandbox.fail_next_refund("timeout_after_accept")
    with running(sandbox.app) as url:
        client = make_client(base_url=url, timeout=0.5)
        with pytest.raises(OutcomeUnknown) as unknown:
            client.create_refund(ask("R-8040", 40))
        assert (unknown.value.status, unknown.value.code) == (None, "")
        assert sandbox.refund_requests("R-8040") == [ask("R-8040", 40).body()]  # WeChat saw exactly one

        found = client.query_refund("R-8040")
        assert found.data is not None and found.data["status"] == "PROCESSING"
        sandbox.complete_refund("R-8040", notify=False)
        settled = client.query_refund("R-8040")
    assert settled.data is not None and settled.data["status"] == "SUCCESS"
    assert sandbox.refund_requests("R-8040") == [ask("R-8040", 40).body()]


def test_a_5xx_is_unknown_and_the_same_request_may_be_sent_again(sandbox: Sandbox, wechat: WeChatPayClient) -> None:
    paid(sandbox)
    sandbox.fail_next_refund("error_5xx")
    with pytest.raises(OutcomeUnknown) as unknown:
        wechat.create_refund(ask("R-8041", 40))
    assert (unknown.value.status, unknown.value.code) == (500, "SYSTEM_ERROR")
    assert len(sandbox.refund_requests("R-8041")) == 1  # not retried, though the client retries queries
    with pytest.raises(WeChatPayRejected) as never_had_it:
        wechat.query_refund("R-8041")
    assert (never_had_it.value.status, never_had_it.value.code) == (404, "RESOURCE_NOT_EXISTS")

    answer = wechat.create_refund(ask("R-8041", 40))
    assert answer.status == "PROCESSING"
    seen = sandbox.refund_requests("R-8041")
    assert len(seen) == 2 and len(set(seen)) == 1  # twice, never with other content
    assert sandbox.orders.order("ORDER-8001").refundable == 60


def test_a_5xx_after_accept_is_unknown_and_sending_it_again_refunds_once(
    sandbox: Sandbox, wechat: WeChatPayClient
) -> None:
    paid(sandbox)
    sandbox.fail_next_refund("error_5xx_after_accept")
    with pytest.raises(OutcomeUnknown):
        wechat.create_refund(ask("R-8042", 100))
    accepted = sandbox.orders.refund_of("R-8042")[1]
    assert wechat.create_refund(ask("R-8042", 100)).refund_id == accepted.refund_id
    assert sandbox.orders.order("ORDER-8001").refundable == 0


@pytest.mark.parametrize(
    ("fault", "accepted"),
    [("rate", False), ("probe", True), ("tamper", True)],
)
def test_a_429_and_an_untrusted_2xx_are_unknown(
    sandbox: Sandbox, wechat: WeChatPayClient, fault: str, accepted: bool
) -> None:
    paid(sandbox)
    if fault == "rate":
        sandbox.fail_next(1, 429)
    elif fault == "probe":
        sandbox.probe_next_response()
    else:
        sandbox.tamper_next_response()
    with pytest.raises(OutcomeUnknown) as unknown:
        wechat.create_refund(ask("R-8043", 10))
    if fault == "rate":
        assert (unknown.value.status, unknown.value.code) == (429, "FREQUENCY_LIMITED")
    assert ("R-8043" in sandbox.orders.order("ORDER-8001").refunds) is accepted
    assert len(sandbox.refund_requests("R-8043")) == 1


def test_nobody_listening_is_unknown(make_client: Callable[..., WeChatPayClient]) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(OutcomeUnknown) as unknown:
        client.create_refund(ask("R-8044", 10))
    assert unknown.value.status is None
    with pytest.raises(WeChatPayUnavailable):  # a query's failure stays what it was
        client.query_refund("R-8044")


def _scripted(
    factory: NotificationFactory, status: int, payload: dict[str, Any], seen: list[bytes]
) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        content = compact_json(payload)
        return httpx.Response(
            status, headers=factory.sign_headers(content, timestamp=int(time.time())), content=content
        )

    return httpx.MockTransport(answer)


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (302, {}),
        (
            200,
            {
                "out_refund_no": "R-OTHER",
                "out_trade_no": "ORDER-8001",
                "refund_id": "5030",
                "status": "PROCESSING",
                "amount": {"refund": 10},
            },
        ),
        (
            200,
            {
                "out_refund_no": "R-8045",
                "out_trade_no": "ORDER-8001",
                "refund_id": "5030",
                "status": "PROCESSING",
                "amount": {"refund": 11},
            },
        ),
        (
            200,
            {
                "out_refund_no": "R-8045",
                "out_trade_no": "ORDER-8002",
                "refund_id": "5030",
                "status": "PROCESSING",
                "amount": {"refund": 10},
            },
        ),
        (
            200,
            {"out_refund_no": "R-8045", "out_trade_no": "ORDER-8001", "status": "PROCESSING", "amount": {"refund": 10}},
        ),
    ],
    ids=["redirect", "another refund", "another amount", "another order", "no refund_id"],
)
def test_an_answer_not_about_the_refund_asked_is_unknown(
    factory: NotificationFactory,
    make_client: Callable[..., WeChatPayClient],
    status: int,
    payload: dict[str, Any],
) -> None:
    seen: list[bytes] = []
    client = make_client(transport=_scripted(factory, status, payload, seen))
    with pytest.raises(OutcomeUnknown):
        client.create_refund(ask("R-8045", 10))
    assert seen == [ask("R-8045", 10).body()]


def test_the_scripted_answer_itself_is_trusted_when_it_is_about_the_refund(
    factory: NotificationFactory, make_client: Callable[..., WeChatPayClient]
) -> None:
    seen: list[bytes] = []
    payload = {
        "out_refund_no": "R-8046",
        "out_trade_no": "ORDER-8001",
        "refund_id": "5030",
        "status": "PROCESSING",
        "amount": {"refund": 10},
    }
    client = make_client(transport=_scripted(factory, 200, payload, seen))
    assert client.create_refund(ask("R-8046", 10)).refund_id == "5030"


# -- closing: direct, provider, combined; a close is retried like a query --------------------------------------


def test_closing_direct_and_retried_on_5xx(sandbox: Sandbox, wechat: WeChatPayClient) -> None:
    sandbox.create_order("ORDER-8050", 100)
    sandbox.fail_next(1, 500)
    closed = wechat.close_order("ORDER-8050")
    assert (closed.status_code, closed.body, closed.data) == (204, b"", None)
    assert wechat.close_order("ORDER-8050").status_code == 204  # re-entrant
    assert sandbox.orders.order("ORDER-8050").trade_state == "CLOSED"
    assert [r.status for r in sandbox.requests if r.path.endswith("/close")] == [500, 204, 204]
    paid(sandbox)
    with pytest.raises(WeChatPayRejected) as refused:
        wechat.close_order("ORDER-8001")
    assert (refused.value.status, refused.value.code) == (400, "ORDER_PAID")


def test_closing_a_providers_order_and_a_combined_payment(
    make_sandbox: Callable[..., Sandbox], make_client: Callable[..., WeChatPayClient]
) -> None:
    partner = make_sandbox(mchid=SP_MCHID, appid=SP_APPID, sub_mchids=(SUB_A, SUB_B))
    partner.create_order("ORDER-8060", 100, sub_mchid=SUB_A)
    partner.create_order("ORDER-8060", 100, sub_mchid=SUB_B)
    sub_orders = [("ORDER-8061", SUB_A), ("ORDER-8062", SUB_B)]
    partner.create_combined_order("COMBINE-8060", [SubOrder(no, 100, sub_mchid=sub) for no, sub in sub_orders])
    with running(partner.app) as url:
        client = make_client(base_url=url, mchid=SP_MCHID)
        assert client.close_order("ORDER-8060", sub_mchid=SUB_A).status_code == 204
        with pytest.raises(WeChatPayRejected) as partial:
            client.close_combined("COMBINE-8060", combine_appid=SP_APPID, sub_orders=sub_orders[:1])
        closed = client.close_combined("COMBINE-8060", combine_appid=SP_APPID, sub_orders=sub_orders)
    assert partial.value.code == "PARAM_ERROR"
    assert closed.status_code == 204
    assert partner.orders.order("ORDER-8060", SUB_A).trade_state == "CLOSED"
    assert partner.orders.order("ORDER-8060", SUB_B).trade_state == "NOTPAY"
    assert {o.trade_state for o in partner.orders.combined("COMBINE-8060")} == {"CLOSED"}
    targets = [r.target for r in partner.requests if r.path.endswith("/close")]
    assert targets[0] == "/v3/pay/partner/transactions/out-trade-no/ORDER-8060/close"


def test_closing_a_merchants_combined_payment(sandbox: Sandbox, wechat: WeChatPayClient) -> None:
    sandbox.create_combined_order("COMBINE-8070", [SubOrder("ORDER-8071", 100), SubOrder("ORDER-8072", 200)])
    closed = wechat.close_combined(
        "COMBINE-8070", combine_appid=APPID, sub_orders=[("ORDER-8071", None), ("ORDER-8072", None)]
    )
    assert closed.status_code == 204
    assert {o.trade_state for o in sandbox.orders.combined("COMBINE-8070")} == {"CLOSED"}
