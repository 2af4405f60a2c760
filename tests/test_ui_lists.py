"""The operator's lists on both stores: orders (filters, keyset pages, CSV), deliveries and endpoints.

Orders are written into the live orders view as the projection writes them, with times, states,
merchants and amounts chosen so that each filter has rows on both sides of its edge.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from api.ui.auth import COOKIE, Access, UISessions
from ledger.application import Ledger
from ledger.operators import Role
from ledger.wechatpay.bills import BEIJING
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model import order_list
from projections.read_model.live import live_view
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDERS_VIEW
from projections.webhooks.outbox import Outbox
from projections.webhooks.records import Attempt
from tests.support.constants import MCHID
from tests.support.projectors import project_until_caught_up
from tests.support.servers import service
from tests.support.webhooks import decide

TOKEN = "ui-lists-t0ken-for-the-tests-only-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PROVIDER = "1900000200"
SUBS = ("1900000301", "1900000302")
STATES = ("SUCCESS", "NOTPAY", "CLOSED", "REFUND", "SUCCESS", "PAYERROR", "SUCCESS")
DAY0 = dt.datetime(2026, 11, 28, tzinfo=BEIJING)
"""Midnight in Shanghai, 16:00 UTC the day before: a day filter in UTC would cut elsewhere."""
QUOTE = "'"
INJECTED = ("@AT-SUM-0001", "-DASH-00002", "=CMD-000003", "+PLUS-00004")
"""Numbers a spreadsheet would read as formulas (orders of unregistered numbers come from WeChat as they are)."""


@dataclass
class Seeded:
    mchid: str
    sub_mchid: str
    out_trade_no: str
    trade_state: str
    amount_total: int
    transaction_id: str | None
    anomalies: int
    created_at: float

    @property
    def key(self) -> str:
        return f"{self.mchid}/{self.sub_mchid}/{self.out_trade_no}"


def _seeded() -> list[Seeded]:
    orders = []
    for n in range(137):
        mchid, sub = (MCHID, "") if n % 3 == 0 else (PROVIDER, SUBS[n % 2])
        state = STATES[n % len(STATES)]
        paid = state in ("SUCCESS", "REFUND")
        # Every fifth order shares its time with the one before: the key breaks the tie.
        hours = (n - n % 5 if n % 5 == 1 else n) * 1.7
        number = INJECTED[n // 40] if n % 40 == 7 else f"LIST-{n:05d}"
        orders.append(
            Seeded(
                mchid=mchid,
                sub_mchid=sub,
                out_trade_no=number,
                trade_state=state,
                amount_total=[1, 150, 149, 151, 9999, 20000, 12345][n % 7] + (n // 7) * 100,
                transaction_id=f"42000000{n % 4}{n:019d}" if paid else None,
                anomalies=1 if n % 11 == 4 else 0,
                created_at=DAY0.timestamp() + hours * 3600,
            )
        )
    # More orders recorded at one instant than a page holds: the next page starts inside the tie.
    for n in range(56):
        orders.append(Seeded(PROVIDER, SUBS[n % 2], f"TIE-{n:05d}", "NOTPAY", 100, None, 0, DAY0.timestamp() + 1000.5))
    return orders


SEEDED = _seeded()


def _row(o: Seeded) -> dict[str, Any]:
    return {
        "mchid": o.mchid,
        "sub_mchid": o.sub_mchid,
        "out_trade_no": o.out_trade_no,
        "stream_id": str(uuid.uuid5(uuid.NAMESPACE_URL, o.key)),
        "registered": True,
        "trade_state": o.trade_state,
        "amount_total": o.amount_total,
        "currency": "CNY",
        "transaction_id": o.transaction_id,
        "success_time": "2026-11-28T10:00:00+08:00" if o.transaction_id else None,
        "paid_total": o.amount_total if o.transaction_id else None,
        "refunded_total": o.amount_total if o.trade_state == "REFUND" else 0,
        "anomalies": o.anomalies,
        "open_anomalies": o.anomalies,
        "version": 2,
        "created_at": o.created_at,
        "updated_at": o.created_at + 5,
        "combine_out_trade_no": None,
        "document": "{}",
    }


@dataclass
class World:
    client: httpx.Client
    ledger: Ledger
    url: str

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(path, params=params, headers=BEARER)

    def listed(self, **params: str) -> list[str]:
        """Every order's key the list shows for `params`, following the next links to the end."""
        keys: list[str] = []
        response = self.get("/ui/orders", **params)
        while True:
            assert response.status_code == 200, response.text
            keys += re.findall(r'data-key="([^"]*)"', response.text)
            found = re.search(r'href="([^"]+)" id="next"', response.text)
            if found is None:
                return keys
            response = self.client.get(html.unescape(found.group(1)), headers=BEARER)

    def exported(self, **params: str) -> list[dict[str, str]]:
        response = self.get("/ui/orders.csv", **params)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(response.text)))


