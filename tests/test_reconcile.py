"""Reconciliation: the worklist follows the log, leases keep reconcilers apart, schedules back off."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.domain import PaymentOrder, QueryEvidence
from ledger.errors import WeChatPayUnavailable
from ledger.store.sql import Database
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox import legacy
from ledger.wechatpay.sandbox.resources import Party
from ledger.wechatpay.sandbox.signer import NotificationFactory
from ledger.wechatpay.v2 import parse_v2_notification
from projections.reconcile.reconciler import Reconciler
from projections.reconcile.worklist import Worklist
from tests.support.builders import evidence
from tests.support.constants import APPID, MCHID
from tests.support.fakes import FakeWeChat
from tests.support.threads import all_at_once
from tests.support.v2_vectors import DOC_KEY


@pytest.fixture
def worklist(database_url: str) -> Any:
    database = Database(database_url)
    yield Worklist(database)
    database.close()


def make(
    ledger: Ledger, worklist: Worklist, fake: Callable[[str, str], PaymentOrder], now: list[float], **kw: Any
) -> Reconciler:
    return Reconciler(ledger, worklist, fake, clock=lambda: now[0], rate=1000, **kw)


def test_worklist_follows_the_log_and_skips_paid_orders(
    ledger_factory: Callable[[], Ledger], worklist: Worklist, factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    for i in range(5):
        ledger.register_order(MCHID, f"ORDER-500{i}", 100)
    paid = factory.paid("ORDER-5000", 100)
    ledger.record_notification(MCHID, verifier.verify(paid.headers, paid.body))
    now = [time.time() + 6]
    fake = FakeWeChat(ledger, {})
    reconciler = make(ledger, worklist, fake, now)
    assert reconciler.catch_up() == 6
    assert reconciler.catch_up() == 0  # the position is kept
    assert worklist.counts() == {"open": 4, "done": 1}
    changes = reconciler.run_pass()
    assert sorted(c.out_trade_no for c in changes) == [f"ORDER-500{i}" for i in range(1, 5)]
    assert set(fake.calls) == {f"ORDER-500{i}" for i in range(1, 5)}


def test_recovers_a_missing_callback_by_query_and_stops_when_final(
    ledger_factory: Callable[[], Ledger], worklist: Worklist
) -> None:
    ledger = ledger_factory()
    ledger.register_order(MCHID, "ORDER-5101", 100)
    now = [time.time() + 1]
    fake = FakeWeChat(ledger, {"ORDER-5101": "SUCCESS"})
    reconciler = make(ledger, worklist, fake, now)
    assert reconciler.run_pass() == []  # not due yet: the callback may still come
    now[0] += 10
    [change] = reconciler.run_pass()
    assert (change.before, change.after, change.queried) == ("NOTPAY", "SUCCESS", True)
    assert "NOTPAY -> SUCCESS" in str(change)
    now[0] += 10**6
    assert reconciler.run_pass() == []
    assert fake.calls["ORDER-5101"] == 1
    assert ledger.get_order(MCHID, "ORDER-5101").trade_state == "SUCCESS"


@pytest.mark.slow
def test_schedule_backs_off_and_failed_queries_are_retried_later(
    ledger_factory: Callable[[], Ledger], worklist: Worklist
) -> None:
    ledger = ledger_factory()
    ledger.register_order(MCHID, "ORDER-5201", 100)
    start = time.time()
    now = [start]
    fake = FakeWeChat(ledger, {})
    fake.fail.add("ORDER-5201")
    reconciler = make(ledger, worklist, fake, now, schedule=(5, 10, 100), expiry=1000)
    queried_at = []
    while now[0] < start + 1200:
        now[0] += 1
        for _change in reconciler.run_pass():
            queried_at.append(round(now[0] - start))
            if len(queried_at) == 2:
                fake.fail.discard("ORDER-5201")  # WeChat is back; the order is still unpaid
    gaps = [b - a for a, b in itertools.pairwise(queried_at)]
    assert queried_at[0] in (5, 6)
    assert gaps[:2] == [10, 100]
    assert all(g <= 100 for g in gaps)
    assert queried_at[-1] >= 1000  # one last query at expiry, then it stops
    assert worklist.counts() == {"expired": 1}


def test_two_reconcilers_never_query_the_same_order_at_once(
    ledger_factory: Callable[[], Ledger], database_url: str
) -> None:
    ledger_a, ledger_b = ledger_factory(), ledger_factory()
    for i in range(20):
        ledger_a.register_order(MCHID, f"ORDER-53{i:02d}", 100)
    now = [time.time() + 6]
    fake = FakeWeChat(ledger_a, {f"ORDER-53{i:02d}": "SUCCESS" for i in range(20)}, delay=0.02)
    databases = [Database(database_url), Database(database_url)]  # two processes
    lists = [Worklist(databases[0]), Worklist(databases[1])]
    reconcilers = [make(ledger_a, lists[0], fake, now, batch=5), make(ledger_b, lists[1], fake, now, batch=5)]

    def work(r: Reconciler) -> None:
        while r.run_pass():
            pass

    errors = all_at_once(work, reconcilers)
    for database in databases:
        database.close()
    assert errors == []
    assert fake.max_in_flight == 1
    assert fake.calls == Counter({f"ORDER-53{i:02d}": 1 for i in range(20)})


def _v2_refund(ledger: Ledger, out_trade_no: str, out_refund_no: str) -> None:
    """A refund told by an APIv2 notification (REFUND.V2: stored, deciding nothing)."""
    fields = legacy.refund_fields(
        out_trade_no,
        out_refund_no,
        40,
        100,
        transaction_id="4200000000000000000000005401",
        refund_id=f"5030{out_refund_no}",
        refund_status="SUCCESS",
        success_time="2026-11-27T10:00:00+08:00",
    )
    body = legacy.refund_xml(Party(MCHID, APPID), legacy.req_info_plaintext(fields), DOC_KEY, nonce="n")
    ledger.record_v2_notification(MCHID, parse_v2_notification(body, DOC_KEY, max_bytes=len(body)))


def test_a_v2_refund_waits_in_the_worklist_until_a_query_confirms_it(
    ledger_factory: Callable[[], Ledger], worklist: Worklist
) -> None:
    ledger = ledger_factory()
    _v2_refund(ledger, "ORDER-5401", "R-5401")
    _v2_refund(ledger, "ORDER-5402", "R-5402")
    wechat = NotificationFactory(mchid=MCHID, appid=APPID)
    told = wechat.refund("ORDER-5402", "R-5402", 40, 100, refund_status="SUCCESS")  # then APIv3 told it too
    ledger.record_notification(MCHID, evidence(told, "REFUND.SUCCESS"))
    asked: list[str] = []
    down = [True]

    def confirm(mchid: str, out_trade_no: str, out_refund_no: str, *, sub_mchid: str | None = None) -> PaymentOrder:
        asked.append(out_refund_no)
        if down[0]:
            raise WeChatPayUnavailable("503")
        answer = {"out_trade_no": out_trade_no, "out_refund_no": out_refund_no, "refund_id": "503", "status": "SUCCESS"}
        answer["amount"] = {"refund": 40, "total": 100}
        queried = QueryEvidence("refund", 200, "{}", {}, "K", f"Q-{len(asked)}", answer, dt.datetime.now(dt.UTC))
        return ledger.record_query(mchid, out_trade_no, queried, sub_mchid=sub_mchid)

    now = [time.time() + 1]
    reconciler = make(ledger, worklist, FakeWeChat(ledger, {}), now, confirm_refund=confirm)
    assert reconciler.catch_up() == 3  # two APIv2 refund deliveries, one final refund decision
    assert worklist.refund_counts() == {"open": 1, "done": 1}
    assert reconciler.run_pass() == []  # not due yet: the endpoint asks at once, this is the fallback
    now[0] += 10
    [failed] = reconciler.run_pass()
    assert str(failed) == "ORDER-5401 refund R-5401: UNCONFIRMED, query failed (WeChat Pay unavailable); will retry"
    down[0] = False
    assert reconciler.run_pass() == []  # backing off
    now[0] += 60
    [confirmed] = reconciler.run_pass()
    assert str(confirmed) == "ORDER-5401 refund R-5401: UNCONFIRMED -> SUCCESS"
    assert (asked, worklist.refund_counts()) == (["R-5401", "R-5401"], {"done": 2})
    assert ledger.get_order(MCHID, "ORDER-5401").refunds["R-5401"]["status"] == "SUCCESS"


def test_rate_limiter_paces_queries() -> None:
    from projections.reconcile.reconciler import RateLimiter

    limiter = RateLimiter(50)
    started = time.monotonic()
    for _ in range(21):
        limiter.acquire()
    assert time.monotonic() - started >= 0.38


def test_a_sub_merchants_order_is_queried_by_the_partner_path_and_a_sub_order_through_its_combination(
    ledger_factory: Callable[[], Ledger], worklist: Worklist
) -> None:
    """[protocol: Service providers; Combined payments]: the worklist's order, as registered, decides the query."""
    ledger = ledger_factory()
    ledger.register_order(MCHID, "ORDER-5301", 100, sub_mchid="1900000110")
    ledger.register_order(MCHID, "ORDER-5301", 100, sub_mchid="1900000111")
    ledger.register_order(MCHID, "ORDER-5302", 100, combine_out_trade_no="COMBINED-53")
    now = [time.time() + 10]
    fake = FakeWeChat(ledger, {"ORDER-5301": "SUCCESS"})
    reconciler = make(ledger, worklist, fake, now)
    assert len(reconciler.run_pass()) == 3
    assert sorted(fake.asked, key=str) == sorted(
        [
            (MCHID, "ORDER-5301", "1900000110", None),
            (MCHID, "ORDER-5301", "1900000111", None),
            (MCHID, "ORDER-5302", None, "COMBINED-53"),
        ],
        key=str,
    )
    for sub_mchid in ("1900000110", "1900000111"):
        order = ledger.get_order(MCHID, "ORDER-5301", sub_mchid)
        assert (order.paid, order.anomalies) == (True, [])
