"""A day's reconciliation against the sandbox's bills ([protocol: Daily bills; Keeping a bill]), on both stores.

The ledger hears of payments and refunds as in production (the sandbox POSTs signed callbacks to the
running ledger); the bills are fetched, kept, matched and reported by `Services.bills`, as
`payledger bills reconcile` and `POST /bills/{date}/reconcile` do. What each case expects is worked
out here from what the sandbox was told to do, not from the matcher.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.bootstrap import Services, bootstrap
from ledger.domain import order_id
from ledger.errors import InvalidRequest
from ledger.settings import Settings
from ledger.wechatpay.sandbox.orders import CST
from ledger.wechatpay.sandbox.server import Sandbox
from projections.bills.reports import BillReport
from tests.support.servers import running


@dataclass
class World:
    sandbox: Sandbox
    client: httpx.Client
    services: Services

    @property
    def mchid(self) -> str:
        return self.sandbox.mchid

    def paid(self, out_trade_no: str, total: int, *, drop: bool = False) -> str:
        """An order registered with the ledger and paid at WeChat; its callback delivered unless `drop`."""
        self.sandbox.create_order(out_trade_no, total, "测试商品")
        registered = self.client.post("/orders", json={"out_trade_no": out_trade_no, "amount_total": total})
        assert registered.status_code == 201
        transaction_id = self.sandbox.pay(out_trade_no, drop=drop)
        if not drop:
            self.wait_for(out_trade_no, lambda order: order["trade_state"] == "SUCCESS")
        return transaction_id

    def refunded(self, out_trade_no: str, out_refund_no: str, amount: int, *, drop: bool = False) -> None:
        self.sandbox.refund(out_trade_no, out_refund_no, amount, drop=drop)
        if not drop:
            self.wait_for(out_trade_no, lambda order: order["refunded_total"] >= amount)

    def wait_for(self, out_trade_no: str, done: Callable[[dict[str, Any]], bool]) -> None:
        """The sandbox delivers callbacks from its own thread: wait until the ledger has decided."""
        deadline = time.monotonic() + 15
        while not done(self.client.get(f"/orders/{out_trade_no}").json()):
            assert time.monotonic() < deadline, f"{out_trade_no}: the callback was not decided in time"
            time.sleep(0.05)

    def reconcile(self, day: dt.date | None = None) -> BillReport:
        return self.services.bills.reconcile(self.mchid, day or today())

    def types(self, out_trade_no: str) -> Counter[str]:
        events = self.client.get(f"/orders/{out_trade_no}/events").json()["events"]
        return Counter(event["type"] for event in events)

    def log_size(self) -> int:
        return self.services.ledger.recorder.max_notification_id() or 0


def today() -> dt.date:
    return dt.datetime.now(CST).date()


def fee_yuan(fen: int) -> Decimal:
    """The sandbox's 0.6% fee, in yuan with 5 decimals ([protocol: Daily bills])."""
    return (Decimal(fen) * Decimal("0.00006")).quantize(Decimal("0.00001"), ROUND_HALF_UP)


@contextlib.contextmanager
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    sandbox = Sandbox(seed=11, signing="public_key")
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        env["LEDGER_DATABASE_URL"] = database_url
        settings = Settings.load(env)
        with running(create_app(settings, background=False)) as ledger_url:
            sandbox.notify_url = f"{ledger_url}/wechatpay/notify"
            services = bootstrap(settings)
            try:
                with httpx.Client(base_url=ledger_url, timeout=30) as client:
                    yield World(sandbox, client, services)
            finally:
                services.close()


@pytest.fixture
def w(tmp_path: Path, database_url: str) -> Iterator[World]:
    with world(tmp_path, database_url) as built:
        yield built


def test_a_day_that_agrees_is_kept_matched_and_reported_with_its_fees(w: World) -> None:
    w.paid("BILL-A-1", 8800)
    w.paid("BILL-A-2", 10000)
    w.refunded("BILL-A-1", "BILL-A-R1", 3000)
    report = w.reconcile()
    assert (report.status, report.exit_code, report.discrepancies) == ("agreed", 0, [])
    assert (report.rows, report.payments, report.refunds) == (3, 2, 1)
    fees = fee_yuan(8800) + fee_yuan(10000) - fee_yuan(3000)
    assert report.totals["payments"] == 18800 and report.totals["refunds"] == 3000
    assert Decimal(report.totals["fees"]) == fees * 100
    assert Decimal(report.totals["net"]) == Decimal(18800 - 3000) - fees * 100
    assert report.totals["fundflow"]["rows"] > 0
    for kind in ("trade", "fundflow"):
        kept = w.services.ledger.bill_status(w.mchid, today(), kind)
        assert kept.state == "stored" and kept.sha1 is not None
    assert report.sha1 == w.services.ledger.bill_status(w.mchid, today(), "trade").sha1
    # The fee of each matched line, per order: the payment's, less the refund's.
    lines = w.services.bill_lines
    assert lines.order_fee(w.mchid, "BILL-A-1") == fee_yuan(8800) - fee_yuan(3000)
    assert lines.order_fee(w.mchid, "BILL-A-2") == fee_yuan(10000)
    assert w.services.bills.report(w.mchid, today()) == report


