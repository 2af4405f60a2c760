"""Daily bills over HTTP ([protocol: Daily bills]): `POST /bills/{day}/reconcile` runs a day against the
sandbox's bill, `GET /bills/{day}` serves the report it kept, and `GET /orders/{no}` shows each order's
bill fee and the differences found. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.bill_world import (
    BEARER,
    FEES,
    PAID,
    REFUNDED,
    BillWorld,
    a_day_with_a_refund,
    bill_world,
    today,
)
from tests.support.constants import MCHID


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[BillWorld]:
    with bill_world(tmp_path, database_url) as w:
        a_day_with_a_refund(w)
        yield w


def events(w: BillWorld, out_trade_no: str) -> list[str]:
    return [e["type"] for e in w.client.get(f"/orders/{out_trade_no}/events").json()["events"]]


def test_a_day_that_agrees_is_reported_and_each_order_gains_its_fee_and_net(world: BillWorld) -> None:
    assert world.report().status_code == 404
    assert world.report().json() == {"code": "NOT_FOUND", "message": "that day was never reconciled"}
    before = world.client.get("/orders/BILL-ORDER-1").json()
    assert (before["fee_fen"], before["net_fen"]) == (None, None)

    ran = world.reconcile()
    assert ran.status_code == 200, ran.text
    report = ran.json()
    assert (report["mchid"], report["bill_date"], report["status"], report["reason"]) == (
        MCHID,
        today().isoformat(),
        "agreed",
        None,
    )
    assert {k: v for k, v in report["bill"].items() if k != "sha1"} == {"rows": 3, "payments": 2, "refunds": 1}
    assert len(report["bill"]["sha1"]) == 40
    fees = sum(FEES.values())
    assert report["totals"] == {
        "payments": 18800,
        "refunds": 3000,
        "fees": f"{fees:.3f}",
        "net": f"{Decimal(18800 - 3000) - fees:.3f}",
        "fundflow": {**report["totals"]["fundflow"], "rows": 6, "income": 18818, "expense": 3113},
    }
    assert report["discrepancies"] == []
    assert world.report().json() == report  # kept as answered

    for out_trade_no, total in PAID.items():
        order = world.client.get(f"/orders/{out_trade_no}").json()
        fee = FEES[out_trade_no]
        assert order["fee_fen"] == f"{fee:.3f}"
        assert order["net_fen"] == f"{total - REFUNDED.get(out_trade_no, 0) - fee:.3f}"
        assert order["bill_discrepancies"] == []
    # The fee is the bill's, not the version's: an older state of the order carries it too.
    assert world.client.get("/orders/BILL-ORDER-2", params={"as_of_version": 2}).json()["fee_fen"] == "60.000"

    streams = {no: events(world, no) for no in PAID}
    applied = world.bill_applications()
    again = world.reconcile()
    assert again.status_code == 200 and again.json()["status"] == "agreed"
    assert world.bill_applications() == applied, "the kept bill is matched again, not fetched"
    assert {no: events(world, no) for no in PAID} == streams


def test_differences_are_reported_recorded_in_the_orders_and_a_missing_payment_is_queried(world: BillWorld) -> None:
    """The bill says 88.01 for BILL-ORDER-1 (amount_mismatch, unresolved); BILL-ORDER-3's notification
    never came (missing_in_ledger, queried at once, so resolved)."""
    transaction_id = world.pay_unnoticed("BILL-ORDER-3", 5000)
    world.sandbox.set_bill_fault(today(), "amount_changed")

    ran = world.reconcile()
    assert ran.status_code == 200, ran.text
    report = ran.json()
    assert report["status"] == "discrepancies"
    found = {d["out_trade_no"]: d for d in report["discrepancies"]}
    assert sorted(found) == ["BILL-ORDER-1", "BILL-ORDER-3"]
    assert {k: found["BILL-ORDER-1"][k] for k in ("kind", "bill_amount", "ledger_amount", "resolved")} == {
        "kind": "amount_mismatch",
        "bill_amount": 8801,
        "ledger_amount": 8800,
        "resolved": False,
    }
    assert found["BILL-ORDER-3"] == {
        "kind": "missing_in_ledger",
        "out_trade_no": "BILL-ORDER-3",
        "sub_mchid": None,
        "transaction_id": transaction_id,
        "out_refund_no": None,
        "refund_id": None,
        "bill_amount": 5000,
        "ledger_amount": 5000,
        "resolved": True,
    }
    assert world.report().json() == report

    mismatched = world.client.get("/orders/BILL-ORDER-1").json()
    assert [
        (d["bill_date"], d["kind"], d["bill_amount"], d["ledger_amount"]) for d in mismatched["bill_discrepancies"]
    ] == [(today().isoformat(), "amount_mismatch", 8801, 8800)]
    assert mismatched["bill_discrepancies"][0]["evidence"] == f"bill:trade:{today()}:{report['bill']['sha1']}"
    assert events(world, "BILL-ORDER-1").count("BillDiscrepancy") == 1
    queried = world.client.get("/orders/BILL-ORDER-3").json()
    assert (queried["trade_state"], queried["paid_total"]) == ("SUCCESS", 5000)
    assert "StatusQueried" in events(world, "BILL-ORDER-3")

    world.reconcile()
    assert events(world, "BILL-ORDER-1").count("BillDiscrepancy") == 1, "once per bill however often it is run"


def test_a_bill_that_cannot_be_had_is_502_with_the_report_and_a_later_run_recovers(world: BillWorld) -> None:
    world.sandbox.set_bill_fault(today(), "not_ready")
    ran = world.reconcile()
    assert ran.status_code == 502
    body = ran.json()
    assert (body["code"], body["message"]) == ("FAIL", "trade bill: WeChat Pay bill not ready yet")
    assert (body["report"]["status"], body["report"]["reason"]) == ("not_ready", body["message"])
    assert world.report().json() == body["report"]

    world.sandbox.set_bill_fault(today(), "corrupted")
    corrupted = world.reconcile()
    assert corrupted.status_code == 502
    assert corrupted.json()["code"] == "FAIL"
    assert corrupted.json()["report"]["status"] == "failed"
    assert "hash" in corrupted.json()["message"]
    assert world.report().json()["status"] == "failed"

    world.sandbox.set_bill_fault(today(), None)
    recovered = world.reconcile()
    assert recovered.status_code == 200 and recovered.json()["status"] == "agreed"


def test_an_empty_day_is_200_empty(world: BillWorld) -> None:
    ran = world.reconcile(today() - dt.timedelta(days=1))
    assert ran.status_code == 200
    report = ran.json()
    assert (report["status"], report["bill"]["rows"], report["discrepancies"]) == ("empty", 0, [])


@pytest.mark.parametrize(
    "day",
    ["2024-13-01", "2024-02-30", "20240520", "2024-5-20", "2024-05-20T00:00", "yesterday", "２０２４-05-20"],
)
def test_a_bad_bill_date_is_400_and_nothing_is_asked_of_wechat(tmp_path: Path, sqlite_url: str, day: str) -> None:
    with bill_world(tmp_path, sqlite_url) as w:
        for response in (w.reconcile(day), w.report(day)):
            assert response.status_code == 400
            assert response.json() == {
                "code": "INVALID_REQUEST",
                "message": "bill_date must be a calendar day written YYYY-MM-DD",
            }
        assert w.bill_applications() == 0


def test_a_future_day_or_an_unknown_merchant_is_400_and_nothing_runs(tmp_path: Path, sqlite_url: str) -> None:
    with bill_world(tmp_path, sqlite_url) as w:
        future = w.reconcile(today() + dt.timedelta(days=1))
        assert future.status_code == 400
        assert future.json()["message"] == "bill_date is in the future (Beijing time)"
        assert w.report(today() + dt.timedelta(days=1)).status_code == 404
        for response in (w.reconcile(mchid="1900000999"), w.report(mchid="1900000999")):
            assert response.status_code == 400
            assert response.json() == {"code": "INVALID_REQUEST", "message": "unknown mchid"}
        assert w.bill_applications() == 0


def test_with_several_merchants_the_mchid_is_required(tmp_path: Path, sqlite_url: str) -> None:
    second = _second_merchant(tmp_path)
    with bill_world(tmp_path, sqlite_url, LEDGER_CONFIG=str(second)) as w:
        for response in (w.reconcile(), w.report()):
            assert response.status_code == 400
            assert response.json()["message"] == "mchid is required when several merchants are configured"
        keyless = w.reconcile(mchid="1900000222")
        assert keyless.status_code == 400
        assert "not configured to call WeChat Pay" in keyless.json()["message"]
        assert w.bill_applications() == 0
        assert w.reconcile(mchid=MCHID).json()["status"] == "empty"
        assert w.report(mchid=MCHID).status_code == 200
        assert w.report(mchid="1900000222").status_code == 404


def _second_merchant(tmp_path: Path) -> Path:
    """A LEDGER_CONFIG adding merchant 1900000222, which has no API key (it cannot fetch bills)."""
    keys = NotificationFactory(mchid="1900000222", appid="wx1111111111111111").write_keys(tmp_path / "second")
    config = tmp_path / "ledger.toml"
    config.write_text("[[merchants]]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items()))
    return config


def test_both_routes_need_the_admin_token(world: BillWorld) -> None:
    assert world.reconcile().status_code == 200
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        for method, path in (("GET", f"/bills/{today()}"), ("POST", f"/bills/{today()}/reconcile")):
            response = world.client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path)
            assert response.json()["code"] == "UNAUTHORIZED"
            assert "BILL-ORDER" not in response.text
    assert world.client.get(f"/bills/{today()}", headers=BEARER).status_code == 200
