"""`POST /wechatpay/v2/notify[/{mchid}]` through the real app, with the sandbox as WeChat Pay sending legacy
APIv2 XML ([protocol: Legacy APIv2 XML; APIv2 as APIv3]): a payment decides for the same order stream as
APIv3, a refund only once a refund query confirms it, every answer is XML, what does not verify or is
hostile is refused with nothing stored, and `payledger verify` re-checks what was stored."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.bootstrap import bootstrap
from ledger.application import build_ledger
from ledger.domain import order_id
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox import legacy
from ledger.wechatpay.sandbox.orders import CST
from ledger.wechatpay.sandbox.resources import Party
from ledger.wechatpay.sandbox.server import Sandbox
from ledger.wechatpay.v2 import HMAC_SHA256, answer_xml, encrypt_ecb, encrypt_req_info, req_info_key, to_xml
from projections.reconcile.reconciler import Reconciler
from projections.reconcile.worklist import Worklist
from tests.support.audit import problems
from tests.support.constants import APPID, MCHID
from tests.support.sandbox_ledger import SandboxLedger, sandbox_ledger
from tests.support.servers import running, through_proxy
from tests.support.tamper import edit_json, rechain
from tests.support.v2_vectors import (
    D6_HMAC,
    D6_MD5,
    D7_PLAINTEXT,
    DOC_KEY,
    HOSTILE_XML,
    T1_KEY,
    T1_REQ_INFO,
    T2_KEY,
    T2_REQ_INFO,
    T8_SIGN,
    ecb_without_padding,
    payment,
    refund,
)

SUCCESS = answer_xml(True)
XML = "text/xml; charset=utf-8"
DOC_MCHID, DOC_APPID = "10000100", "wx2421b1c4370ec43b"  # the merchant of the official samples
SP, SP_APPID, SUB_A, SUB_B = "1230000109", "wx8888888888888888", "1900000109", "1900000209"


class World(SandboxLedger):
    @property
    def mchid(self) -> str:
        return self.sandbox.mchid

    def post(self, body: bytes, path: str = "/wechatpay/v2/notify") -> httpx.Response:
        return self.client.post(path, content=body, headers={"content-type": "text/xml"})

    def register(self, no: str, total: int = 100) -> None:
        self.sandbox.create_order(no, total)
        assert self.client.post("/orders", json={"out_trade_no": no, "amount_total": total}).status_code == 201

    def events(self, no: str, sub_mchid: str | None = None) -> list[dict[str, Any]]:
        return self.ledger.order_history(self.mchid, no, sub_mchid)

    def types(self, no: str, sub_mchid: str | None = None) -> list[str]:
        return [event["type"] for event in self.events(no, sub_mchid)]

    def logged(self) -> int:
        """How many events the whole log holds."""
        return self.ledger.recorder.max_notification_id() or 0

    def until(self, no: str, event_type: str, sub_mchid: str | None = None) -> list[dict[str, Any]]:
        """The order's events once one of `event_type` is among them (a refund is confirmed after the answer)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            events = self.events(no, sub_mchid)
            if any(event["type"] == event_type for event in events):
                return events
            time.sleep(0.05)
        raise AssertionError(f"no {event_type} in {no}: {[e['type'] for e in self.events(no, sub_mchid)]}")

    def requests_settle(self, path: str, count: int) -> None:
        """Wait until the sandbox has seen `count` requests for `path`, and a little more."""
        deadline = time.monotonic() + 20
        while self.sandbox.request_count(path) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.sandbox.request_count(path) == count
        time.sleep(0.3)  # what follows the answer (recording it, or logging its failure)

    def v2_payment(self, no: str, *, sub_mchid: str | None = None, sign_type: str = "MD5") -> bytes:
        """The APIv2 payment notification WeChat would send for the sandbox's paid order `no`."""
        order = self.sandbox.orders.order(no, sub_mchid)
        assert order.transaction_id is not None and order.success_time is not None
        fields = legacy.payment_fields(
            self.sandbox.orders.merchant.party(order),
            no,
            order.total,
            transaction_id=order.transaction_id,
            success_time=order.success_time,
            nonce=legacy.nonce_str(),
            sign_type=sign_type,
        )
        return legacy.signed_xml(fields, self.sandbox.v2_key)

    def services(self) -> Any:
        return bootstrap(Settings.load({**self.env, "LEDGER_DATABASE_URL": self.database_url}), ledger=self.ledger)