@pytest.fixture
def world(merchant_env: dict[str, str], database_url: str) -> Iterator[World]:
    with service(merchant_env, database_url, LEDGER_ADMIN_TOKEN=TOKEN) as (client, ledger):
        view = open_orders_view(database_url, live_view(database_url, ORDERS_VIEW))
        with view.transaction() as cur:
            view.upsert_many(cur, [_row(o) for o in SEEDED], [])
        view.close()
        yield World(client, ledger, database_url)


def _expected(keep: Callable[[Seeded], bool]) -> list[str]:
    return [o.key for o in SEEDED if keep(o)]


def _day(offset: int) -> str:
    return (DAY0 + dt.timedelta(days=offset)).date().isoformat()


def _in_days(o: Seeded, first: int, last: int) -> bool:
    start = (DAY0 + dt.timedelta(days=first)).timestamp()
    end = (DAY0 + dt.timedelta(days=last + 1)).timestamp()
    return start <= o.created_at < end


FILTERS: list[tuple[dict[str, str], Callable[[Seeded], bool]]] = [
    ({}, lambda o: True),
    ({"state": "SUCCESS"}, lambda o: o.trade_state == "SUCCESS"),
    ({"state": "NOTPAY"}, lambda o: o.trade_state == "NOTPAY"),
    ({"mchid": PROVIDER}, lambda o: o.mchid == PROVIDER),
    ({"mchid": MCHID}, lambda o: o.mchid == MCHID),
    ({"mchid": PROVIDER, "sub_mchid": SUBS[1]}, lambda o: o.sub_mchid == SUBS[1]),
    ({"sub_mchid": SUBS[0]}, lambda o: o.sub_mchid == SUBS[0]),
    ({"anomalies": "1"}, lambda o: o.anomalies > 0),
    ({"from": _day(1), "to": _day(2)}, lambda o: _in_days(o, 1, 2)),
    ({"from": _day(3)}, lambda o: _in_days(o, 3, 999)),
    ({"to": _day(0)}, lambda o: _in_days(o, -999, 0)),
    ({"min": "1.5", "max": "100"}, lambda o: 150 <= o.amount_total <= 10000),
    ({"min": "1.51"}, lambda o: o.amount_total >= 151),
    ({"max": "1.49"}, lambda o: o.amount_total <= 149),
    ({"q": "LIST-0012"}, lambda o: o.out_trade_no.startswith("LIST-0012")),
    ({"q": "@AT"}, lambda o: o.out_trade_no.startswith("@AT")),
    ({"q": "420000001"}, lambda o: (o.transaction_id or "").startswith("420000001")),
    (
        {"state": "SUCCESS", "mchid": PROVIDER, "min": "50", "from": _day(2)},
        lambda o: o.trade_state == "SUCCESS" and o.mchid == PROVIDER and o.amount_total >= 5000 and _in_days(o, 2, 99),
    ),
    (
        {"state": "CLOSED", "anomalies": "1", "q": "LIST"},
        lambda o: o.trade_state == "CLOSED" and o.anomalies > 0 and o.out_trade_no.startswith("LIST"),
    ),
    ({"state": "REVOKED"}, lambda o: False),
    ({"q": "TIE-"}, lambda o: o.out_trade_no.startswith("TIE-")),
    ({"q": "TIE-", "sub_mchid": SUBS[1]}, lambda o: o.out_trade_no.startswith("TIE-") and o.sub_mchid == SUBS[1]),
]


@pytest.mark.parametrize("case", range(len(FILTERS)))
def test_each_filter_narrows_the_list_and_its_pages_visit_every_order_once(world: World, case: int) -> None:
    params, keep = FILTERS[case]
    expected = _expected(keep)
    listed = world.listed(**params)
    assert len(listed) == len(set(listed)), "an order on two pages"
    assert sorted(listed) == sorted(expected)
    times = {o.key: o.created_at for o in SEEDED}
    assert [times[k] for k in listed] == sorted((times[k] for k in listed), reverse=True), "newest first"
    # A number a spreadsheet would take for a formula is exported behind a quote (see the CSV test).
    exported = [
        f"{r['mchid']}/{r['sub_mchid']}/{r['out_trade_no'].removeprefix(QUOTE)}" for r in world.exported(**params)
    ]
    assert sorted(exported) == sorted(expected)


