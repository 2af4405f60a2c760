"""Service providers and combined payments above the ledger: the HTTP API, the read model, /ui, the
command line, bill facts and webhooks, through the real app on both stores.

A provider (WECHATPAY_MODE=partner) serves two sub-merchants that both use order number NO: they are
two orders everywhere an order is named. Notifications are signed and encrypted as WeChat Pay sends
them (`NotificationFactory.envelope` + `deliver`), with the reference's partner and combined shapes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ledger.application import Ledger
from ledger.bill_matching import Discrepancy, DiscrepancyKind
from ledger.domain import PaymentOrder
from ledger.errors import ReadModelOutdated
from ledger.identity import order_id
from ledger.store.sql import Database
from ledger.wechatpay.bills import BEIJING, read_trade_bill
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.bills.lines import BillLines
from projections.read_model.live import live_view
from projections.read_model.rebuild import rebuild_orders_view
from projections.read_model.runner import catch_up_orders_view, open_orders_view
from projections.read_model.view import ORDERS_VIEW
from projections.webhooks.outbox import Outbox
from projections.webhooks.projection import message_data
from projections.webhooks.schema import outbox_url
from tests.support.bills import payment_line, refund_line, trade_bill
from tests.support.cli import clean_env, payledger
from tests.support.constants import APPID, MCHID
from tests.support.fakes import FakeWeChat
from tests.support.projectors import orders_projector_running, project_until_caught_up, run_outbox
from tests.support.servers import ledger_app, serve

SP, SUB_A, SUB_B, OTHER = "1230000109", "1900000109", "1900000110", "1900000179"
NO = "PARTNER-0001"
TID_A, TID_B = "4200000000202612020000000001", "4200000000202612020000000002"
PAID_AT = "2026-12-02T10:34:56+08:00"
COMBINED_A, COMBINED_B, COMBINE_NO = "20150806125346", "20150806124855", "C20150806125346"


def partner_payment(sub_mchid: str, out_trade_no: str, total: int, transaction_id: str) -> dict[str, Any]:
    """The reference's partner payment sample, for our provider (its sp_appid is ours)."""
    return {
        "sp_appid": APPID,
        "sp_mchid": SP,
        "sub_appid": "wxd678efh567hg6999",
        "sub_mchid": sub_mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "success_time": PAID_AT,
        "payer": {"sp_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }


def partner_refund(sub_mchid: str, out_trade_no: str, refund: int, total: int, transaction_id: str) -> dict[str, Any]:
    return {
        "sp_mchid": SP,
        "sub_mchid": sub_mchid,
        "transaction_id": transaction_id,
        "out_trade_no": out_trade_no,
        "refund_id": f"5020020718201807030001130{sub_mchid[-4:]}",
        "out_refund_no": f"R-{out_trade_no}",
        "refund_status": "SUCCESS",
        "success_time": PAID_AT,
        "user_received_account": "招商银行信用卡0403",
        "amount": {"total": total, "refund": refund, "payer_total": total, "payer_refund": refund},
    }


def combined_payment() -> dict[str, Any]:
    """The reference's combined-payment sample in its partner form: one sub-order for each sub-merchant."""

    def sub(sub_mchid: str, out_trade_no: str, transaction_id: str, total: int) -> dict[str, Any]:
        return {
            "mchid": SP,
            "sub_mchid": sub_mchid,
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "bank_type": "CMC",
            "attach": "深圳分店",
            "amount": {"total_amount": total, "currency": "CNY", "payer_amount": total, "payer_currency": "CNY"},
            "success_time": "2015-05-20T13:29:35.120+08:00",
            "transaction_id": transaction_id,
            "out_trade_no": out_trade_no,
        }

    return {
        "combine_appid": APPID,
        "combine_out_trade_no": COMBINE_NO,
        "combine_mchid": SP,
        "scene_info": {"device_id": "POS1:1"},
        "sub_orders": [
            sub(SUB_A, COMBINED_A, "1009660380201506130728806387", 10),
            sub(SUB_B, COMBINED_B, "1009660380201506130728452147", 20),
        ],
        "combine_payer_info": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    }


@dataclass
class Provider:
    """The ledger's app for a service provider, on loopback, and a ledger on the same store."""

    client: httpx.Client
    ledger: Ledger
    app: Any
    env: dict[str, str]
    factory: NotificationFactory
    database_url: str

    def notify(self, resource: dict[str, Any], event_type: str = "TRANSACTION.SUCCESS") -> None:
        delivery = self.factory.deliver(self.factory.envelope(resource, event_type))
        response = self.client.post("/wechatpay/notify", content=delivery.body, headers=delivery.headers)
        assert response.status_code == 204, response.text

    def register(self, out_trade_no: str, amount: int, **fields: Any) -> httpx.Response:
        return self.client.post("/orders", json={"out_trade_no": out_trade_no, "amount_total": amount, **fields})

    def order(self, out_trade_no: str, **params: str) -> httpx.Response:
        return self.client.get(f"/orders/{out_trade_no}", params=params)

    def project(self) -> None:
        project_until_caught_up(self.database_url, self.ledger)


def partner_env(merchant_env: dict[str, str]) -> dict[str, str]:
    return {
        **merchant_env,
        "WECHATPAY_MCHID": SP,
        "WECHATPAY_MODE": "partner",
        "WECHATPAY_SUB_MCHIDS": f"{SUB_A},{SUB_B}",
    }


@contextlib.contextmanager
def provider(merchant_env: dict[str, str], database_url: str, factory: NotificationFactory) -> Iterator[Provider]:
    env = {**partner_env(merchant_env), "LEDGER_DATABASE_URL": database_url}
    with ledger_app(env, database_url) as (app, ledger), serve(app) as client:
        yield Provider(client, ledger, app, env, factory, database_url)


@pytest.fixture
def sp(merchant_env: dict[str, str], database_url: str, factory: NotificationFactory) -> Iterator[Provider]:
    with provider(merchant_env, database_url, factory) as world:
        yield world


def two_sub_merchants(w: Provider) -> None:
    """NO registered, paid and (A) partly refunded under both sub-merchants, with other amounts."""
    for sub_mchid, amount in ((SUB_A, 100), (SUB_B, 300)):
        created = w.register(NO, amount, sub_mchid=sub_mchid)
        assert created.status_code == 201, created.text
        assert (created.json()["mchid"], created.json()["sp_mchid"], created.json()["sub_mchid"]) == (SP, SP, sub_mchid)
    w.notify(partner_payment(SUB_A, NO, 100, TID_A))
    w.notify(partner_payment(SUB_B, NO, 300, TID_B))
    w.notify(partner_refund(SUB_A, NO, 40, 100, TID_A), "REFUND.SUCCESS")


# -- the HTTP API ------------------------------------------------------------------------------------


def test_two_sub_merchants_with_the_same_out_trade_no_stay_apart_through_the_api(sp: Provider) -> None:
    two_sub_merchants(sp)
    for read in ("stream", "view"):
        a, b = sp.order(NO, sub_mchid=SUB_A).json(), sp.order(NO, sub_mchid=SUB_B).json()
        assert (a["sub_mchid"], a["sp_mchid"], a["mchid"], a["paid_total"], a["transaction_id"]) == (
            SUB_A,
            SP,
            SP,
            100,
            TID_A,
        ), read
        assert (a["trade_state"], a["refunded_total"], a["anomalies"]) == ("REFUND", 40, []), read
        assert (b["sub_mchid"], b["paid_total"], b["transaction_id"], b["refunded_total"]) == (SUB_B, 300, TID_B, 0)
        assert (b["trade_state"], b["anomalies"], b["combine_out_trade_no"]) == ("SUCCESS", [], None), read
        sp.project()  # the second round reads the caught-up view

    events_a = sp.client.get(f"/orders/{NO}/events", params={"sub_mchid": SUB_A}).json()
    events_b = sp.client.get(f"/orders/{NO}/events", params={"sub_mchid": SUB_B}).json()
    assert (events_a["mchid"], events_a["sp_mchid"], events_a["sub_mchid"]) == (SP, SP, SUB_A)
    assert [e["type"] for e in events_a["events"]].count("RefundSucceeded") == 1
    assert "RefundSucceeded" not in [e["type"] for e in events_b["events"]]
    assert events_a["events"][0]["data"]["sub_mchid"] == SUB_A and events_b["events"][0]["data"]["sub_mchid"] == SUB_B
    paid = sp.client.get(f"/orders/{NO}/events", params={"sub_mchid": SUB_B, "type": "PaymentSucceeded"}).json()
    assert [e["data"]["transaction_id"] for e in paid["events"]] == [TID_B]
    as_of = sp.order(NO, sub_mchid=SUB_A, as_of_version="2").json()  # Opened, Registered
    assert (as_of["sub_mchid"], as_of["amount_total"], as_of["paid_total"]) == (SUB_A, 100, None)

    listed = sp.client.get("/orders").json()["orders"]
    assert sorted((o["sub_mchid"], o["out_trade_no"], o["paid_total"]) for o in listed) == [
        (SUB_A, NO, 100),
        (SUB_B, NO, 300),
    ]
    for sub_mchid, paid_total in ((SUB_A, 100), (SUB_B, 300)):
        (only,) = sp.client.get("/orders", params={"sub_mchid": sub_mchid}).json()["orders"]
        assert (only["sub_mchid"], only["paid_total"]) == (sub_mchid, paid_total)
    assert sp.client.get("/orders", params={"sub_mchid": OTHER}).json()["orders"] == []
    # One page at a time: each order once, whichever sub-merchant it is.
    seen, cursor = [], ""
    for _ in range(3):
        page = sp.client.get("/orders", params={"limit": "1", "cursor": cursor}).json()
        seen += [o["sub_mchid"] for o in page["orders"]]
        if not (cursor := page["next_cursor"] or ""):
            break
    assert sorted(seen) == [SUB_A, SUB_B]

    view = open_orders_view(sp.database_url, live_view(sp.database_url, ORDERS_VIEW))
    try:
        assert [r["out_refund_no"] for r in view.refunds(SP, NO, SUB_A)] == [f"R-{NO}"]
        assert view.refunds(SP, NO, SUB_B) == [] and view.get(SP, NO) is None
        assert {r["sub_mchid"] for r in view.by_out_trade_no(NO)} == {SUB_A, SUB_B}
        assert [r["sub_mchid"] for r in view.by_transaction_id(TID_B)] == [SUB_B]
    finally:
        view.close()


def test_a_provider_names_the_sub_merchant_of_every_order_and_a_listed_one_to_register(sp: Provider) -> None:
    two_sub_merchants(sp)
    required = f"sub_mchid is required: merchant {SP} is a service provider (WECHATPAY_MODE=partner)"
    for answer in (
        sp.register("PARTNER-0002", 100),
        sp.order(NO),
        sp.order(NO, sub_mchid=""),
        sp.client.get(f"/orders/{NO}/events"),
        sp.client.post(f"/orders/{NO}/query"),
    ):
        assert (answer.status_code, answer.json()) == (400, {"code": "INVALID_REQUEST", "message": required})
    unlisted = sp.register("PARTNER-0002", 100, sub_mchid=OTHER)
    assert unlisted.status_code == 400 and "WECHATPAY_SUB_MCHIDS" in unlisted.json()["message"]
    for bad in ("", "19000001x9", 1900000109):
        answer = sp.register("PARTNER-0002", 100, sub_mchid=bad)
        assert answer.status_code == 400 and "sub_mchid" in answer.json()["message"]
    assert sp.order(NO, sub_mchid="19000001x9").status_code == 400
    assert sp.order(NO, sub_mchid=OTHER).status_code == 404
    # Another registration of the same number for the same sub-merchant is that order again.
    assert sp.register(NO, 100, sub_mchid=SUB_A).status_code == 200
    assert sp.register(NO, 101, sub_mchid=SUB_A).status_code == 409


def test_a_sub_merchant_outside_the_list_that_wechat_notifies_is_readable_and_flagged(sp: Provider) -> None:
    sp.notify(partner_payment(OTHER, NO, 500, TID_A))
    order = sp.order(NO, sub_mchid=OTHER).json()
    assert (order["sub_mchid"], order["paid_total"]) == (OTHER, 500)
    assert [a["kind"] for a in order["anomalies"]] == ["sub_mchid_unknown"]


def test_the_query_route_asks_about_the_sub_merchants_order_as_registered(sp: Provider) -> None:
    for sub_mchid in (SUB_A, SUB_B):
        assert sp.register("PARTNER-0004", 100, sub_mchid=sub_mchid).status_code == 201
    sp.register(COMBINED_A, 10, sub_mchid=SUB_A, combine_out_trade_no=COMBINE_NO)
    wechat = FakeWeChat(sp.ledger, {"PARTNER-0004": "SUCCESS"})
    sp.app.state.app_state.services.__dict__["query"] = wechat  # what `Services.query` is, answering SUCCESS

    answer = sp.client.post("/orders/PARTNER-0004/query", params={"sub_mchid": SUB_B})
    assert answer.status_code == 200
    assert (answer.json()["sub_mchid"], answer.json()["trade_state"], answer.json()["anomalies"]) == (
        SUB_B,
        "SUCCESS",
        [],
    )
    assert sp.order("PARTNER-0004", sub_mchid=SUB_A).json()["trade_state"] == "NOTPAY"  # the other one
    # A combined payment's sub-order is asked about as registered: through its combination.
    assert sp.client.post(f"/orders/{COMBINED_A}/query", params={"sub_mchid": SUB_A}).status_code == 200
    assert wechat.asked == [(SP, "PARTNER-0004", SUB_B, None), (SP, COMBINED_A, SUB_A, COMBINE_NO)]


def test_a_combined_notification_is_two_orders_each_with_its_own_amount(sp: Provider) -> None:
    for no, amount, sub_mchid in ((COMBINED_A, 10, SUB_A), (COMBINED_B, 20, SUB_B)):
        created = sp.register(no, amount, sub_mchid=sub_mchid, combine_out_trade_no=COMBINE_NO)
        assert (created.status_code, created.json()["combine_out_trade_no"]) == (201, COMBINE_NO)
    sp.notify(combined_payment())
    a, b = sp.order(COMBINED_A, sub_mchid=SUB_A).json(), sp.order(COMBINED_B, sub_mchid=SUB_B).json()
    assert (a["paid_total"], a["transaction_id"], a["combine_out_trade_no"], a["anomalies"]) == (
        10,
        "1009660380201506130728806387",
        COMBINE_NO,
        [],
    )
    assert (b["paid_total"], b["transaction_id"], b["sub_mchid"], b["anomalies"]) == (
        20,
        "1009660380201506130728452147",
        SUB_B,
        [],
    )
    assert sp.order(COMBINED_A, sub_mchid=SUB_B).status_code == 404  # that number is A's only
    bad = sp.register("PARTNER-0003", 5, sub_mchid=SUB_A, combine_out_trade_no="no")
    assert bad.status_code == 400 and "combine_out_trade_no" in bad.json()["message"]

    # /ui: the order page names both merchants and links to its sibling through the read model.
    sp.project()
    page = sp.client.get(f"/ui/orders/{COMBINED_A}", params={"mchid": SP, "sub_mchid": SUB_A})
    assert page.status_code == 200
    assert f'<dd id="sub-mchid">{SUB_A}</dd>' in page.text and f'<dd id="sp-mchid">{SP}</dd>' in page.text
    assert f'<dd id="combine-out-trade-no">{COMBINE_NO}</dd>' in page.text
    sibling = f"/ui/orders/{COMBINED_B}?mchid={SP}&amp;sub_mchid={SUB_B}"
    assert 'id="siblings"' in page.text and sibling in page.text
    assert f"/ui/orders/{COMBINED_A}/query?mchid={SP}&amp;sub_mchid={SUB_A}" in page.text


def test_the_operator_pages_take_the_sub_merchant(sp: Provider) -> None:
    two_sub_merchants(sp)
    sp.project()
    missing = sp.client.get(f"/ui/orders/{NO}", params={"mchid": SP})
    assert missing.status_code == 400 and "sub_mchid is required" in missing.text
    page = sp.client.get(f"/ui/orders/{NO}", params={"mchid": SP, "sub_mchid": SUB_B})
    assert page.status_code == 200 and TID_B in page.text and TID_A not in page.text
    assert 'id="siblings"' not in page.text

    found = sp.client.get("/ui/search", params={"q": NO})  # both sub-merchants' orders of that number
    assert found.status_code == 200
    for sub_mchid in (SUB_A, SUB_B):
        assert f"/ui/orders/{NO}?mchid={SP}&amp;sub_mchid={sub_mchid}" in found.text
    one = sp.client.get("/ui/search", params={"q": NO, "sub_mchid": SUB_A}, follow_redirects=False)
    assert one.status_code == 303
    assert parse_qs(urlsplit(one.headers["location"]).query) == {"mchid": [SP], "sub_mchid": [SUB_A]}
    by_transaction = sp.client.get("/ui/search", params={"q": TID_B}, follow_redirects=False)
    assert parse_qs(urlsplit(by_transaction.headers["location"]).query)["sub_mchid"] == [SUB_B]
    assert sp.client.get("/ui/search", params={"q": NO, "sub_mchid": OTHER}).status_code == 404

    (csrf,) = set(re.findall(r'name="csrf" value="([^"]*)"', page.text))  # one token, on every form of the page
    requery = sp.client.post(f"/ui/orders/{NO}/query", params={"mchid": SP}, data={"csrf": csrf})
    assert requery.status_code == 400 and "sub_mchid is required" in requery.text


def test_a_direct_merchant_takes_no_sub_merchant(
    merchant_env: dict[str, str], database_url: str, factory: NotificationFactory
) -> None:
    env = {**merchant_env, "LEDGER_DATABASE_URL": database_url}
    with ledger_app(env, database_url) as (app, _), serve(app) as client:
        refused = client.post("/orders", json={"out_trade_no": NO, "amount_total": 100, "sub_mchid": SUB_B})
        assert refused.status_code == 400 and "direct merchant" in refused.json()["message"]
        assert client.post("/orders", json={"out_trade_no": NO, "amount_total": 100}).status_code == 201
        order = client.get(f"/orders/{NO}").json()
        assert (order["mchid"], order["sp_mchid"], order["sub_mchid"]) == (MCHID, None, None)
        assert client.get(f"/orders/{NO}", params={"sub_mchid": SUB_B}).status_code == 400
        assert client.get(f"/orders/{NO}", params={"sub_mchid": ""}).status_code == 200  # an empty filter
        events = client.get(f"/orders/{NO}/events").json()
        assert (events["sp_mchid"], events["sub_mchid"]) == (None, None)


# -- the command line ---------------------------------------------------------------------------------


def test_history_query_and_verify_take_sub_mchid(sp: Provider) -> None:
    two_sub_merchants(sp)
    env = {**clean_env(), **sp.env}
    text = payledger("history", NO, "--sub-mchid", SUB_A, env=env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"order {NO} (mchid {SP}, sub_mchid {SUB_A}): REFUND, version ")
    assert f"sub_mchid={SUB_A}" in text.stdout and "RefundSucceeded" in text.stdout
    as_json = payledger("history", NO, "--sub-mchid", SUB_B, "--json", env=env)
    doc = json.loads(as_json.stdout)
    assert (doc["order"]["sub_mchid"], doc["order"]["paid_total"], doc["order"]["refunded_total"]) == (SUB_B, 300, 0)
    assert "RefundSucceeded" not in [e["type"] for e in doc["events"]]

    missing = payledger("history", NO, env=env)
    assert missing.returncode == 1 and "sub_mchid is required" in missing.stderr
    verified = payledger("verify", NO, "--sub-mchid", SUB_A, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert payledger("verify", "--all", "--sub-mchid", SUB_A, env=env).returncode == 2
    # No WeChat Pay client is configured (no merchant key): the query is refused, not misfiled.
    queried = payledger("query", NO, "--sub-mchid", SUB_A, env=env)
    assert queried.returncode == 1 and "queries not configured" in queried.stderr
    assert payledger("query", NO, env=env).returncode == 1


# -- webhooks -------------------------------------------------------------------------------------------


def test_webhook_messages_name_the_sub_merchant_and_a_direct_merchants_keep_their_fields(
    sp: Provider, database_url: str
) -> None:
    outbox = Outbox(Database(outbox_url(database_url)))
    try:
        outbox.endpoints.add("http://127.0.0.1:9/hook", events=["PaymentSucceeded"])
        two_sub_merchants(sp)
        run_outbox(database_url, sp.ledger)
        for sub_mchid, transaction_id in ((SUB_A, TID_A), (SUB_B, TID_B)):
            stream = str(order_id(SP, NO, sub_mchid))
            (message,) = outbox.messages.for_order(SP, NO, stream_id=stream)
            data = json.loads(message.body)["data"]
            assert (data["sp_mchid"], data["sub_mchid"], data["transaction_id"]) == (SP, sub_mchid, transaction_id)
            assert "combine_out_trade_no" not in data
        assert len(outbox.messages.for_order(SP, NO)) == 2
    finally:
        outbox.database.close()

    direct = PaymentOrder.open(MCHID, NO)
    direct.register(100, "CNY", "")
    assert message_data(direct) == {
        k: v for k, v in direct.summary().items() if k not in {"sp_mchid", "sub_mchid", "combine_out_trade_no"}
    }
    assert not {"sp_mchid", "sub_mchid", "combine_out_trade_no"} & message_data(direct).keys()


# -- bill facts ------------------------------------------------------------------------------------------


def _bill_of_the_day(sp: Provider) -> list[Discrepancy]:
    """The provider's bill of the day (every sub-merchant's lines, 特约商户号 left empty: the ledger tells
    the two orders of one number apart by their transactions) loaded and matched as a run does."""
    at = dt.datetime(2026, 12, 2, 10, 34, 56, tzinfo=BEIJING)
    refund_id = partner_refund(SUB_A, NO, 40, 100, TID_A)["refund_id"]
    bill = trade_bill(
        payment_line(TID_A, NO, 100, at=at, fee="0.60000"),
        payment_line(TID_B, NO, 300, at=at, fee="1.80000"),
        payment_line(TID_B, "PARTNER-0404", 300, at=at),
        refund_line(TID_A, NO, refund_id, f"R-{NO}", 40, fee="0.00000"),
    )
    sp.project()
    database = Database(sp.database_url)
    view = open_orders_view(sp.database_url)
    try:
        lines = BillLines(database)
        day = dt.date(2026, 12, 2)
        lines.load(SP, day, "0" * 40, read_trade_bill([bill]))
        return lines.match(SP, day, view)
    finally:
        view.close()
        database.close()


def test_bill_lines_tell_two_sub_merchants_orders_of_one_number_apart(sp: Provider) -> None:
    two_sub_merchants(sp)
    found = _bill_of_the_day(sp)
    assert [(d.kind, d.out_trade_no, d.transaction_id) for d in found] == [
        (DiscrepancyKind.MISSING_IN_LEDGER, "PARTNER-0404", TID_B)
    ]


def test_an_orders_bill_fee_is_its_own_lines_when_two_sub_merchants_share_its_number(sp: Provider) -> None:
    two_sub_merchants(sp)
    _bill_of_the_day(sp)
    a, b = sp.order(NO, sub_mchid=SUB_A).json(), sp.order(NO, sub_mchid=SUB_B).json()
    assert (a["fee_fen"], a["net_fen"]) == ("60.000", "0.000")  # 100 paid, 40 refunded, 60 fee
    assert (b["fee_fen"], b["net_fen"]) == ("180.000", "120.000")


# -- upgrading a view made before sub-merchants -----------------------------------------------------


# The orders table as the version before sub-merchants made it.
_EARLIER_ORDERS = (
    "CREATE TABLE {table} (mchid TEXT NOT NULL, out_trade_no TEXT NOT NULL,"
    " stream_id TEXT NOT NULL, registered BOOLEAN NOT NULL, trade_state TEXT NOT NULL,"
    " amount_total BIGINT, currency TEXT, transaction_id TEXT, success_time TEXT, paid_total BIGINT,"
    " refunded_total BIGINT NOT NULL, anomalies INTEGER NOT NULL, version INTEGER NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,"
    " document TEXT NOT NULL, PRIMARY KEY (mchid, out_trade_no))"
)


def _as_an_earlier_version_left_it(database_url: str) -> None:
    view = open_orders_view(database_url)
    try:
        table = view.qualify(view.orders_table)
        with view.transaction() as curs:
            for index in ("orders_state", "orders_updated", "orders_transaction", "orders_paid"):
                curs.execute(f"DROP INDEX IF EXISTS {view.qualify(f'{view.table_prefix}_{index}')}")
            curs.execute(f"DROP TABLE {table}")
            curs.execute(_EARLIER_ORDERS.format(table=table))
    finally:
        view.close()
    reopened = open_orders_view(database_url)
    try:
        assert reopened.outdated
    finally:
        reopened.close()


def test_a_view_of_the_earlier_layout_is_refused_until_payledger_rebuild(
    merchant_env: dict[str, str], database_url: str, factory: NotificationFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with provider(merchant_env, database_url, factory) as before:
        two_sub_merchants(before)
    _as_an_earlier_version_left_it(database_url)

    with provider(merchant_env, database_url, factory) as sp:  # this version, started on that store
        listed = sp.client.get("/orders")
        assert listed.status_code == 503
        assert listed.json() == {
            "code": "FAIL",
            "message": "the orders view has the layout of an earlier version: run payledger rebuild",
        }
        assert sp.order(NO, sub_mchid=SUB_B).json()["paid_total"] == 300  # one order: from its stream
        with pytest.raises(ReadModelOutdated):
            catch_up_orders_view(database_url, timeout=5)

        caplog.set_level(logging.ERROR, logger="projections.runner")
        with orders_projector_running(database_url, poll=0.05) as projector:
            time.sleep(0.5)
            assert projector.is_alive()  # waiting, not crashing
            refusals = [r.getMessage() for r in caplog.records if "not projecting" in r.getMessage()]
            assert len(refusals) == 1 and "payledger rebuild" in refusals[0] and ORDERS_VIEW in refusals[0]

            summary = rebuild_orders_view(database_url)
            assert (summary.old, summary.new) == (ORDERS_VIEW, f"{ORDERS_VIEW}_v2")
            sp.notify(partner_payment(SUB_A, "PARTNER-0009", 900, "4200000000202612020000000009"))
            # The projector now follows the rebuilt version, and the API reads it (within a second).
            catch_up_orders_view(database_url, timeout=20)
            time.sleep(1.1)
            rows = sp.client.get("/orders", params={"sub_mchid": SUB_A}).json()["orders"]
            assert sorted((o["out_trade_no"], o["paid_total"]) for o in rows) == [(NO, 100), ("PARTNER-0009", 900)]
        assert not projector.is_alive()


def test_a_cursor_of_a_merchants_own_order_from_before_keeps_its_place(sp: Provider) -> None:
    """Cursors handed out before sub-merchants (three parts) still page a merchant's orders."""
    two_sub_merchants(sp)
    sp.project()
    first = sp.client.get("/orders", params={"limit": "1"}).json()
    cursor = json.loads(first["next_cursor"])
    assert len(cursor) == 4 and cursor[3] == first["orders"][0]["sub_mchid"]
    earlier = json.dumps([0.0, SP, NO])  # before every order: the whole list follows
    assert len(sp.client.get("/orders", params={"cursor": earlier}).json()["orders"]) == 2
    assert sp.client.get("/orders", params={"cursor": json.dumps([1, 2])}).status_code == 400
