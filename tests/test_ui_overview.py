"""The console's overview (`/ui/`) and anomalies page (`/ui/anomalies`): figures from seeded orders,
the callbacks chart, projection lag, open anomalies first, and what a viewer may not do."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx

from api.app import create_app
from api.callback_minutes import CallbackMinutes
from api.ui.auth import COOKIE
from api.ui.chart import HEIGHT, callback_chart
from api.ui.formatting import beijing, yuan
from api.ui.overview import CHART_FRESH_SECONDS, LAG_FRESH_SECONDS, ChartCache
from ledger.application import build_ledger
from ledger.operators import Operators, Role
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDER_FIELDS, REFUND_FIELDS
from tests.support.constants import MCHID
from tests.support.projectors import project_until_caught_up
from tests.support.servers import running

TOKEN = "overview-t0ken-for-the-tests-only-0123456789"
PASSWORD = "correct horse battery"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BEIJING = dt.timezone(dt.timedelta(hours=8))
# 01:30 on 4 December in Beijing, still 3 December in UTC: "today" must be Beijing's.
NOW = dt.datetime(2026, 12, 4, 1, 30, tzinfo=BEIJING).timestamp()


@contextlib.contextmanager
def _app(merchant_env: dict[str, str], url: str, *, clock: Any = time.time) -> Iterator[httpx.Client]:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": url, "LEDGER_ADMIN_TOKEN": TOKEN})
    database = Database(url)
    try:
        operators = Operators(database)
        operators.add("vera", Role.VIEWER, PASSWORD)
        operators.add("olga", Role.OPERATOR, PASSWORD)
    finally:
        database.close()
    with running(create_app(settings, background=False, clock=clock)) as base:
        with httpx.Client(base_url=base, timeout=10) as client:
            yield client


def _login(client: httpx.Client, name: str) -> dict[str, str]:
    """The headers of `name`'s session."""
    form = {"name": name, "password": PASSWORD, "next": "/ui/"}
    response = client.post("/ui/login", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    match = re.search(rf"{COOKIE}=([^;]+)", response.headers["set-cookie"])
    assert match is not None
    return {"Cookie": f"{COOKIE}={match.group(1)}"}


def _order(no: str, *, success_time: str | None = None, paid: int | None = None, **more: Any) -> dict[str, Any]:
    anomalies = more.pop("anomalies", [])
    document = {"out_trade_no": no, "mchid": MCHID, "sub_mchid": None, "anomalies": anomalies}
    row = {
        "mchid": MCHID,
        "sub_mchid": "",
        "out_trade_no": no,
        "stream_id": f"stream-{no}",
        "registered": True,
        "trade_state": "SUCCESS" if success_time else "NOTPAY",
        "amount_total": paid or 100,
        "currency": "CNY",
        "transaction_id": f"42{no}" if success_time else None,
        "success_time": success_time,
        "paid_total": paid,
        "refunded_total": 0,
        "anomalies": len(anomalies),
        "open_anomalies": sum(1 for a in anomalies if not a.get("acknowledged")),
        "version": 3,
        "created_at": NOW - 86400,
        "updated_at": more.pop("updated_at", NOW - 3600),
        "combine_out_trade_no": None,
        "document": json.dumps(document, ensure_ascii=False),
    }
    return {**row, **more}


def _refund(no: str, out_refund_no: str, fen: int, success_time: str, status: str = "SUCCESS") -> dict[str, Any]:
    return {
        "mchid": MCHID,
        "sub_mchid": "",
        "out_refund_no": out_refund_no,
        "out_trade_no": no,
        "refund_id": f"50{out_refund_no}",
        "status": status,
        "refund": fen,
        "success_time": success_time,
    }


def _seed(url: str, orders: list[dict[str, Any]], refunds: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
    view = open_orders_view(url)
    try:
        with view.transaction() as curs:
            view.upsert_many(
                curs,
                [{k: o[k] for k in ORDER_FIELDS} for o in orders],
                [{k: r[k] for k in REFUND_FIELDS} for r in refunds],
            )
    finally:
        view.close()


def _text(html: str, element_id: str, tag: str = "span") -> str:
    """The text of the element `element_id` (a `tag` holding no other `tag`)."""
    match = re.search(rf'<{tag}[^>]* id="{element_id}"[^>]*>(.*?)</{tag}>', html, re.S)
    assert match is not None, element_id
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1))).strip()