def test_number_and_amount_ranges_matching_many_orders_list_the_same_orders(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past NARROW orders in its range, a number prefix or an amount range is read another way.
    monkeypatch.setattr(order_list, "NARROW", 2)
    for params, keep in FILTERS:
        if {"q", "min", "max"} & set(params):
            listed = world.listed(**params)
            assert len(listed) == len(set(listed)) and sorted(listed) == sorted(_expected(keep)), params


def test_each_next_link_starts_after_the_last_row_shown(world: World) -> None:
    first = world.get("/ui/orders")
    assert first.text.count("data-key=") == 50
    link = html.unescape(re.search(r'href="([^"]+)" id="next"', first.text).group(1))  # type: ignore[union-attr]
    after = parse_qs(urlsplit(link).query)["after"][0]
    last = re.findall(r'data-key="([^"]*)"', first.text)[-1]
    assert after.endswith(f'"{last.split("/")[0]}","{last.split("/")[1]}","{last.split("/")[2]}"]')
    assert "OFFSET" not in link.upper()
    assert len(world.listed()) == len(SEEDED)


def test_the_csv_has_a_header_amounts_in_fen_and_no_formula_a_spreadsheet_would_run(world: World) -> None:
    response = world.get("/ui/orders.csv")
    assert "attachment" in response.headers["content-disposition"]
    lines = response.text.splitlines()
    assert lines[0].split(",")[:4] == ["created_at", "mchid", "sub_mchid", "out_trade_no"]
    rows = world.exported()
    assert len(rows) == len(SEEDED)
    by_number = {r["out_trade_no"]: r for r in rows}
    for number in INJECTED:
        assert number not in by_number and f"'{number}" in by_number
    for cell in (c for r in rows for c in r.values()):
        assert not cell.startswith(("=", "+", "-", "@"))
    seeded = {o.out_trade_no: o for o in SEEDED}
    sample = seeded["LIST-00013"]
    row = by_number["LIST-00013"]
    assert row["amount_total_fen"] == str(sample.amount_total)
    assert row["created_at"].endswith("+08:00")
    created = dt.datetime.strptime(row["created_at"], "%Y-%m-%d %H:%M:%S %z")
    assert abs(created.timestamp() - sample.created_at) < 1


BAD = [
    ({"state": "PAID"}, "state must be one of"),
    ({"mchid": "19000001x9"}, "mchid must be"),
    ({"sub_mchid": "12"}, "sub_mchid must be"),
    ({"anomalies": "yes"}, "anomalies must be"),
    ({"from": "2026-13-01"}, "from must be a day"),
    ({"to": "28/11/2026"}, "to must be a day"),
    ({"from": _day(2), "to": _day(1)}, "from must not be after to"),
    ({"min": "1.234"}, "at most 2 decimals"),
    ({"max": "-1"}, "max must be an amount"),
    ({"min": "1e3"}, "min must be an amount"),
    ({"min": "3", "max": "2"}, "min must not be more than max"),
    ({"q": "LIST 1"}, "q must be"),
    ({"q": "订单"}, "q must be"),
    ({"q": "x" * 65}, "too long"),
    ({"after": "not json"}, "after is not a page"),
    ({"after": '[1e999,"a","b","c"]'}, "after is not a page"),
    ({"after": '[1, "a", "b"]'}, "after is not a page"),
]


@pytest.mark.parametrize(("params", "words"), BAD)
def test_an_invalid_filter_is_a_400_page_saying_what_is_wrong(world: World, params: dict[str, str], words: str) -> None:
    for path in ("/ui/orders", "/ui/orders.csv"):
        if path.endswith(".csv") and "after" in params:
            continue
        response = world.get(path, **params)
        assert response.status_code == 400
        assert words in html.unescape(response.text)
        assert "data-key=" not in response.text and "LIST-" not in response.text


def test_an_order_registered_through_the_api_is_listed_and_linked(world: World, factory: NotificationFactory) -> None:
    body = {"out_trade_no": "API-ORDER-1", "amount_total": 888, "description": "茶叶"}
    assert world.client.post("/orders", json=body, headers=BEARER).status_code == 201
    paid = factory.paid("API-ORDER-1", 888, transaction_id="4200000000002104083200001234")
    assert world.client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
    project_until_caught_up(world.url, world.ledger)
    page = world.get("/ui/orders", q="API-ORDER")
    assert re.findall(r'data-key="([^"]*)"', page.text) == [f"{MCHID}//API-ORDER-1"]
    assert f"/ui/orders/API-ORDER-1?mchid={MCHID}" in page.text
    assert "8.88" in page.text and "+08:00" in page.text
    assert world.listed(q="4200000000002104083200001234") == [f"{MCHID}//API-ORDER-1"]


# -- deliveries and endpoints -------------------------------------------------------------------------------


def _outbox_world(outbox: Outbox) -> dict[str, str]:
    """An endpoint with a dead letter, a failing message, a delivered one and one waiting; their ids."""
    endpoint = outbox.endpoints.add("http://hook-user:s3cret-pass@127.0.0.1:9/hook")
    now = time.time()
    for n in (1, 2, 3, 4):
        decide(outbox, n, at=now - 100 + n)
    by_number = {m.out_trade_no: m.id for m in outbox.messages.newest()}
    ids = {
        "dead": by_number["ORDER-0001"],
        "failing": by_number["ORDER-0002"],
        "delivered": by_number["ORDER-0003"],
        "pending": by_number["ORDER-0004"],
    }
    outbox.leases.claim_due("t", now, 30, 3)
    assert outbox.leases.mark_dead("t", ids["dead"], Attempt(now - 5, 500, 812.0, "boom"))
    assert outbox.leases.schedule_retry("t", ids["failing"], Attempt(now - 4, None, 10_000.0, "", "timeout"), now + 600)
    assert outbox.leases.mark_delivered("t", ids["delivered"], Attempt(now - 3, 204, 37.0))
    return {"endpoint": endpoint.id, **ids}


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def _session(client: httpx.Client) -> dict[str, str]:
    response = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/deliveries"}, follow_redirects=False)
    assert response.status_code == 303
    return {"Cookie": f"{COOKIE}={client.cookies.get(COOKIE) or response.cookies[COOKIE]}"}


def test_deliveries_show_dead_letters_first_and_a_resend_from_the_form_queues_it_again(
    world: World, outbox: Outbox
) -> None:
    ids = _outbox_world(outbox)
    cookie = _session(world.client)
    page = world.client.get("/ui/deliveries", headers=cookie)
    assert page.status_code == 200
    shown = re.findall(r'<tr class="msg-(\w+)" id="(msg_[0-9a-f]+)"', page.text)
    assert [state for state, _ in shown] == ["dead", "failing", "pending", "delivered"]
    assert "HTTP 500 in 812 ms" in page.text and "error timeout in 10000 ms" in page.text
    assert "+08:00" in page.text
    assert page.text.count('class="secondary resend"') == 4

    only = world.get("/ui/deliveries", state="dead", endpoint=ids["endpoint"])
    assert re.findall(r'id="(msg_[0-9a-f]+)"', only.text) == [ids["dead"]]
    assert world.get("/ui/deliveries", state="lost").status_code == 400
    assert world.get("/ui/deliveries", endpoint="ep_nope").status_code == 400

    form = {"csrf": _csrf(page.text), "message_id": ids["dead"]}
    resent = world.client.post("/ui/deliveries/resend", data=form, headers=cookie, follow_redirects=False)
    assert resent.status_code == 303 and resent.headers["location"] == "/ui/deliveries?resent=1"
    assert outbox.messages.get(ids["dead"]).state == "pending"
    assert outbox.endpoints.operator_events()[-1].kind == "message_resent"

    stale = world.client.post("/ui/deliveries/resend", data={**form, "csrf": "x"}, headers=cookie)
    assert stale.status_code == 403
    missing = {**form, "message_id": "msg_" + "0" * 32}
    assert world.client.post("/ui/deliveries/resend", data=missing, headers=cookie).status_code == 404
    bad = {**form, "message_id": "'; drop table"}
    assert world.client.post("/ui/deliveries/resend", data=bad, headers=cookie).status_code == 400


def test_recover_queues_the_dead_and_failing_messages_of_a_window_again(world: World, outbox: Outbox) -> None:
    ids = _outbox_world(outbox)
    now = dt.datetime.now(BEIJING)
    window = {
        "since": (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "until": (now + dt.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M"),
    }
    before = world.client.post("/ui/deliveries/recover", data={**window, "until": window["since"]}, headers=BEARER)
    assert before.status_code == 400 and "Since must be before until" in before.text
    for bad in ({"since": "yesterday"}, {"endpoint": "ep_nope"}):
        assert world.client.post("/ui/deliveries/recover", data={**window, **bad}, headers=BEARER).status_code == 400
    elsewhere = (now - dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    none = world.client.post(
        "/ui/deliveries/recover",
        data={"since": elsewhere, "until": window["since"]},
        headers=BEARER,
        follow_redirects=True,
    )
    assert none.status_code == 200
    assert "0 messages queued again" in none.text

    done = world.client.post(
        "/ui/deliveries/recover", data={**window, "endpoint": ids["endpoint"]}, headers=BEARER, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == "/ui/deliveries?recovered=2"
    states = {m.id: m.state for m in outbox.messages.newest()}
    assert [states[ids[name]] for name in ("dead", "failing", "delivered")] == ["pending", "pending", "delivered"]


def test_the_endpoints_page_masks_the_password_and_an_admin_disables_and_enables_by_form(
    world: World, outbox: Outbox
) -> None:
    ids = _outbox_world(outbox)
    cookie = _session(world.client)
    page = world.client.get("/ui/endpoints", headers=cookie)
    assert page.status_code == 200
    assert "s3cret-pass" not in page.text and "hook-user:***@127.0.0.1:9" in page.text
    assert "1 delivered" in page.text and "2 failed" in page.text
    assert re.search(r"pending 1</a>.*failing 1</a>.*dead 1</a>", page.text, re.S)

    disable = f"/ui/endpoints/{ids['endpoint']}/disable"
    form = {"csrf": _csrf(page.text), "reason": "maintenance 维护"}
    done = world.client.post(disable, data=form, headers=cookie, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/ui/endpoints?switched=disabled"
    endpoint = outbox.endpoints.get(ids["endpoint"])
    assert not endpoint.enabled and endpoint.disabled_reason == "maintenance 维护"
    page = world.client.get("/ui/endpoints?switched=disabled", headers=cookie)
    assert "disabled" in page.text and "maintenance 维护" in page.text and 'class="enable"' in page.text

    enable = f"/ui/endpoints/{ids['endpoint']}/enable"
    done = world.client.post(enable, data={"csrf": form["csrf"]}, headers=cookie, follow_redirects=False)
    assert done.headers["location"] == "/ui/endpoints?switched=enabled"
    assert outbox.endpoints.get(ids["endpoint"]).enabled
    again = world.client.post(enable, data={"csrf": form["csrf"]}, headers=cookie, follow_redirects=False)
    assert again.headers["location"] == "/ui/endpoints?switched=unchanged"
    assert world.client.post("/ui/endpoints/ep_nope/enable", data=form, headers=cookie).status_code == 404


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_who_may_not_act_sees_no_button_and_a_forged_post_is_refused(
    world: World, outbox: Outbox, monkeypatch: pytest.MonkeyPatch, role: Role
) -> None:
    ids = _outbox_world(outbox)
    monkeypatch.setattr(UISessions, "access", lambda self, request: Access("session", "x", operator="v", role=role))
    deliveries = world.client.get("/ui/deliveries")
    endpoints = world.client.get("/ui/endpoints")
    assert deliveries.status_code == endpoints.status_code == 200
    assert ids["dead"] in deliveries.text
    acts = role is Role.OPERATOR
    assert ("Resend" in deliveries.text) is acts and ('id="recover"' in deliveries.text) is acts
    assert 'class="danger disable"' not in endpoints.text and "/disable" not in endpoints.text
    assert world.client.get("/ui/orders").status_code == 200

    forged = {"csrf": "anything", "message_id": ids["dead"], "since": "2026-01-01T00:00", "until": "2030-01-01T00:00"}
    posts = ["/ui/endpoints/{}/disable", "/ui/endpoints/{}/enable"]
    if not acts:
        posts += ["/ui/deliveries/resend", "/ui/deliveries/recover"]
    for path in posts:
        response = world.client.post(path.format(ids["endpoint"]), data=forged)
        assert response.status_code == 403, path
        assert "may not do this" in response.text
    assert outbox.messages.get(ids["dead"]).state == "dead"
    assert outbox.endpoints.get(ids["endpoint"]).enabled
    assert [e.kind for e in outbox.endpoints.operator_events()] == ["endpoint_configured"]
