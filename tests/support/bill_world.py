"""A merchant's day to reconcile: the sandbox WeChat Pay and the ledger's app, both on loopback.

`a_day_with_a_refund` makes the day every bill test starts from: BILL-ORDER-1 (88.00) and
BILL-ORDER-2 (100.00) paid and 30.00 of BILL-ORDER-1 refunded, today in Beijing, every
notification delivered to the ledger, so that the day's bill and the ledger agree. A test then
breaks what it is about (a fault in the bill, a payment whose notification never came).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx

from ledger.application import Ledger
from ledger.wechatpay.bills import BEIJING
from ledger.wechatpay.sandbox.server import Sandbox
from tests.support.servers import ledger_app, running

__all__ = [
    "BEARER",
    "FEES",
    "PAID",
    "REFUNDED",
    "TOKEN",
    "BillWorld",
    "a_day_with_a_refund",
    "beijing_midnight",
    "bill_world",
    "today",
]

TOKEN = "bills-t0ken-for-the-tests-only-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PAID = {"BILL-ORDER-1": 8800, "BILL-ORDER-2": 10000}
REFUNDED = {"BILL-ORDER-1": 3000}
# The sandbox charges 0.6% per line, in yuan to 5 decimals, handed back in part on a refund: in fen.
FEES = {"BILL-ORDER-1": Decimal("52.800") - Decimal("18.000"), "BILL-ORDER-2": Decimal("60.000")}


def today() -> dt.date:
    return dt.datetime.now(BEIJING).date()


def beijing_midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), tzinfo=BEIJING).timestamp()


@dataclass
class BillWorld:
    sandbox: Sandbox
    client: httpx.Client  # carries the admin token
    ledger: Ledger  # on the app's store
    base_url: str

    def reconcile(self, day: dt.date | str | None = None, **params: str) -> httpx.Response:
        return self.client.post(f"/bills/{_day(day)}/reconcile", params=params)

    def report(self, day: dt.date | str | None = None, **params: str) -> httpx.Response:
        return self.client.get(f"/bills/{_day(day)}", params=params)

    def bill_applications(self) -> int:
        """How often the ledger asked WeChat Pay for a trade bill."""
        return self.sandbox.request_count("/v3/bill/tradebill")

    def pay_unnoticed(self, out_trade_no: str, total: int) -> str:
        """A payment whose notification never reaches the ledger; its transaction_id."""
        self.sandbox.create_order(out_trade_no, total, "测试商品")
        return self.sandbox.pay(out_trade_no, drop=True)


def _day(day: dt.date | str | None) -> str:
    if day is None:
        return today().isoformat()
    return day.isoformat() if isinstance(day, dt.date) else day


def a_day_with_a_refund(w: BillWorld) -> None:
    for out_trade_no, total in PAID.items():
        w.sandbox.create_order(out_trade_no, total, "测试商品")
        w.sandbox.pay(out_trade_no)
    for out_trade_no, amount in REFUNDED.items():
        w.sandbox.refund(out_trade_no, f"R-{out_trade_no}", amount)
    w.sandbox.wait_idle(10)
    for out_trade_no, total in PAID.items():
        order = w.client.get(f"/orders/{out_trade_no}").json()
        assert (order["paid_total"], order["refunded_total"]) == (total, REFUNDED.get(out_trade_no, 0)), order


@contextlib.contextmanager
def bill_world(tmp_path: Path, database_url: str, **extra: str) -> Iterator[BillWorld]:
    """The sandbox, and the ledger's app (admin token set, no background workers) calling it."""
    sandbox = Sandbox(seed=3, time_scale=1000)
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        with (
            ledger_app(env, database_url, LEDGER_ADMIN_TOKEN=TOKEN, **extra) as (app, ledger),
            running(app) as url,
            httpx.Client(base_url=url, headers=BEARER, timeout=60) as client,
        ):
            sandbox.notify_url = f"{url}/wechatpay/notify"
            yield BillWorld(sandbox, client, ledger, url)
