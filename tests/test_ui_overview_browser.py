"""The overview and the anomalies page in a real headless Chromium: read on a desktop and on a phone,
and an anomaly acknowledged with a note.

Skipped without Chromium or Playwright, except when `CI` is set (as tests/test_ui_browser.py). Saves
screenshots to tests/artifacts/ (overview.png, overview-phone.png, anomalies.png).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.application import build_ledger
from ledger.operators import Operators, Role
from ledger.store.sql import Database
from tests.support.audit_world import NO, audit_world
from tests.support.browser import CHROMIUM, playwright
from tests.support.projectors import project_until_caught_up

TOKEN = "overview-browser-t0ken-0123456789abcdef"
PASSWORD = "correct horse battery"
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.slow


def _fits(page: object) -> bool:
    """The page does not scroll sideways (a wide table scrolls in its own box)."""
    return bool(page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"))  # type: ignore[attr-defined]


def test_the_overview_and_anomalies_read_on_a_desktop_and_a_phone(tmp_path: Path, sqlite_url: str) -> None:
    sync_playwright = playwright()
    with audit_world(tmp_path, sqlite_url, LEDGER_ADMIN_TOKEN=TOKEN) as w, sync_playwright() as p:
        base = w.base_url.replace("127.0.0.1", "localhost")  # Secure cookies stay on localhost
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            database = Database(sqlite_url)
            Operators(database).add("olga", Role.OPERATOR, PASSWORD)
            database.close()
            page.goto(f"{base}/ui/")
            page.fill("#name", "olga")
            page.fill("#password", PASSWORD)
            page.click("#operator-login button")
            page.wait_for_url(f"{base}/ui/")
            assert page.locator("#open-anomalies").inner_text() == "2"
            assert page.locator("svg.chart polyline[data-outcome=accepted]").count() == 1
            assert "+08:00" in page.locator("#anomalies").inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

            page.click("#anomalies h2 a")
            page.wait_for_url(f"{base}/ui/anomalies")
            rows = page.locator("#anomalies tbody tr.open")
            assert rows.count() == 2 and NO in rows.first.inner_text()
            rows.first.locator("input[name=note]").fill("已与客户核对")
            rows.first.locator("button.acknowledge").click()
            page.wait_for_url(f"{base}/ui/anomalies?acked=*")
            assert "acknowledged" in page.locator("#acked").inner_text()
            ledger = build_ledger(sqlite_url)
            project_until_caught_up(sqlite_url, ledger)
            ledger.close()
            page.reload()
            assert page.locator("#anomalies tbody tr.open").count() == 1
            acknowledged = page.locator("#anomalies tbody tr.acknowledged")
            assert acknowledged.count() == 1 and "已与客户核对" in acknowledged.inner_text()
            page.screenshot(path=str(ARTIFACTS / "anomalies.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            for path in ("/ui/", "/ui/anomalies", f"/ui/orders/{NO}?mchid={w.sandbox.mchid}"):
                phone.goto(f"{base}{path}")
                assert _fits(phone), path
            phone.goto(f"{base}/ui/")
            assert phone.locator("#open-anomalies").inner_text() == "1"
            phone.screenshot(path=str(ARTIFACTS / "overview-phone.png"), full_page=True)
        finally:
            browser.close()