def test_payments_and_refunds_of_today_and_yesterday_are_beijing_days(
    merchant_env: dict[str, str], database_url: str
) -> None:
    orders = [
        _order("T-MIDNIGHT", success_time="2026-12-04T00:00:00+08:00", paid=1000),  # 16:00 UTC on the 3rd
        _order("T-NOW", success_time="2026-12-04T01:29:59.120+08:00", paid=234),
        _order("Y-LAST", success_time="2026-12-03T23:59:59+08:00", paid=5000),
        _order("Y-FIRST", success_time="2026-12-03T00:00:00+08:00", paid=1),
        _order("BEFORE", success_time="2026-12-02T23:59:59+08:00", paid=777),
        _order("UNPAID"),
    ]
    refunds = [
        _refund("T-MIDNIGHT", "R-T", 300, "2026-12-04T00:10:00+08:00"),
        _refund("Y-LAST", "R-Y1", 2000, "2026-12-03T12:00:00+08:00"),
        _refund("Y-LAST", "R-Y2", 50, "2026-12-03T23:59:59+08:00"),
        _refund("Y-FIRST", "R-CLOSED", 1, "2026-12-03T10:00:00+08:00", status="CLOSED"),
        _refund("BEFORE", "R-B", 777, "2026-12-02T10:00:00+08:00"),
    ]
    with _app(merchant_env, database_url, clock=lambda: NOW) as client:
        _seed(database_url, orders, refunds)
        page = client.get("/ui/", headers=BEARER)
    assert page.status_code == 200
    today, yesterday = _text(page.text, "day-today", "div"), _text(page.text, "day-yesterday", "div")
    assert today == "Today 2026-12-04 Payments 2 ¥12.34 Refunds 1 ¥3.00"
    assert yesterday == "Yesterday 2026-12-03 Payments 2 ¥50.01 Refunds 2 ¥20.50"


def test_the_chart_counts_every_answer_by_outcome_and_minute(
    merchant_env: dict[str, str], sqlite_url: str, factory: NotificationFactory, other_factory: NotificationFactory
) -> None:
    with _app(merchant_env, sqlite_url) as client:
        paid = factory.paid("ORDER-C1", 100, transaction_id="4200000000002104083200001111")
        for _ in range(2):  # the second is a byte-identical replay: duplicate
            assert client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
        forged = other_factory.paid("ORDER-C2", 100)
        assert client.post("/wechatpay/notify", content=forged.body, headers=forged.headers).status_code >= 400
        html = client.get("/ui/", headers=BEARER).text
    totals = dict(re.findall(r'<polyline[^>]*data-outcome="([a-z_]+)" data-total="(\d+)"', html))
    assert totals.pop("accepted") == "1" and totals.pop("duplicate") == "1"
    assert list(totals.values()) == ["1"] and next(iter(totals)) in {"bad_signature", "unknown_serial"}