def test_reconciling_again_fetches_nothing_and_adds_no_event(w: World) -> None:
    w.paid("BILL-B-1", 500)
    w.sandbox.set_bill_fault(today(), "amount_changed")
    first = w.reconcile()
    size = w.log_size()
    # Were the bill fetched again, this fault would fail the run: the kept bill is read instead.
    w.sandbox.set_bill_fault(today(), "corrupted")
    second = w.reconcile()
    assert w.log_size() == size
    assert [d.to_json() for d in second.discrepancies] == [d.to_json() for d in first.discrepancies]
    assert w.types("BILL-B-1")["BillDiscrepancy"] == 1


def test_a_payment_whose_callback_was_lost_is_missing_in_ledger_then_queried_and_resolved(w: World) -> None:
    w.paid("BILL-C-1", 700)
    transaction_id = w.paid("BILL-C-2", 900, drop=True)
    report = w.reconcile()
    [found] = report.discrepancies
    assert found.to_json() == {
        "kind": "missing_in_ledger",
        "out_trade_no": "BILL-C-2",
        "sub_mchid": None,
        "transaction_id": transaction_id,
        "out_refund_no": None,
        "refund_id": None,
        "bill_amount": 900,
        "ledger_amount": 900,
        "resolved": True,
    }
    assert (report.status, report.exit_code) == ("agreed", 0)
    types = w.types("BILL-C-2")
    assert (types["BillDiscrepancy"], types["StatusQueried"], types["PaymentSucceeded"]) == (1, 1, 1)


def test_a_refund_the_ledger_never_heard_of_stays_unresolved(w: World) -> None:
    w.paid("BILL-D-1", 1000)
    w.refunded("BILL-D-1", "BILL-D-R1", 400, drop=True)
    report = w.reconcile()
    [found] = report.discrepancies
    assert (found.kind, found.out_trade_no, found.out_refund_no, found.bill_amount, found.ledger_amount) == (
        "missing_in_ledger",
        "BILL-D-1",
        "BILL-D-R1",
        400,
        None,
    )
    assert found.refund_id and not found.resolved
    assert (report.status, report.exit_code) == ("discrepancies", 1)
    assert w.types("BILL-D-1")["BillDiscrepancy"] == 1


def test_a_payment_the_bill_lacks_is_missing_in_bill_and_only_that(w: World) -> None:
    first = w.paid("BILL-E-1", 1200)
    w.paid("BILL-E-2", 1300)
    w.sandbox.set_bill_fault(today(), "missing_row")  # the day's first line is left out
    report = w.reconcile()
    assert [
        (d.kind, d.out_trade_no, d.transaction_id, d.bill_amount, d.ledger_amount) for d in report.discrepancies
    ] == [("missing_in_bill", "BILL-E-1", first, None, 1200)]
    assert (report.status, report.exit_code) == ("discrepancies", 1)
    assert w.types("BILL-E-1")["BillDiscrepancy"] == 1 and w.types("BILL-E-2")["BillDiscrepancy"] == 0


def test_an_amount_changed_by_one_fen_is_an_amount_mismatch_and_only_that(w: World) -> None:
    w.paid("BILL-F-1", 2500)
    w.paid("BILL-F-2", 2600)
    w.sandbox.set_bill_fault(today(), "amount_changed")
    report = w.reconcile()
    assert [(d.kind, d.out_trade_no, d.bill_amount, d.ledger_amount) for d in report.discrepancies] == [
        ("amount_mismatch", "BILL-F-1", 2501, 2500)
    ]
    events = w.client.get("/orders/BILL-F-1/events").json()["events"]
    [event] = [e for e in events if e["type"] == "BillDiscrepancy"]
    assert event["data"]["kind"] == "amount_mismatch"
    assert event["data"]["evidence"] == f"bill:trade:{today().isoformat()}:{report.sha1}"


def test_a_bill_that_does_not_match_its_hash_keeps_nothing_and_fails(w: World) -> None:
    w.paid("BILL-G-1", 100)
    w.sandbox.set_bill_fault(today(), "corrupted")
    size = w.log_size()
    report = w.reconcile()
    assert (report.status, report.exit_code) == ("failed", 2)
    assert report.reason is not None and "hash" in report.reason
    assert w.services.ledger.bill_status(w.mchid, today(), "trade").state == "absent"
    assert w.log_size() == size


def test_a_bill_not_ready_keeps_nothing_and_a_later_run_has_it(w: World) -> None:
    w.paid("BILL-H-1", 100)
    w.sandbox.set_bill_fault(today(), "not_ready")
    report = w.reconcile()
    assert (report.status, report.exit_code) == ("not_ready", 2)
    assert w.services.ledger.bill_status(w.mchid, today(), "trade").state == "absent"
    w.sandbox.set_bill_fault(today(), None)
    assert w.reconcile().status == "agreed"


