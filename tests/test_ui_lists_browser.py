"""An operator filters the orders list, pages through it, and resends a dead letter, in headless Chromium.

Skipped without Chromium or Playwright unless `CI` is set (as tests/test_ui_browser.py). Saves
screenshots of the orders, deliveries and endpoints pages, on a desktop and on a phone, under
tests/artifacts/.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ledger.store.sql import Database
from projections.read_model.live import live_view
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDERS_VIEW
from projections.webhooks.outbox import Outbox
from projections.webhooks.records import Attempt
from projections.webhooks.schema import outbox_url
from tests.support.browser import CHROMIUM, playwright
from tests.support.constants import MCHID
from tests.support.servers import service
from tests.support.webhooks import decide

TOKEN = "lists-browser-t0ken-for-the-tests-only-0123456789"
ARTIFACTS = Path(__file__).parent / "artifacts"
DAY0 = dt.datetime(2026, 11, 28, tzinfo=dt.timezone(dt.timedelta(hours=8)))

pytestmark = pytest.mark.slow


def _orders(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        state = ("SUCCESS", "CLOSED", "NOTPAY")[i % 3]
        created = DAY0.timestamp() + i * 3600
        rows.append(
            {
                "mchid": MCHID,
                "sub_mchid": "",
                "out_trade_no": f"BROWSE-{i:04d}" if i != 155 else "订单-0155",  # WeChat's, unregistered
                "stream_id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(i))),
                "registered": True,
                "trade_state": state,
                "amount_total": 100 + i,
                "currency": "CNY",
                "transaction_id": f"4200000000{i:018d}" if state == "SUCCESS" else None,
                "success_time": None,
                "paid_total": 100 + i if state == "SUCCESS" else None,
                "refunded_total": 0,
                "anomalies": 1 if i == 7 else 0,
                "open_anomalies": 1 if i == 7 else 0,
                "version": 2,
                "created_at": created,
                "updated_at": created,
                "combine_out_trade_no": None,
                "document": "{}",
            }
        )
    return rows


@pytest.fixture
def outbox(sqlite_url: str) -> Any:
    database = Database(outbox_url(sqlite_url))
    yield Outbox(database)
    database.close()


def test_operator_filters_pages_and_resends_a_dead_letter(
    merchant_env: dict[str, str], sqlite_url: str, outbox: Outbox
) -> None:
    sync_playwright = playwright()
    with service(merchant_env, sqlite_url, LEDGER_ADMIN_TOKEN=TOKEN) as (client, _), sync_playwright() as p:
        view = open_orders_view(sqlite_url, live_view(sqlite_url, ORDERS_VIEW))
        with view.transaction() as cur:
            view.upsert_many(cur, _orders(160), [])
        view.close()
        outbox.endpoints.add("http://hook:s3cret@127.0.0.1:9/hook")
        decide(outbox, 1, at=time.time() - 60)
        [dead] = outbox.messages.newest()
        outbox.leases.claim_due("t", time.time(), 30, 1)
        outbox.leases.mark_dead("t", dead.id, Attempt(time.time() - 5, 500, 812.0, "boom"))

        base = str(client.base_url).rstrip("/").replace("127.0.0.1", "localhost")
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            refused: list[str] = []
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"{base}/ui/login?next=/ui/orders")
            page.click("details.token-login summary")  # the admin token's login, below the operators'
            page.fill("#token", TOKEN)
            page.click("details.token-login button")
            page.wait_for_url("**/ui/orders")
            assert page.locator("#orders tbody tr").count() == 50
            assert page.locator("text=订单-0155").is_visible()

            # Filter by state from the form, then page to the end: every CLOSED order once.
            page.select_option("select[name=state]", "CLOSED")
            page.click("#filters button[type=submit]")
            page.wait_for_url("**/ui/orders?state=CLOSED**")
            page.screenshot(path=str(ARTIFACTS / "orders-list.png"), full_page=True)
            seen = page.locator("#orders tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
            while page.locator("#next").count():
                page.click("#next")
                page.wait_for_load_state()
                seen += page.locator("#orders tbody tr").evaluate_all("rows => rows.map(r => r.dataset.key)")
            closed = [f"{MCHID}//{r['out_trade_no']}" for r in _orders(160) if r["trade_state"] == "CLOSED"]
            assert sorted(seen) == sorted(closed) and len(seen) == len(set(seen))

            # The dead letter, its attempt, and a resend from its button.
            page.goto(f"{base}/ui/deliveries")
            row = page.locator(f"tr#{dead.id}")
            assert "dead" in row.inner_text() and "HTTP 500 in 812 ms" in row.inner_text()
            page.screenshot(path=str(ARTIFACTS / "deliveries.png"), full_page=True)
            row.locator("button.resend").click()
            page.wait_for_url("**/ui/deliveries?resent=1")
            assert page.locator("#done").is_visible()
            assert outbox.messages.get(dead.id).state == "pending"

            page.goto(f"{base}/ui/endpoints")
            assert "s3cret" not in page.content() and "hook:***@" in page.content()
            page.screenshot(path=str(ARTIFACTS / "endpoints.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844}, storage_state=page.context.storage_state())
            for name in ("orders", "deliveries", "endpoints"):
                phone.goto(f"{base}/ui/{name}")
                phone.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
                # The table scrolls inside its card; the page itself does not widen.
                assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            assert refused == []
        finally:
            browser.close()