@pytest.fixture
def world(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path, database_url: str
) -> Callable[..., contextlib.AbstractContextManager[World]]:
    """`with world(**sandbox_options) as w:` the sandbox as WeChat Pay and the ledger's app on `database_url`,
    each knowing the other; `ledger_v2_key` sets (or, "", unsets) the ledger's WECHATPAY_V2_KEY."""

    @contextlib.contextmanager
    def build(ledger_v2_key: str | None = None, **options: Any) -> Iterator[World]:
        v2_key = {} if ledger_v2_key is None else {"WECHATPAY_V2_KEY": ledger_v2_key}
        with sandbox_ledger(World, make_sandbox(**options), tmp_path / "keys", database_url, **v2_key) as w:
            yield w

    return build


def accepted_at_once(sandbox: Sandbox) -> list[tuple[int, bool]]:
    return [(d.status, d.accepted) for d in sandbox.deliveries]


# -- payments ------------------------------------------------------------------------------------


def test_a_v2_payment_decides_in_the_orders_stream_and_is_answered_with_the_exact_xml(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    with world() as w:
        w.register("ORDER-7101")
        transaction_id = w.sandbox.pay("ORDER-7101", api="v2", discount=30)  # a coupon: the payer pays 70
        w.sandbox.wait_idle(10)
        assert accepted_at_once(w.sandbox) == [(200, True)]  # the exact success XML, with 200, the first time
        body = w.sandbox.notifications[-1].body
        paid_at = dt.datetime.fromisoformat(w.sandbox.orders.order("ORDER-7101").success_time or "").astimezone(CST)

        events = w.events("ORDER-7101")
        assert [e["type"] for e in events] == ["Opened", "Registered", "NotificationReceived", "PaymentSucceeded"]
        delivery, decision = events[2]["data"], events[3]["data"]
        assert {k: delivery[k] for k in ("notification_id", "event_type", "key_serial", "signature_headers")} == {
            "notification_id": f"v2:{transaction_id}",
            "event_type": "TRANSACTION.SUCCESS",
            "key_serial": "APIv2",
            "signature_headers": {},
        }
        assert delivery["envelope"] == {"id": f"v2:{transaction_id}", "event_type": "TRANSACTION.SUCCESS", "api": "v2"}
        assert (delivery["raw_body"], delivery["delivery_key"]) == (body.decode(), hashlib.sha256(body).hexdigest())
        assert delivery["resource"] == {
            "mchid": MCHID,
            "appid": APPID,
            "out_trade_no": "ORDER-7101",
            "transaction_id": transaction_id,
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "success_time": paid_at.isoformat(),  # time_end, yyyyMMddHHmmss in Beijing, as RFC 3339
            "amount": {"total": 100, "payer_total": 70, "currency": "CNY"},
            "bank_type": "OTHERS",
        }
        assert paid_at.isoformat().endswith("+08:00")
        assert {k: decision[k] for k in ("transaction_id", "amount_total", "payer_total", "evidence")} == {
            "transaction_id": transaction_id,
            "amount_total": 100,
            "payer_total": 70,
            "evidence": f"v2:{transaction_id}",
        }
        order = w.client.get("/orders/ORDER-7101").json()
        assert (order["trade_state"], order["paid_total"], order["anomalies"]) == ("SUCCESS", 100, [])

        # WeChat's v2 retries are the same bytes: acknowledged again, nothing new stored.
        before = w.logged()
        again = w.post(body)
        assert (again.status_code, again.headers["content-type"], again.content) == (200, XML, SUCCESS)
        assert w.logged() == before


@pytest.mark.parametrize("first", ["v2", "v3"])
def test_a_payment_told_by_both_apis_is_decided_once(
    world: Callable[..., contextlib.AbstractContextManager[World]], first: str
) -> None:
    """One order, one history, whichever API told us first."""
    with world() as w:
        w.register("ORDER-7102")
        transaction_id = w.sandbox.pay("ORDER-7102", drop=True)  # WeChat's APIv3 notification, not yet delivered
        v3 = w.sandbox.notifications[-1].body

        def tell(api: str) -> int:
            if api == "v3":
                return w.client.post(
                    "/wechatpay/notify", content=v3, headers=w.sandbox.factory.sign_headers(v3)
                ).status_code
            return w.post(w.v2_payment("ORDER-7102")).status_code

        second = "v3" if first == "v2" else "v2"
        assert (tell(first), tell(second)) == ((200, 204) if first == "v2" else (204, 200))
        events = w.events("ORDER-7102")
        assert Counter(e["type"] for e in events) == {
            "Opened": 1,
            "Registered": 1,
            "NotificationReceived": 2,
            "PaymentSucceeded": 1,
        }
        [decided] = [e["data"] for e in events if e["type"] == "PaymentSucceeded"]
        assert decided["transaction_id"] == transaction_id
        assert decided["evidence"].startswith("v2:") == (first == "v2")


# -- refunds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "v2_status", "decision"),
    [
        ("SUCCESS", "SUCCESS", "RefundSucceeded"),
        ("CLOSED", "REFUNDCLOSE", "RefundClosed"),
        ("ABNORMAL", "CHANGE", "RefundAbnormal"),
    ],
)
def test_a_v2_refund_decides_only_through_the_refund_query_that_confirms_it(
    world: Callable[..., contextlib.AbstractContextManager[World]], status: str, v2_status: str, decision: str
) -> None:
    with world() as w:
        w.register("ORDER-7111")
        transaction_id = w.sandbox.pay("ORDER-7111", api="v2")
        w.sandbox.wait_idle(10)  # deliveries run concurrently: the payment first
        refund_id = w.sandbox.refund("ORDER-7111", "R-7111", 40, status=status, api="v2", source="VENDOR_PLATFORM")
        w.sandbox.wait_idle(10)
        assert accepted_at_once(w.sandbox) == [(200, True), (200, True)]
        events = w.until("ORDER-7111", decision)

        types = [e["type"] for e in events]
        assert types[4:] == ["NotificationReceived", "StatusQueried", decision]
        delivery, queried, decided = (e["data"] for e in events[4:])
        assert (delivery["event_type"], delivery["notification_id"]) == (
            "REFUND.V2",
            f"v2:refund:{refund_id}:{v2_status}",
        )
        resource = delivery["resource"]
        assert {k: resource[k] for k in ("mchid", "out_trade_no", "transaction_id", "out_refund_no", "refund_id")} == {
            "mchid": MCHID,
            "out_trade_no": "ORDER-7111",
            "transaction_id": transaction_id,
            "out_refund_no": "R-7111",
            "refund_id": refund_id,
        }
        assert (resource["refund_status"], resource["amount"]["refund"], resource["amount"]["total"]) == (
            status,
            40,
            100,
        )
        assert resource["refund_request_source"] == "VENDOR_PLATFORM"
        # The query is the evidence: recorded as answered (its state in `status`), and named by the decision.
        assert (queried["query"], queried["transaction"]["status"], queried["transaction"]["out_refund_no"]) == (
            "refund",
            status,
            "R-7111",
        )
        assert (decided["out_refund_no"], decided["refund"]) == ("R-7111", 40)
        assert decided["evidence"] == f"query:{queried['request_id']}"
        assert w.sandbox.request_count("/v3/refund/domestic/refunds/R-7111") == 1
        refunds = w.client.get("/orders/ORDER-7111").json()["refunds"]
        assert [(r["out_refund_no"], r["status"]) for r in refunds] == [("R-7111", status)]


