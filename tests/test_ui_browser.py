"""An operator audits an order in a real headless Chromium (Debian's, driven by Playwright).

Without Chromium or Playwright the test is skipped, except when `CI` is set: then it fails.
The run saves a screenshot of the order page to tests/artifacts/order-page.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.audit_world import NO, audit_world
from tests.support.browser import CHROMIUM, playwright

TOKEN = "browser-t0ken-for-the-tests-only-0123456789"
SCREENSHOT = Path(__file__).parent / "artifacts" / "order-page.png"

pytestmark = pytest.mark.slow


def test_operator_logs_in_searches_reads_the_timeline_and_requeries(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_playwright = playwright()
    with audit_world(tmp_path, sqlite_url, LEDGER_ADMIN_TOKEN=TOKEN) as w, sync_playwright() as p:
        # Chromium keeps Secure cookies on http://localhost (a secure context), not on 127.0.0.1.
        base = w.base_url.replace("127.0.0.1", "localhost")
        paid_body = w.sandbox.notifications[0].body.decode()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            # Not logged in: the login form, a 401, and nothing about the order.
            response = page.goto(f"{base}/ui/orders/{NO}")
            assert response is not None and response.status == 401
            assert page.locator("#name").is_visible() and page.locator("#password").is_visible()
            page.click("details.token-login summary")  # the admin token's own login, folded away
            assert page.locator("#token").is_visible()
            html = page.content()
            assert w.transaction_id not in html and "PaymentSucceeded" not in html and "REFUND" not in html

            page.fill("#token", "not-the-token")
            page.click("details.token-login button")
            assert page.locator("[role=alert]").inner_text() == "That token is not right."
            assert w.transaction_id not in page.content()

            # Logging in returns to the page asked for.
            page.click("details.token-login summary")
            page.fill("#token", TOKEN)
            page.click("details.token-login button")
            page.wait_for_url(f"**/ui/orders/{NO}")
            assert page.locator("#trade-state").inner_text() == "REFUND"
            cookie = next(c for c in page.context.cookies() if c["name"] == "payledger_session")
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
            assert TOKEN not in cookie["value"]

            # Search by out_trade_no, then by transaction_id, from the search page.
            for q in (NO, w.transaction_id):
                page.goto(f"{base}/ui/search")
                page.fill("main input[name=q]", q)
                page.press("main input[name=q]", "Enter")
                page.wait_for_url(f"**/ui/orders/{NO}?mchid={w.sandbox.mchid}")
                assert page.locator("h1").first.inner_text().startswith(NO)

            # The timeline: every event, WeChat's retries with their gaps, anomalies highlighted.
            entries = page.locator("#timeline > li")
            types = [entries.nth(i).get_attribute("data-type") for i in range(entries.count())]
            assert types == [
                "Opened",
                "Registered",
                "NotificationReceived",
                "AnomalyDetected",
                "PaymentSucceeded",
                "NotificationReceived",
                "NotificationReceived",
                "StatusQueried",
                "NotificationReceived",
                "AnomalyDetected",
                "RefundSucceeded",
            ]
            assert page.locator("#timeline .badge.retry").all_inner_texts() == ["retry +15s", "retry +15s"]
            anomalies = page.locator("#timeline > li.anomaly")
            assert anomalies.count() == 2
            assert "amount_mismatch" in anomalies.first.inner_text()
            background = anomalies.first.evaluate("el => getComputedStyle(el).backgroundColor")
            assert background not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")
            assert "2 anomalies" in page.locator(".anomalies h2").inner_text()

            # Decoded payloads and, on demand, the raw body with its signature headers.
            first_delivery = page.locator("#v3")
            raw = first_delivery.locator("details.raw pre.rawbody")
            assert not raw.is_visible()
            first_delivery.locator("details.raw summary").click()
            assert raw.is_visible()
            assert raw.inner_text() == paid_body
            assert "Wechatpay-Signature" in first_delivery.locator("details.raw").inner_text()
            first_delivery.locator("details.payload summary").click()
            assert w.transaction_id in first_delivery.locator("details.payload pre").inner_text()

            # Outbound deliveries: four messages, the first attempt of one refused with 503.
            rows = page.locator("table.outbound tbody tr")
            assert rows.count() == 4
            attempts = page.locator("table.outbound ol.attempts li").all_inner_texts()
            assert len(attempts) == 5
            assert sum("HTTP 503" in a for a in attempts) == 1 and sum("HTTP 200" in a for a in attempts) == 4
            assert page.locator("table.outbound li.failed").count() == 1

            # Re-query WeChat Pay (the sandbox): a new StatusQueried event, shown and highlighted.
            page.click("#requery")
            page.wait_for_url("**queried=12*")
            assert "recorded as event v12" in page.locator("#queried").inner_text()
            fresh = page.locator("#v12")
            assert fresh.get_attribute("data-type") == "StatusQueried"
            assert "fresh" in (fresh.get_attribute("class") or "")
            assert "trade_state=REFUND" in fresh.inner_text()
            assert page.locator("#timeline > li[data-type=StatusQueried]").count() == 2

            page.locator("#v3 details.raw summary").click()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert SCREENSHOT.stat().st_size > 10_000
            with capsys.disabled():
                print(f"\nscreenshot of the order page: {SCREENSHOT}")

            # Logging out ends the browser's access.
            page.click("form[action='/ui/logout'] button")
            page.wait_for_url("**/ui/login")
            response = page.goto(f"{base}/ui/orders/{NO}")
            assert response is not None and response.status == 401
            assert w.transaction_id not in page.content()
        finally:
            browser.close()
