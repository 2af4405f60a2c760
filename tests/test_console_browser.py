"""The whole console in a real headless Chromium, as a viewer and as an operator (issue 6/8).

A viewer logs in by name and password, visits every page, sees no action button anywhere, and a
POST forged from their session is refused (403) with nothing recorded. An operator visits every page
too, re-queries an order and finds their name in its history and on the activity page. Failed
logins trip the account's lock. Every page is saved as a screenshot under tests/artifacts/
(console-<role>-<page>.png). (The overview's and anomalies' flows are in
tests/test_ui_overview_browser.py, the lists' filter and resend in tests/test_ui_lists_browser.py.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ledger.application import build_ledger
from ledger.operators import FAILURES_BEFORE_LOCK, Operators, Role
from ledger.store.sql import Database
from tests.support.audit_world import NO, audit_world
from tests.support.browser import CHROMIUM, playwright
from tests.support.projectors import project_until_caught_up, run_activity

TOKEN = "console-browser-t0ken-0123456789abcdef"
PASSWORD = "correct horse battery"
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.slow


def _pages(mchid: str) -> dict[str, str]:
    return {
        "overview": "/ui/",
        "orders": "/ui/orders",
        "orders-filtered": "/ui/orders?state=REFUND&anomalies=1",
        "order": f"/ui/orders/{NO}?mchid={mchid}",
        "search": f"/ui/search?q={NO}-missing",
        "anomalies": "/ui/anomalies",
        "deliveries": "/ui/deliveries",
        "endpoints": "/ui/endpoints",
        "bills": "/ui/bills",
        "unrouted": "/ui/notifications",
        "activity": "/ui/activity",
    }


def _log_in(page: Any, base: str, name: str) -> None:
    page.goto(f"{base}/ui/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#operator-login button")
    page.wait_for_url(f"{base}/ui/")


def _tour(page: Any, base: str, mchid: str, role: str) -> dict[str, int]:
    """Visit every page, save its screenshot; how many POST forms each shows (logout is one)."""
    ARTIFACTS.mkdir(exist_ok=True)
    forms: dict[str, int] = {}
    for name, path in _pages(mchid).items():
        response = page.goto(f"{base}{path}")
        assert response is not None and response.status in (200, 404), (name, response and response.status)
        assert f"· {role}" in page.locator("#who").inner_text()
        assert "Traceback" not in page.content()
        forms[name] = page.locator("form[method=post]").count()
        page.screenshot(path=str(ARTIFACTS / f"console-{role}-{name}.png"), full_page=True)
    return forms


def test_a_viewer_and_an_operator_through_every_page(tmp_path: Path, sqlite_url: str) -> None:
    sync_playwright = playwright()
    with audit_world(tmp_path, sqlite_url, LEDGER_ADMIN_TOKEN=TOKEN) as w, sync_playwright() as p:
        base = w.base_url.replace("127.0.0.1", "localhost")  # Secure cookies stay on localhost
        mchid = w.sandbox.mchid
        database = Database(sqlite_url)
        operators = Operators(database)
        operators.add("vera", Role.VIEWER, PASSWORD)
        operators.add("otto", Role.OPERATOR, PASSWORD)
        database.close()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            # -- a viewer: every page, no action ---------------------------------------------------
            viewer = browser.new_page(viewport={"width": 1280, "height": 900})
            _log_in(viewer, base, "vera")
            forms = _tour(viewer, base, mchid, "viewer")
            assert forms == dict.fromkeys(forms, 1), forms  # the logout form alone, on every page
            viewer.goto(f"{base}{_pages(mchid)['order']}")
            assert viewer.locator("#read-only").is_visible() and viewer.locator("#requery").count() == 0
            csrf = viewer.locator("form[action='/ui/logout'] input[name=csrf]").get_attribute("value")
            events = len(w.client.get(f"/orders/{NO}/events").json()["events"])
            for action, form in (
                (f"/ui/orders/{NO}/query?mchid={mchid}", {}),
                (f"/ui/orders/{NO}/close?mchid={mchid}", {"confirm": "yes"}),
                ("/ui/anomalies/ack", {"mchid": mchid, "out_trade_no": NO, "key": "x", "note": "forged"}),
                ("/ui/deliveries/resend", {"message_id": "msg_x"}),
            ):
                forged = viewer.request.post(f"{base}{action}", form={"csrf": str(csrf), **form})
                assert forged.status == 403, action
            assert len(w.client.get(f"/orders/{NO}/events").json()["events"]) == events  # nothing recorded

            # -- an operator: every page, and a re-query that names them -----------------------------
            operator = browser.new_page(viewport={"width": 1280, "height": 900})
            _log_in(operator, base, "otto")
            forms = _tour(operator, base, mchid, "operator")
            assert forms["order"] > 1 and forms["anomalies"] > 1 and forms["deliveries"] > 1
            operator.goto(f"{base}{_pages(mchid)['order']}")
            operator.click("#requery")
            operator.wait_for_url(re.compile(r".*queried=\d+.*"))
            timeline = operator.locator("#timeline > li")
            last = timeline.nth(timeline.count() - 1)
            assert last.get_attribute("data-type") == "OperatorActed" and "otto" in last.inner_text()
            ledger = build_ledger(sqlite_url)
            project_until_caught_up(sqlite_url, ledger)
            run_activity(sqlite_url, ledger)
            ledger.close()
            operator.goto(f"{base}/ui/activity?operator=otto")
            row = operator.locator("#activity tbody tr").first
            assert row.get_attribute("data-action") == "requery" and NO in row.inner_text()
            operator.screenshot(path=str(ARTIFACTS / "console-operator-activity-after.png"), full_page=True)

            # -- failed logins lock the account (the right password then waits too) -----------------
            stranger = browser.new_page()
            statuses = []
            for attempt in range(FAILURES_BEFORE_LOCK + 1):
                stranger.goto(f"{base}/ui/login")
                stranger.fill("#name", "otto")
                stranger.fill("#password", PASSWORD if attempt == FAILURES_BEFORE_LOCK else "not his password")
                with stranger.expect_response(f"{base}/ui/login") as answer:
                    stranger.click("#operator-login button")
                statuses.append(answer.value.status)
            assert statuses == [401] * (FAILURES_BEFORE_LOCK - 1) + [429, 429]
            assert "Too many failed logins" in stranger.locator("[role=alert]").inner_text()
            stranger.screenshot(path=str(ARTIFACTS / "console-login-locked.png"), full_page=True)
        finally:
            browser.close()