def test_an_empty_day_is_final_and_agrees(w: World) -> None:
    report = w.reconcile()
    assert (report.status, report.exit_code, report.rows) == ("empty", 0, 0)
    assert w.services.ledger.bill_status(w.mchid, today(), "trade").state == "empty"


def test_a_day_in_the_future_or_an_unknown_merchant_is_refused(w: World) -> None:
    with pytest.raises(InvalidRequest):
        w.reconcile(today() + dt.timedelta(days=1))
    with pytest.raises(InvalidRequest):
        w.services.bills.reconcile("1234567890", today())


def test_verify_accepts_differences_taken_from_a_kept_bill_and_not_from_a_bill_never_kept(w: World) -> None:
    w.paid("BILL-I-1", 300)
    w.sandbox.set_bill_fault(today(), "amount_changed")
    w.reconcile()
    assert w.services.audit_all().ok
    [found] = w.services.bills.report(w.mchid, today()).discrepancies  # type: ignore[union-attr]
    ledger = w.services.ledger
    forged = dt.date(2020, 1, 1)
    ledger.record_bill_discrepancies(w.mchid, forged, f"bill:trade:{forged}:{'0' * 40}", [found])
    report = w.services.audit_all()
    assert [b.problem for b in report.breaks] == [f"the bill it names is not kept (bill:trade:{forged}:{'0' * 40})"]
    assert report.breaks[0].stream_id == str(order_id(w.mchid, "BILL-I-1"))


def test_a_difference_a_later_callback_settles_is_reported_resolved_on_the_next_run(w: World) -> None:
    w.paid("BILL-J-1", 1000)
    w.refunded("BILL-J-1", "BILL-J-R1", 250, drop=True)
    first = w.reconcile()
    assert [(d.kind, d.out_refund_no, d.resolved) for d in first.discrepancies] == [
        ("missing_in_ledger", "BILL-J-R1", False)
    ]
    late = w.sandbox.notifications[-1]  # the refund's callback, delivered at last
    answer = w.client.post("/wechatpay/notify", content=late.body, headers=w.sandbox.factory.sign_headers(late.body))
    assert answer.status_code == 204
    size = w.log_size()
    second = w.reconcile()
    assert [(d.kind, d.out_refund_no, d.resolved) for d in second.discrepancies] == [
        ("missing_in_ledger", "BILL-J-R1", True)
    ]
    assert (second.status, second.exit_code) == ("agreed", 0)
    assert w.log_size() == size  # the difference stays recorded once; the report says it is settled


def test_a_service_providers_bill_files_each_difference_under_its_sub_merchant(
    tmp_path: Path, database_url: str
) -> None:
    """[protocol: Service providers; Daily bills]: one out_trade_no under two sub-merchants is two orders,
    in the bill (特约商户号) as in the ledger; a difference lands on the right one."""
    subs = ("1900000110", "1900000111")
    sandbox = Sandbox(seed=12, signing="public_key", sub_mchids=subs)
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        env["LEDGER_DATABASE_URL"] = database_url
        settings = Settings.load(env)
        assert settings.merchants[0].partner
        with running(create_app(settings, background=False)) as ledger_url:
            sandbox.notify_url = f"{ledger_url}/wechatpay/notify"
            services = bootstrap(settings)
            try:
                with httpx.Client(base_url=ledger_url, timeout=30) as client:
                    for sub_mchid, total in zip(subs, (500, 700), strict=True):
                        sandbox.create_order("SHARED-1", total, "测试商品", sub_mchid=sub_mchid)
                        body = {"out_trade_no": "SHARED-1", "amount_total": total, "sub_mchid": sub_mchid}
                        assert client.post("/orders", json=body).status_code == 201
                        sandbox.pay("SHARED-1", sub_mchid=sub_mchid)
                    for sub_mchid in subs:
                        deadline = time.monotonic() + 15
                        while client.get(f"/orders/SHARED-1?sub_mchid={sub_mchid}").json()["trade_state"] != "SUCCESS":
                            assert time.monotonic() < deadline
                            time.sleep(0.05)
                    sandbox.set_bill_fault(today(), "amount_changed")  # the day's first line, off by one fen
                    report = services.bills.reconcile(sandbox.mchid, today())
                    [found] = report.discrepancies
                    assert (found.kind, found.out_trade_no, found.sub_mchid) == ("amount_mismatch", "SHARED-1", subs[0])
                    assert (found.bill_amount, found.ledger_amount) == (501, 500)
                    counts = {
                        sub_mchid: Counter(
                            e["type"]
                            for e in client.get(f"/orders/SHARED-1/events?sub_mchid={sub_mchid}").json()["events"]
                        )["BillDiscrepancy"]
                        for sub_mchid in subs
                    }
                    assert counts == {subs[0]: 1, subs[1]: 0}
            finally:
                services.close()