def test_a_v2_refund_whose_query_fails_is_stored_answered_and_confirmed_by_the_reconciler(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    with world() as w:
        w.register("ORDER-7121")
        w.sandbox.pay("ORDER-7121", api="v2")
        w.sandbox.wait_idle(10)
        w.sandbox.fail_next(4, status=503)  # WeChat is down for the query's every attempt
        w.sandbox.refund("ORDER-7121", "R-7121", 100, api="v2")
        w.sandbox.wait_idle(10)
        assert accepted_at_once(w.sandbox) == [(200, True), (200, True)]  # stored: acknowledged all the same
        w.requests_settle("/v3/refund/domestic/refunds/R-7121", 4)
        assert w.types("ORDER-7121")[-1] == "NotificationReceived"  # stored, not confirmed, nothing decided

        services = w.services()
        database = Database(w.database_url)
        now = [time.time() + 60]
        reconciler = Reconciler(
            w.ledger,
            Worklist(database),
            services.query,
            confirm_refund=services.query.refund,
            clock=lambda: now[0],
            rate=1000,
        )
        try:
            changes = [c for c in reconciler.run_pass() if c.out_refund_no is not None]
            assert [str(c) for c in changes] == ["ORDER-7121 refund R-7121: UNCONFIRMED -> SUCCESS"]
            assert w.types("ORDER-7121")[-2:] == ["StatusQueried", "RefundSucceeded"]
            now[0] += 3600
            assert [c for c in reconciler.run_pass() if c.out_refund_no is not None] == []  # settled
            assert Worklist(database).refund_counts() == {"done": 1}
        finally:
            database.close()
            services.close()
        assert w.sandbox.request_count("/v3/refund/domestic/refunds/R-7121") == 5


def test_a_providers_v2_notifications_decide_for_the_sub_merchants_order(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    """[protocol: Service providers]: `sub_mch_id` names the payee; the refund is asked about with it."""
    with world(mchid=SP, appid=SP_APPID, sub_mchids=(SUB_A, SUB_B)) as w:
        for sub in (SUB_A, SUB_B):  # the same number under two sub-merchants: two orders
            w.sandbox.create_order("ORDER-7131", 100, sub_mchid=sub)
            w.ledger.register_order(SP, "ORDER-7131", 100, sub_mchid=sub)
        w.sandbox.pay("ORDER-7131", sub_mchid=SUB_B, api="v2")
        w.sandbox.wait_idle(10)
        w.sandbox.refund("ORDER-7131", "R-7131", 100, sub_mchid=SUB_B, api="v2")
        w.sandbox.wait_idle(10)
        events = w.until("ORDER-7131", "RefundSucceeded", SUB_B)
        assert [e["type"] for e in events][2:] == [
            "NotificationReceived",
            "PaymentSucceeded",
            "NotificationReceived",
            "StatusQueried",
            "RefundSucceeded",
        ]
        resource = events[2]["data"]["resource"]
        assert (resource["sp_mchid"], resource["sub_mchid"], resource["sp_appid"]) == (SP, SUB_B, SP_APPID)
        assert w.types("ORDER-7131", SUB_A) == ["Opened", "Registered"]
        asked = [r.target for r in w.sandbox.requests if "/refunds/" in r.path]
        assert asked == [f"/v3/refund/domestic/refunds/R-7131?sub_mchid={SUB_B}"]


# -- the reference's vectors ---------------------------------------------------------------------


def test_the_official_sample_payment_is_accepted_signed_either_way_and_t8s_sign_is_not(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    """D6 (T8's fields signed with the documentation's key, MD5 and HMAC-SHA256) and T8's published sign."""
    with world(mchid=DOC_MCHID, appid=DOC_APPID, v2_key=DOC_KEY) as w:
        assert w.client.post("/orders", json={"out_trade_no": "1409811653", "amount_total": 1}).status_code == 201
        refused = w.post(payment(T8_SIGN))
        assert (refused.status_code, refused.content) == (401, answer_xml(False, "sign verification failed"))
        assert w.types("1409811653") == ["Opened", "Registered"]

        for body in (payment(D6_MD5), payment(D6_HMAC, extra="<sign_type>HMAC-SHA256</sign_type>")):
            answer = w.post(body)
            assert (answer.status_code, answer.headers["content-type"], answer.content) == (200, XML, SUCCESS)
        events = w.events("1409811653")
        assert [e["type"] for e in events] == [
            "Opened",
            "Registered",
            "NotificationReceived",
            "PaymentSucceeded",
            "NotificationReceived",  # the HMAC-signed one: the same notification, decided already
        ]
        decided = events[3]["data"]
        assert {k: decided[k] for k in ("transaction_id", "amount_total", "payer_total", "success_time")} == {
            "transaction_id": "1004400740201409030005092168",
            "amount_total": 1,
            "payer_total": None,  # no cash_fee in the sample
            "success_time": "2014-09-03T13:15:40+08:00",
        }
        assert events[2]["data"]["resource"]["attach"] == "支付测试"
        assert w.client.get("/orders/1409811653").json()["anomalies"] == []


@pytest.mark.parametrize(
    ("key", "req_info", "out_trade_no", "out_refund_no"),
    [
        pytest.param(
            T1_KEY, T1_REQ_INFO, "4893e76d8c8b434cb64e9cd536338e33", "50fd012ed1b311e7af7800163e32c503", id="T1"
        ),
        pytest.param(T2_KEY, T2_REQ_INFO, "abc", "123", id="T2"),
        pytest.param(
            DOC_KEY,
            encrypt_req_info(D7_PLAINTEXT, DOC_KEY),
            "71106718111915575302817",
            "131811191610442717309",
            id="D7",
        ),
    ],
)
def test_published_refund_notifications_are_stored_and_wait_for_a_query_to_confirm_them(
    world: Callable[..., contextlib.AbstractContextManager[World]],
    key: str,
    req_info: str,
    out_trade_no: str,
    out_refund_no: str,
) -> None:
    """T1, T2 (published `req_info`) and D7: accepted and stored; WeChat (the sandbox) does not know these
    refunds, so the query finds nothing and nothing is decided."""
    with world(mchid=DOC_MCHID, appid=DOC_APPID, v2_key=key) as w:
        answer = w.post(refund(req_info))
        assert (answer.status_code, answer.content) == (200, SUCCESS)
        w.requests_settle(f"/v3/refund/domestic/refunds/{out_refund_no}", 1)
        [_, delivery] = w.events(out_trade_no)
        assert delivery["type"] == "NotificationReceived" and delivery["data"]["event_type"] == "REFUND.V2"
        resource = delivery["data"]["resource"]
        assert (resource["mchid"], resource["out_refund_no"], resource["refund_status"]) == (
            DOC_MCHID,
            out_refund_no,
            "SUCCESS",
        )
        assert resource["success_time"].endswith("+08:00") and "T" in resource["success_time"]


# -- refused, with nothing stored ----------------------------------------------------------------


def _refund_body(req_info: str) -> bytes:
    return to_xml(
        {"return_code": "SUCCESS", "appid": DOC_APPID, "mch_id": DOC_MCHID, "nonce_str": "n", "req_info": req_info}
    )


def test_what_does_not_verify_is_refused_and_leaves_nothing(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    """A wrong APIv2 key (the sandbox signs with its own, the ledger holds the documentation's), T8's sign,
    a `req_info` encrypted with the upper-case hex MD5 of the key, a bad padding: 401 or 500, nothing stored."""
    with world(mchid=DOC_MCHID, appid=DOC_APPID, ledger_v2_key=DOC_KEY) as w:
        w.sandbox.create_order("ORDER-7141", 100)
        w.sandbox.pay("ORDER-7141", api="v2", drop=True)
        w.sandbox.refund("ORDER-7141", "R-7141", 10, api="v2", drop=True)
        signed_by_another_key, encrypted_by_another_key = (n.body for n in w.sandbox.notifications)
        plaintext = b"<root><out_refund_no>R-1</out_refund_no><out_trade_no>ORDER-7141</out_trade_no></root>"
        upper_hex = hashlib.md5(DOC_KEY.encode()).hexdigest().upper().encode()
        by_upper_hex = base64.b64encode(encrypt_ecb(upper_hex, plaintext)).decode()
        bad_padding = ecb_without_padding(req_info_key(DOC_KEY), b"<root><a>1</a>\n </root>\n" + b"\x00" * 8)
        cases = [
            (signed_by_another_key, 401, "sign verification failed"),
            (payment(T8_SIGN), 401, "sign verification failed"),
            (encrypted_by_another_key, 500, "req_info decryption failed"),
            (_refund_body(by_upper_hex), 500, "req_info decryption failed"),
            (_refund_body(bad_padding), 500, "req_info decryption failed"),
        ]
        for body, status, reason in cases:
            answer = w.post(body)
            assert (answer.status_code, answer.headers["content-type"]) == (status, XML), reason
            assert answer.content == answer_xml(False, reason)
        assert w.logged() == 0
        assert w.post(payment(D6_MD5)).status_code == 200  # the right key still works
        assert w.logged() > 0


def test_a_merchant_without_an_apiv2_key_cannot_verify_and_an_unknown_one_is_not_found(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    with world(ledger_v2_key="") as w:
        w.sandbox.create_order("ORDER-7151", 100)
        w.sandbox.pay("ORDER-7151", api="v2", drop=True)
        body = w.sandbox.notifications[-1].body
        for path in ("/wechatpay/v2/notify", f"/wechatpay/v2/notify/{MCHID}"):
            answer = w.post(body, path)
            assert (answer.status_code, answer.content) == (401, answer_xml(False, "sign verification failed"))
        unknown = w.post(body, "/wechatpay/v2/notify/1999999999")
        assert (unknown.status_code, unknown.headers["content-type"]) == (404, XML)
        assert unknown.content == answer_xml(False, "unknown merchant")
        assert w.logged() == 0


def test_a_body_above_the_limit_is_413_and_the_connection_closed(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    with world() as w:
        limit = Settings.load({**w.env, "LEDGER_DATABASE_URL": w.database_url}).max_body_bytes
        answer = w.post(b"<xml>" + b" " * limit + b"</xml>")
        assert (answer.status_code, answer.headers["connection"]) == (413, "close")
        assert answer.content == answer_xml(False, "body too large")
        assert w.logged() == 0


@pytest.mark.parametrize("body", HOSTILE_XML.values(), ids=HOSTILE_XML)
def test_hostile_xml_is_refused_quickly_with_no_event_and_the_worker_keeps_answering(
    world: Callable[..., contextlib.AbstractContextManager[World]], body: bytes
) -> None:
    with world() as w:
        w.register("ORDER-7161")
        before = w.logged()
        for _ in range(3):
            started = time.perf_counter()
            answer = w.post(body)
            assert time.perf_counter() - started < 1.0
            assert (answer.status_code, answer.headers["content-type"]) == (400, XML)
            assert answer.content == answer_xml(False, "DTDs and entities are not accepted")
        assert w.logged() == before
        w.sandbox.pay("ORDER-7161", api="v2")  # and the next good notification is answered as ever
        w.sandbox.wait_idle(10)
        assert accepted_at_once(w.sandbox) == [(200, True)]
        assert w.types("ORDER-7161")[-1] == "PaymentSucceeded"
        metrics = w.client.get("/metrics").text
        assert 'payledger_notifications_total{outcome="malformed"} 3.0' in metrics
        assert 'payledger_notifications_total{outcome="accepted"} 1.0' in metrics


@pytest.mark.postgres
def test_a_store_that_is_down_is_503_in_xml_and_nothing_is_acknowledged(
    postgres_url: str, merchant_env: dict[str, str]
) -> None:
    def paid(no: str, transaction_id: str) -> bytes:
        fields = legacy.payment_fields(
            Party(MCHID, APPID),
            no,
            100,
            transaction_id=transaction_id,
            success_time="2026-11-27T10:00:00+08:00",
            nonce="n",
        )
        return legacy.signed_xml(fields, DOC_KEY)

    proxy, proxied = through_proxy(postgres_url)
    settings = Settings.load({**merchant_env, "WECHATPAY_V2_KEY": DOC_KEY, "LEDGER_DATABASE_URL": proxied})
    ledger = build_ledger(proxied)
    try:
        with running(create_app(settings, ledger=ledger)) as url:
            first = httpx.post(f"{url}/wechatpay/v2/notify", content=paid("ORDER-7181", "4200000000000000000000007181"))
            assert (first.status_code, first.content) == (200, SUCCESS)
            proxy.cut()
            started = time.monotonic()
            body = paid("ORDER-7182", "4200000000000000000000007182")
            response = httpx.post(f"{url}/wechatpay/v2/notify", content=body, timeout=30)
            elapsed = time.monotonic() - started
    finally:
        ledger.close()
    assert (response.status_code, response.headers["content-type"]) == (503, XML)
    assert response.content == answer_xml(False, "store unavailable")
    assert elapsed < 5, "WeChat gives up after 5 s: fail fast enough for it to retry"


# -- payledger verify ----------------------------------------------------------------------------


def test_verify_rechecks_v2_deliveries_and_rederives_their_decisions(
    world: Callable[..., contextlib.AbstractContextManager[World]],
) -> None:
    with world() as w:
        w.register("ORDER-7171")
        w.sandbox.pay("ORDER-7171", api="v2", sign_type=HMAC_SHA256)
        w.sandbox.wait_idle(10)
        w.sandbox.refund("ORDER-7171", "R-7171", 30, api="v2")
        w.sandbox.wait_idle(10)
        w.until("ORDER-7171", "RefundSucceeded")
        services = w.services()
        try:
            report = services.audit_all()
            assert report.ok, report.breaks
            assert (report.notifications, report.resources, report.decisions) == (2, 2, 2)
            assert services.audit_order(MCHID, "ORDER-7171").ok

            stream = order_id(MCHID, "ORDER-7171")
            kinds = [e["type"] for e in w.events("ORDER-7171")]
            payment_at, refund_at = (i + 1 for i, kind in enumerate(kinds) if kind == "NotificationReceived")
            without_key = {**w.env, "LEDGER_DATABASE_URL": w.database_url}
            without_key.pop("WECHATPAY_V2_KEY")
            unkeyed = bootstrap(Settings.load(without_key), ledger=w.ledger)
            assert problems(unkeyed.audit_all()) == [
                ("ORDER-7171", payment_at, "APIv2 key not configured"),
                ("ORDER-7171", refund_at, "APIv2 key not configured"),
            ]

            def pay_less(state: dict[str, Any]) -> None:  # the raw XML edited, the resource left alone
                state["raw_body"] = state["raw_body"].replace("<total_fee><![CDATA[100]]>", "<total_fee><![CDATA[1]]>")

            def refund_more(state: dict[str, Any]) -> None:  # the stored resource edited, the raw XML left alone
                state["resource"]["amount"]["refund"] = 100

            def refunded_less(state: dict[str, Any]) -> None:  # a decision the query's answer does not support
                state["refund"] = 3

            edit_json(w.database_url, stream, payment_at, pay_less)
            edit_json(w.database_url, stream, refund_at, refund_more)
            edit_json(w.database_url, stream, refund_at + 2, refunded_less)  # after its StatusQueried
            rechain(w.database_url, w.ledger, stream, payment_at)  # so that the chain alone shows nothing
            assert problems(services.audit_all()) == [
                ("ORDER-7171", payment_at, "APIv2 sign does not verify"),
                ("ORDER-7171", refund_at, "stored resource is not what its XML body maps to"),
                (
                    "ORDER-7171",
                    refund_at + 2,
                    "RefundSucceeded is not what its evidence decides (RefundSucceeded expected)",
                ),
            ]
        finally:
            services.close()