def test_chart_buckets_are_minutes_and_replicas_add_up(database_url: str) -> None:
    now = [NOW]
    database = Database(database_url)
    try:
        one, two = CallbackMinutes(database, lambda: now[0]), CallbackMinutes(database, lambda: now[0])
        one.count("accepted")
        two.count("accepted")
        two.count("stale")
        now[0] += 60
        one.count("accepted")
        one.flush()
        two.flush()
        minute = int(NOW // 60)
        assert one.since(minute) == {(minute, "accepted"): 2, (minute, "stale"): 1, (minute + 1, "accepted"): 1}
        chart = callback_chart(one.since(minute - 2000), now[0])
    finally:
        database.close()
    assert [(s.outcome, s.total, s.peak) for s in chart.series] == [("accepted", 3, 2), ("stale", 1, 1)]
    accepted = chart.series[0].points.split()
    # The last two minutes of the day drawn: 2 callbacks at the peak (y 0), then 1 at half height.
    assert accepted[-2:] == ["1438,0.0", f"1439,{HEIGHT / 2:.1f}"]
    assert chart.peak == 2 and all(label.endswith(":00") for _, label in chart.ticks)


def test_the_chart_is_drawn_again_once_its_counts_may_have_changed(sqlite_url: str) -> None:
    now = [NOW]
    database = Database(sqlite_url)
    try:
        minutes = CallbackMinutes(database, lambda: now[0])
        chart = ChartCache(minutes)
        minutes.count("accepted")
        assert chart.read(now[0]).total == 1  # this replica's counts flushed first
        minutes.count("accepted")
        now[0] += CHART_FRESH_SECONDS
        assert chart.read(now[0]).total == 1  # drawn a moment ago
        now[0] += 1
        assert chart.read(now[0]).total == 2
    finally:
        database.close()


def test_projection_lag_and_the_other_figures(merchant_env: dict[str, str], database_url: str) -> None:
    now = [time.time()]
    with _app(merchant_env, database_url, clock=lambda: now[0]) as client:
        body = {"out_trade_no": "ORDER-LAG1", "amount_total": 100, "description": "茶"}
        assert client.post("/orders", json=body, headers=BEARER).status_code == 201
        html = client.get("/ui/", headers=BEARER).text
        assert re.search(r'data-projection="orders_view">2<', html)  # Opened, Registered: not projected yet
        ledger = build_ledger(database_url)
        project_until_caught_up(database_url, ledger)
        ledger.close()
        html = client.get("/ui/", headers=BEARER).text
        assert re.search(r'data-projection="orders_view">2<', html)  # counted a moment ago: not again yet
        now[0] += LAG_FRESH_SECONDS + 1  # older than that: counted again, in the background
        deadline = time.monotonic() + 10
        while not re.search(r'data-projection="orders_view">0<', html) and time.monotonic() < deadline:
            time.sleep(0.05)
            html = client.get("/ui/", headers=BEARER).text
    assert re.search(r'data-projection="orders_view">0<', html)
    assert _text(html, "dead-letters", "dd") == "0" and _text(html, "failing-endpoints") == "0"
    assert f'data-mchid="{MCHID}"' in html and "never reconciled" in html


def _anomaly(kind: str, key: str, acknowledged: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": kind, "key": key, "detail": {"expected": 100}, "evidence": "n-1", "acknowledged": acknowledged}


ANOMALIES = {  # as the orders' summaries have them, each order changed at its own time
    "OLD-OPEN": ([_anomaly("over_refund", "over_refund:R1")], NOW - 7200),
    "ACKED": ([_anomaly("amount_mismatch", "amount_mismatch:p", {"operator": "olga", "note": "客户已确认"})], NOW - 60),
    "HALF": (
        [
            _anomaly("mchid_mismatch", "mchid_mismatch:n-4", {"operator": "olga", "note": "seen"}),
            _anomaly("appid_mismatch", "appid_mismatch:n-4"),
        ],
        NOW - 30,
    ),
    "NEW-OPEN": ([_anomaly("mchid_mismatch", "mchid_mismatch:n-3")], NOW - 600),
}


def _seed_anomalies(url: str) -> None:
    _seed(url, [_order(no, anomalies=found, updated_at=at) for no, (found, at) in ANOMALIES.items()])
    _seed(url, [_order(f"CLEAN-{i}") for i in range(3)])


def test_anomalies_page_lists_open_ones_first_and_the_overview_counts_them(
    merchant_env: dict[str, str], database_url: str
) -> None:
    with _app(merchant_env, database_url, clock=lambda: NOW) as client:
        _seed_anomalies(database_url)
        olga = _login(client, "olga")
        page = client.get("/ui/anomalies", headers=olga)
        overview = client.get("/ui/", headers=olga).text
    assert page.status_code == 200
    rows = re.findall(r'<tr class="(open|acknowledged)" data-kind="([a-z_]+)" data-order="([A-Z-]+)"', page.text)
    assert rows == [
        ("open", "appid_mismatch", "HALF"),
        ("open", "mchid_mismatch", "NEW-OPEN"),
        ("open", "over_refund", "OLD-OPEN"),
        ("acknowledged", "mchid_mismatch", "HALF"),
        ("acknowledged", "amount_mismatch", "ACKED"),
    ]
    assert _text(page.text, "open-count") == "3" and "open of 5" in page.text
    assert "客户已确认" in page.text and "by olga" in page.text
    assert page.text.count('action="/ui/anomalies/ack"') == 3  # an operator may acknowledge the open ones
    assert 'name="key" value="over_refund:R1"' in page.text
    assert "/ui/orders/NEW-OPEN?mchid=" in page.text
    assert _text(overview, "open-anomalies") == "3"
    latest = re.findall(r"<li><strong>([a-z_]+)</strong> <a href=\"/ui/orders/([A-Z-]+)", overview)
    assert latest == [("appid_mismatch", "HALF"), ("mchid_mismatch", "NEW-OPEN"), ("over_refund", "OLD-OPEN")]


def test_a_viewer_sees_no_acknowledge_form_and_a_forged_post_is_refused(
    merchant_env: dict[str, str], database_url: str
) -> None:
    with _app(merchant_env, database_url, clock=lambda: NOW) as client:
        _seed_anomalies(database_url)
        vera = _login(client, "vera")
        page = client.get("/ui/anomalies", headers=vera)
        assert page.status_code == 200 and "NEW-OPEN" in page.text
        assert "/ui/anomalies/ack" not in page.text and "Acknowledge" not in page.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert csrf is not None  # the logout form's: the session's own token
        form = {"csrf": csrf.group(1), "mchid": MCHID, "out_trade_no": "NEW-OPEN", "key": "mchid_mismatch:n-3"}
        forged = client.post("/ui/anomalies/ack", data=form, headers=vera)
    assert forged.status_code == 403
    assert "may not do this" in forged.text


def test_an_operator_acknowledges_a_real_anomaly_with_a_note(
    merchant_env: dict[str, str], database_url: str, factory: NotificationFactory
) -> None:
    no = "ORDER-ACK1"
    with _app(merchant_env, database_url) as client:
        body = {"out_trade_no": no, "amount_total": 100, "description": "茶"}
        assert client.post("/orders", json=body, headers=BEARER).status_code == 201
        paid = factory.paid(no, 90, transaction_id="4200000000002104083200002222")  # 10 fen short
        assert client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
        ledger = build_ledger(database_url)
        project_until_caught_up(database_url, ledger)
        olga = _login(client, "olga")
        page = client.get("/ui/anomalies", headers=olga).text
        key = re.search(r'name="key" value="([^"]+)"', page)
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
        assert key is not None and csrf is not None and key.group(1).startswith("amount_mismatch:")
        form = {"csrf": csrf.group(1), "mchid": MCHID, "sub_mchid": "", "out_trade_no": no, "key": key.group(1)}
        too_long = client.post("/ui/anomalies/ack", data={**form, "note": "x" * 501}, headers=olga)
        assert too_long.status_code == 400 and "longer than 500" in too_long.text
        acked = client.post("/ui/anomalies/ack", data={**form, "note": "已电话确认"}, headers=olga)
        assert acked.status_code == 303 and acked.headers["location"].startswith("/ui/anomalies?acked=")
        again = client.post("/ui/anomalies/ack", data={**form, "note": "again"}, headers=olga)
        assert "already+acknowledged" in again.headers["location"]
        project_until_caught_up(database_url, ledger)
        ledger.close()
        page = client.get("/ui/anomalies", headers=olga).text
        overview = client.get("/ui/", headers=olga).text
    assert re.findall(r'<tr class="(open|acknowledged)"', page) == ["acknowledged"]
    assert "by olga" in page and "已电话确认" in page and "again" not in page
    assert _text(overview, "open-anomalies") == "0"


def test_formatting_beijing_time_with_its_offset_and_yuan() -> None:
    assert beijing(dt.datetime(2026, 12, 3, 11, 20, 1, tzinfo=dt.UTC)) == "2026-12-03 19:20:01 +08:00"
    assert beijing(1796289601.5) == beijing(dt.datetime.fromtimestamp(1796289601.5, dt.UTC))
    assert beijing("2026-12-03T10:00:00+08:00") == "2026-12-03 10:00:00 +08:00"
    assert beijing(None) == "—" and beijing("not a time") == "not a time"
    assert [yuan(n) for n in (0, 5, 123456, -250, 100000000)] == [
        "¥0.00",
        "¥0.05",
        "¥1,234.56",
        "-¥2.50",
        "¥1,000,000.00",
    ]
