"""With LEDGER_ADMIN_TOKEN set, every route but the open ones answers 401 without it, and shows nothing.

The routes are walked from the app itself, every method of each, so a route added later is
covered without touching this file; the open ones are listed here on purpose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import Route

from api.app import create_app
from ledger.application import Ledger, build_ledger
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.constants import MCHID
from tests.support.inprocess import InProcess, in_process

TOKEN = "t0ken-for-the-tests-only-0123456789"
OPEN = {
    ("/wechatpay/notify", "POST"),
    ("/wechatpay/notify/{mchid}", "POST"),
    ("/wechatpay/v2/notify", "POST"),
    ("/wechatpay/v2/notify/{mchid}", "POST"),
    ("/healthz", "GET"),
    ("/healthz", "HEAD"),
    ("/readyz", "GET"),
    ("/readyz", "HEAD"),
    ("/openapi.json", "GET"),
    ("/openapi.json", "HEAD"),
}
SAMPLE_PARAMS = {
    "out_trade_no": "ORDER-9001",
    "mchid": MCHID,
    "bill_date": "2024-05-20",
    "notification_id": "11e20b8f-6b0d-449b-af03-675a1600a35a",
}
BAD_CREDENTIALS: list[list[tuple[bytes, bytes]]] = [
    [],
    [(b"authorization", b"")],
    [(b"authorization", b"Bearer")],
    [(b"authorization", b"Bearer wrong-token-of-the-same-sort-0123")],
    [(b"authorization", f"Bearer {TOKEN}x".encode())],
    [(b"authorization", f"Bearer {TOKEN[:-1]}".encode())],
    [(b"authorization", TOKEN.encode())],
    [(b"authorization", f"Basic {TOKEN}".encode())],
    [(b"authorization", f"Token {TOKEN}".encode())],
    [(b"authorization", f"Bearer  {TOKEN}".encode())],
    [(b"x-admin-token", TOKEN.encode())],
    [(b"cookie", f"token={TOKEN}".encode())],
]


@pytest.fixture
def service(merchant_env: dict[str, str], sqlite_url: str) -> Iterator[tuple[Any, InProcess, Ledger]]:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": sqlite_url, "LEDGER_ADMIN_TOKEN": TOKEN})
    ledger = build_ledger(sqlite_url)
    app = create_app(settings, ledger=ledger, background=False)
    try:
        with in_process(app) as client:
            yield app, client, ledger
    finally:
        ledger.close()


def routes(app: Any) -> Iterator[tuple[str, str, str]]:
    """(template, method, concrete path) for every route of the app."""
    for route in app.routes:
        if getattr(route, "path", "").startswith("/ui"):
            continue  # the audit pages have a login of their own, tested with them
        assert isinstance(route, Route), f"{route!r}: cover mounts too"
        path = re.sub(r"{(\w+)(:\w+)?}", lambda m: SAMPLE_PARAMS[m.group(1)], route.path)
        for method in sorted(route.methods or ()):
            yield route.path, method, path


def test_every_guarded_route_refuses_a_missing_or_wrong_token_and_shows_nothing(
    service: tuple[Any, InProcess, Ledger],
) -> None:
    app, client, ledger = service
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())]
    body = json.dumps({"out_trade_no": "ORDER-9001", "amount_total": 100}).encode()
    assert client.request("POST", "/orders", auth, body).status == 201  # something there to leak
    version = ledger.recorder.max_notification_id()
    guarded = [(template, method, path) for template, method, path in routes(app) if (template, method) not in OPEN]
    assert {template for template, _, _ in guarded} >= {"/orders", "/orders/{out_trade_no}", "/metrics"}
    for template, method, path in guarded:
        for credentials in BAD_CREDENTIALS:
            answer = client.request(method, path, credentials, body)
            assert answer.status == 401, (method, template, credentials)
            assert answer.headers["www-authenticate"] == "Bearer"
            if method != "HEAD":
                assert answer.json() == {"code": "UNAUTHORIZED", "message": "missing or wrong admin token"}
            assert b"ORDER-9001" not in answer.body and b"payledger_" not in answer.body
        ok = client.request(method, path, auth, body)
        assert ok.status != 401, (method, template)
    assert ledger.recorder.max_notification_id() == version, "an unauthorised request changed the log"


def test_the_open_routes_never_need_the_token(
    service: tuple[Any, InProcess, Ledger], factory: NotificationFactory
) -> None:
    app, client, _ = service
    assert {(t, m) for t, m, _ in routes(app)} >= OPEN
    delivery = factory.paid("ORDER-9002", 100)
    headers = [(k.lower().encode(), v.encode()) for k, v in delivery.headers.items()]
    for path in ("/wechatpay/notify", f"/wechatpay/notify/{MCHID}"):
        assert client.request("POST", path, headers, delivery.body).status == 204
        unsigned = client.request("POST", path, [], b"{}")
        assert (unsigned.status, unsigned.json()["code"]) == (401, "FAIL")  # the protocol's refusal, not ours
    for path in ("/wechatpay/v2/notify", f"/wechatpay/v2/notify/{MCHID}"):  # no WECHATPAY_V2_KEY here
        unsigned = client.request("POST", path, [], b"<xml><return_code>SUCCESS</return_code></xml>")
        assert (unsigned.status, unsigned.headers["content-type"]) == (401, "text/xml; charset=utf-8")
        assert b"FAIL" in unsigned.body
    assert client.request("GET", "/healthz").json() == {"status": "ok"}
    assert client.request("GET", "/openapi.json").json()["openapi"].startswith("3.1")


def test_readyz_is_open_and_says_only_ready(
    service: tuple[Any, InProcess, Ledger], factory: NotificationFactory
) -> None:
    _, client, _ = service
    delivery = factory.paid("ORDER-9003", 100)
    headers = [(k.lower().encode(), v.encode()) for k, v in delivery.headers.items()]
    assert client.request("POST", "/wechatpay/notify", headers, delivery.body).status == 204
    answer = client.request("GET", "/readyz")
    assert (answer.status, answer.json()) == (200, {"status": "ready"})


def test_paths_that_look_open_do_not_open_guarded_routes(service: tuple[Any, InProcess, Ledger]) -> None:
    _, client, _ = service
    for path in (
        "/wechatpay/notify/../../orders",
        "/wechatpay/notify/x/../../orders/ORDER-9001",
        "/wechatpay/v2/notify/../../../orders",
        "/healthz/../orders",
        "/orders/",
        "//orders",
        "/metrics/",
        "/readyz/../metrics",
    ):
        answer = client.request("GET", path)
        assert answer.status in (401, 404, 405, 307), path
        assert b"ORDER-" not in answer.body and b"payledger_" not in answer.body, path
