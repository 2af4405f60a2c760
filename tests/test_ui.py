"""The operator pages without a browser: who gets in, what the cookie is, CSRF, escaping, search.

(The browser test, tests/test_ui_browser.py, drives the same pages in Chromium.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.ui.auth import COOKIE, SESSION_SECONDS, Access, UISessions
from ledger.application import build_ledger
from ledger.bill_matching import Discrepancy, DiscrepancyKind
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.bills.reports import BillReport, BillReports
from tests.support.bill_world import TOKEN as TOKEN_BILLS
from tests.support.bill_world import BillWorld, a_day_with_a_refund, bill_world, today
from tests.support.constants import MCHID
from tests.support.projectors import project_until_caught_up
from tests.support.servers import running

TOKEN = "ui-t0ken-for-the-tests-only-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
NO = "ORDER-U001"
TXN = "4200000000002104083200009999"


@dataclass
class UI:
    client: httpx.Client
    delivery_body: bytes

    def login(self) -> str:
        response = self.client.post("/ui/login", data={"token": TOKEN, "next": "/ui/"}, follow_redirects=False)
        assert response.status_code == 303
        match = re.search(rf"{COOKIE}=([^;]+)", response.headers["set-cookie"])
        assert match is not None
        return match.group(1)

    def page(self, path: str, session: str | None = None) -> httpx.Response:
        cookies = {"Cookie": f"{COOKIE}={session}"} if session else {}
        return self.client.get(path, headers=cookies, follow_redirects=False)


@contextlib.contextmanager
def _app(merchant_env: dict[str, str], url: str, **extra: str) -> Iterator[httpx.Client]:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": url, **extra})
    with running(create_app(settings, background=False)) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield client


def _populate(client: httpx.Client, factory: NotificationFactory, headers: dict[str, str]) -> bytes:
    body = {"out_trade_no": NO, "amount_total": 100, "description": "<script>alert('x')</script>茶"}
    assert client.post("/orders", json=body, headers=headers).status_code == 201
    paid = factory.paid(NO, 100, transaction_id=TXN)
    assert client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
    return paid.body


@pytest.fixture
def ui(merchant_env: dict[str, str], sqlite_url: str, factory: NotificationFactory) -> Iterator[UI]:
    with _app(merchant_env, sqlite_url, LEDGER_ADMIN_TOKEN=TOKEN) as client:
        body = _populate(client, factory, BEARER)
        ledger = build_ledger(sqlite_url)
        project_until_caught_up(sqlite_url, ledger)  # the orders view answers transaction_id searches
        ledger.close()
        yield UI(client, body)


ORDER_PAGE = f"/ui/orders/{NO}"


def _no_order_data(html: str) -> None:
    for secret in ("PaymentSucceeded", "NotificationReceived", "TRANSACTION.SUCCESS", "alert(", "amount_total"):
        assert secret not in html


def test_without_login_every_page_is_the_login_form_and_no_order_data(ui: UI) -> None:
    pages = ("/ui/", "/ui/anomalies", "/ui/search", f"/ui/search?q={NO}", f"/ui/search?q={TXN}")
    for path in (ORDER_PAGE, *pages, f"{ORDER_PAGE}?mchid=1900000109"):
        response = ui.page(path)
        assert response.status_code == 401, path
        html = response.text
        assert 'name="token"' in html and 'action="/ui/login"' in html
        _no_order_data(html)
        assert TXN not in html or path.endswith(TXN)  # only the search term itself comes back, in "next"
        assert NO not in html or NO in path
    for wrong in ({"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Cookie": f"{COOKIE}={TOKEN}"}):
        response = ui.client.get(ORDER_PAGE, headers=wrong)
        assert response.status_code == 401
        _no_order_data(response.text)
    requery = ui.client.post(f"{ORDER_PAGE}/query", data={"csrf": "x"})
    assert requery.status_code == 401
    events = ui.client.get(f"/orders/{NO}/events", headers=BEARER).json()["events"]
    assert "StatusQueried" not in {e["type"] for e in events}


def test_a_wrong_token_shows_the_form_again_with_401_and_no_cookie(ui: UI) -> None:
    response = ui.client.post("/ui/login", data={"token": "not-it", "next": ORDER_PAGE}, follow_redirects=False)
    assert response.status_code == 401
    assert "That token is not right." in response.text
    assert f'value="{ORDER_PAGE}"' in response.text
    assert "set-cookie" not in response.headers
    _no_order_data(response.text)


def test_login_sets_a_secure_http_only_strict_session_cookie_that_is_not_the_token(ui: UI) -> None:
    response = ui.client.post("/ui/login", data={"token": TOKEN, "next": ORDER_PAGE}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == ORDER_PAGE
    cookie = response.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= set(flags)
    assert flags["samesite"].lower() == "samesite=strict" and flags["path"] == "Path=/"
    assert flags["max-age"] == f"Max-Age={SESSION_SECONDS}"
    session = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in session and TOKEN not in cookie
    assert re.fullmatch(r"\d+\.[0-9a-f]{16}\.[0-9a-f]{64}", session)

    page = ui.page(ORDER_PAGE, session)
    assert page.status_code == 200
    assert "PaymentSucceeded" in page.text and TXN in page.text

    issued, nonce, mac = session.split(".")
    forged = {
        "tampered": f"{issued}.{nonce}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        "moved in time": f"{int(issued) + 1}.{nonce}.{mac}",
        "another nonce": f"{issued}.{'0' * 16}.{mac}",
        "expired": UISessions(TOKEN, clock=lambda: float(issued) - SESSION_SECONDS - 5).issue(),
        "another token": UISessions("another-token-0123456789abcdef").issue(),
        "garbage": "x.y",
    }
    for name, value in forged.items():
        response = ui.page(ORDER_PAGE, value)
        assert response.status_code == 401, name
        _no_order_data(response.text)


def test_next_after_login_stays_on_our_pages(ui: UI) -> None:
    for target in ("//evil.example/ui/", "https://evil.example/", "/ui/\\evil", "/orders/ORDER-U001"):
        response = ui.client.post("/ui/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
        assert response.headers["location"] == "/ui/", target


def test_the_bearer_header_works_for_the_pages_and_needs_no_csrf_token(ui: UI) -> None:
    page = ui.client.get(ORDER_PAGE, headers=BEARER)
    assert page.status_code == 200 and TXN in page.text
    # This merchant has no API key configured: the query itself fails (502), but it was let through.
    requery = ui.client.post(f"{ORDER_PAGE}/query", headers=BEARER)
    assert requery.status_code == 502
    assert "WeChat Pay query failed (queries not configured for this merchant)." in requery.text
    assert TXN in requery.text  # the order page, with the error on it


def test_post_forms_need_the_sessions_csrf_token_and_our_origin(ui: UI) -> None:
    session = ui.login()
    page = ui.page(ORDER_PAGE, session)
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert match is not None
    csrf = match.group(1)
    cookie = {"Cookie": f"{COOKIE}={session}"}
    same_origin = {**cookie, "Origin": str(ui.client.base_url).rstrip("/")}
    for data, headers in (
        ({}, cookie),
        ({"csrf": "0" * 64}, cookie),
        ({"csrf": UISessions(TOKEN).csrf_token(Access("session", ui.login()))}, cookie),  # another session's
        ({"csrf": csrf}, {**cookie, "Origin": "https://evil.example"}),
        ({"csrf": csrf}, {**cookie, "Origin": "null"}),
    ):
        response = ui.client.post(f"{ORDER_PAGE}/query", data=data, headers=headers)
        assert response.status_code == 403
        assert "This form has expired." in response.text
        assert ui.client.post("/ui/logout", data=data, headers=headers).status_code == 403
    accepted = ui.client.post(f"{ORDER_PAGE}/query", data={"csrf": csrf}, headers=same_origin)
    assert accepted.status_code == 502  # past the CSRF check, to WeChat Pay (not configured here)
    logout = ui.client.post("/ui/logout", data={"csrf": csrf}, headers=same_origin, follow_redirects=False)
    assert logout.status_code == 303 and logout.headers["location"] == "/ui/login"
    assert re.search(rf'{COOKIE}=""; .*Max-Age=0', logout.headers["set-cookie"])


def test_untrusted_payload_text_is_escaped(ui: UI) -> None:
    html = ui.client.get(ORDER_PAGE, headers=BEARER).text
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;茶" in html
    assert ui.client.get(ORDER_PAGE, headers=BEARER).headers["content-security-policy"].startswith("default-src 'none'")


def test_search_by_out_trade_no_and_transaction_id(ui: UI) -> None:
    for q in (NO, TXN, f"  {TXN} "):
        response = ui.client.get("/ui/search", params={"q": q}, headers=BEARER, follow_redirects=False)
        assert response.status_code == 303, q
        assert response.headers["location"] == f"/ui/orders/{NO}?mchid=1900000109"
    missing = ui.client.get("/ui/search", params={"q": "4200000000000000000000000000"}, headers=BEARER)
    assert missing.status_code == 404
    assert "No order found for “4200000000000000000000000000”." in missing.text
    assert ui.client.get("/ui/orders/ORDER-U404", headers=BEARER).status_code == 404


def test_without_an_admin_token_the_pages_are_open_and_say_so(
    merchant_env: dict[str, str], sqlite_url: str, factory: NotificationFactory
) -> None:
    with _app(merchant_env, sqlite_url) as client:
        _populate(client, factory, {})
        page = client.get(ORDER_PAGE)
        assert page.status_code == 200 and TXN in page.text
        assert "LEDGER_ADMIN_TOKEN is not set" in page.text
        assert client.get("/ui/login", follow_redirects=False).headers["location"] == "/ui/"
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert csrf is not None
        assert client.post(f"{ORDER_PAGE}/query", data={}).status_code == 403  # CSRF still applies
        assert client.post(f"{ORDER_PAGE}/query", data={"csrf": csrf.group(1)}).status_code == 502


def test_an_oversized_login_form_is_refused_before_it_is_read(ui: UI) -> None:
    """The login form is open to anyone: a huge body is refused on its declared length."""
    response = ui.client.post(
        "/ui/login",
        content=b"token=" + b"x" * (1024 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert "set-cookie" not in response.headers
    _no_order_data(response.text)


# -- daily bills ----------------------------------------------------------------------------------


@pytest.fixture
def bills(tmp_path: Path, database_url: str) -> Iterator[BillWorld]:
    """A reconciled day with two differences: BILL-ORDER-1 billed 1 fen more, BILL-ORDER-3 never notified."""
    with bill_world(tmp_path, database_url) as w:
        a_day_with_a_refund(w)
        w.pay_unnoticed("BILL-ORDER-3", 5000)
        w.sandbox.set_bill_fault(today(), "amount_changed")
        yield w


def _reconcile_form(w: BillWorld, day: dt.date | str, **headers: str) -> httpx.Response:
    form = {"bill_date": str(day), "mchid": MCHID}
    return w.client.post("/ui/bills/reconcile", data=form, headers=headers, follow_redirects=False)


def test_a_day_reconciled_from_the_bills_page_lists_its_differences_linked_to_their_orders(bills: BillWorld) -> None:
    index = bills.client.get("/ui/bills")
    assert index.status_code == 200
    assert 'href="/ui/bills"' in index.text  # in the navigation of every page
    assert "No day reconciled yet." in index.text
    assert f'name="bill_date" value="{today() - dt.timedelta(days=1)}"' in index.text

    ran = _reconcile_form(bills, today())
    assert ran.status_code == 303
    day_url = f"/ui/bills/{today()}?mchid={MCHID}"
    assert ran.headers["location"] == f"{day_url}&ran=1"
    page = bills.client.get(ran.headers["location"])
    assert page.status_code == 200
    assert 'id="ran"' in page.text and 'id="bill-status">discrepancies<' in page.text
    table = page.text.split('id="discrepancies"')[1]
    assert f'href="/ui/orders/BILL-ORDER-1?mchid={MCHID}"' in table
    assert f'href="/ui/orders/BILL-ORDER-3?mchid={MCHID}"' in table
    assert "amount_mismatch" in table and "<td>8801</td>" in table and "<td>8800</td>" in table
    assert "missing_in_ledger" in table
    assert "2 unresolved" not in page.text and "1 unresolved" in page.text

    listed = bills.client.get("/ui/bills").text
    assert f'href="{day_url}"' in listed
    assert "1 unresolved" in listed and "<td>23801</td>" in listed  # 88.01 + 100.00 + 50.00 billed

    order = bills.client.get(f"/ui/orders/BILL-ORDER-1?mchid={MCHID}")
    assert order.status_code == 200
    block = order.text.split('id="bill-discrepancies"')[1].split("</div>")[0]
    assert f'href="/ui/bills/{today()}?mchid={MCHID}"' in block and "amount_mismatch" in block
    assert 'id="fee">34.800 fen<' in order.text and 'id="net">5765.200 fen<' in order.text
    timeline = order.text.split('id="timeline"')[1]
    assert 'data-type="BillDiscrepancy"' in timeline
    assert f"amount_mismatch in the bill of {today()}: transaction_id=" in timeline
    unbilled = bills.client.get(f"/ui/orders/BILL-ORDER-2?mchid={MCHID}").text
    assert 'id="fee">60.000 fen<' in unbilled and 'id="bill-discrepancies"' not in unbilled


def test_a_day_without_a_bill_says_why_with_502_and_a_day_never_run_is_404(bills: BillWorld) -> None:
    never = bills.client.get(f"/ui/bills/{today()}", params={"mchid": MCHID})
    assert never.status_code == 404 and 'id="never"' in never.text
    assert 'name="bill_date" value="' + str(today()) + '"' in never.text  # a button to run it
    bills.sandbox.set_bill_fault(today(), "not_ready")
    failed = _reconcile_form(bills, today())
    assert failed.status_code == 502
    assert "The bill could not be had: trade bill: WeChat Pay bill not ready yet." in failed.text
    assert 'id="bill-status">not_ready<' in failed.text
    tomorrow = str(today() + dt.timedelta(days=1))
    for day, message in (
        ("2024-02-30", "bill_date must be a calendar day written YYYY-MM-DD"),
        (tomorrow, "bill_date is in the future (Beijing time)"),
    ):
        refused = _reconcile_form(bills, day)
        assert refused.status_code == 400 and message in refused.text
    assert bills.client.get("/ui/bills/2024-02-30").status_code == 400
    assert bills.client.get(f"/ui/bills/{today()}", params={"mchid": "<b>1</b>"}).status_code == 400


def test_the_bills_pages_need_a_login_and_their_form_the_sessions_csrf_token(tmp_path: Path, sqlite_url: str) -> None:
    with bill_world(tmp_path, sqlite_url) as w, httpx.Client(base_url=w.base_url, timeout=30) as browser:
        for path in ("/ui/bills", f"/ui/bills/{today()}"):
            response = browser.get(path)
            assert response.status_code == 401 and 'action="/ui/login"' in response.text
        assert browser.post("/ui/bills/reconcile", data={"bill_date": str(today())}).status_code == 401
        login = browser.post("/ui/login", data={"token": TOKEN_BILLS, "next": "/ui/bills"}, follow_redirects=False)
        session = re.search(rf"{COOKIE}=([^;]+)", login.headers["set-cookie"])
        assert session is not None
        cookie = {"Cookie": f"{COOKIE}={session.group(1)}"}
        page = browser.get("/ui/bills", headers=cookie)
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert page.status_code == 200 and csrf is not None
        form = {"bill_date": str(today() - dt.timedelta(days=1)), "mchid": MCHID}
        for data, headers in (
            (form, cookie),
            ({**form, "csrf": "0" * 64}, cookie),
            ({**form, "csrf": csrf.group(1)}, {**cookie, "Origin": "https://evil.example"}),
        ):
            refused = browser.post("/ui/bills/reconcile", data=data, headers=headers)
            assert refused.status_code == 403 and "This form has expired." in refused.text
        assert w.bill_applications() == 0
        same_origin = {**cookie, "Origin": w.base_url}
        ran = browser.post(
            "/ui/bills/reconcile", data={**form, "csrf": csrf.group(1)}, headers=same_origin, follow_redirects=False
        )
        assert ran.status_code == 303 and w.bill_applications() == 1


def test_bill_report_text_is_escaped(tmp_path: Path, sqlite_url: str) -> None:
    """What a bill names comes from a file fetched from outside: every page escapes it."""
    markup = "<script>alert('x')</script>"
    with bill_world(tmp_path, sqlite_url) as w:
        with contextlib.closing(Database(sqlite_url)) as database:
            found = Discrepancy(DiscrepancyKind.MISSING_IN_LEDGER, out_trade_no=markup, transaction_id=markup)
            report = BillReport(MCHID, today(), "discrepancies", dt.datetime.now(dt.UTC), reason=markup)
            report.discrepancies.append(found)
            BillReports(database).save(report)
        for path in ("/ui/bills", f"/ui/bills/{today()}"):
            html = w.client.get(path).text
            assert "<script>" not in html, path
            assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html, path
        assert "/ui/orders/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E?" in w.client.get(f"/ui/bills/{today()}").text
