"""Named operators (issue 6/8): the table, the login, the roles, and every action recorded as an event
naming who did it — on SQLite and PostgreSQL, through the real app."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.bootstrap import bootstrap
from api.ui.auth import COOKIE, AddressLimiter
from ledger.application import build_ledger
from ledger.errors import InvalidRequest, RequestConflict
from ledger.identity import OrderKey
from ledger.journal import OperatorJournal, beijing_day, journal_id
from ledger.operators import FAILURES_BEFORE_LOCK, LOCK_SECONDS, Operators, Role
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.cli import CLI, clean_env
from tests.support.constants import MCHID
from tests.support.projectors import project_until_caught_up, run_activity
from tests.support.servers import running

TOKEN = "operators-t0ken-for-the-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse battery"
NO = "OPS-0001"  # paid 90 against 100 registered: one amount_mismatch anomaly


@pytest.fixture
def operators(database_url: str) -> Iterator[Operators]:
    database = Database(database_url)
    try:
        yield Operators(database)
    finally:
        database.close()


# -- the table -------------------------------------------------------------------------------------


def test_an_operator_is_added_once_with_a_hash_never_the_password(operators: Operators, database_url: str) -> None:
    added = operators.add("li.wei", Role.OPERATOR, PASSWORD)
    assert (added.name, added.role, added.disabled, added.generation) == ("li.wei", Role.OPERATOR, False, 1)
    with pytest.raises(RequestConflict):
        operators.add("li.wei", Role.VIEWER, PASSWORD)
    database = Database(database_url)
    with database.transaction(write=False) as cur:
        cur.execute(f"SELECT password_hash FROM {database.qualify('payledger_operators')}")
        stored = cur.fetchone()[0]
    database.close()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert [op.name for op in operators.all()] == ["li.wei"]


@pytest.mark.parametrize(
    ("name", "password"),
    [("Li Wei", PASSWORD), ("", PASSWORD), ("admin-token", PASSWORD), ("x" * 33, PASSWORD), ("ok", "short")],
)
def test_names_and_passwords_are_checked(operators: Operators, name: str, password: str) -> None:
    with pytest.raises(InvalidRequest):
        operators.add(name, Role.VIEWER, password)
    assert operators.all() == []


def test_authenticate_and_an_account_locks_after_repeated_failures(database_url: str) -> None:
    now = [1_000_000.0]
    database = Database(database_url)
    operators = Operators(database, clock=lambda: now[0])
    operators.add("amy", Role.VIEWER, PASSWORD)
    assert operators.authenticate("amy", PASSWORD).operator is not None
    assert operators.authenticate("nobody", PASSWORD).operator is None
    for _ in range(FAILURES_BEFORE_LOCK - 1):
        assert operators.authenticate("amy", "wrong password!").locked_for == 0
    assert operators.authenticate("amy", "wrong password!").locked_for == LOCK_SECONDS
    # Locked: even the right password is refused, without being checked, until the lock ends.
    refused = operators.authenticate("amy", PASSWORD)
    assert refused.operator is None and refused.locked_for == LOCK_SECONDS
    now[0] += LOCK_SECONDS + 1
    assert operators.authenticate("amy", PASSWORD).operator is not None
    operators.disable("amy")
    assert operators.authenticate("amy", PASSWORD).operator is None
    database.close()


def test_the_address_limiter_counts_failures_in_a_window() -> None:
    now = [0.0]
    limiter = AddressLimiter(failures=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.wait("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.wait("10.0.0.1") == 60 and limiter.wait("10.0.0.2") == 0
    now[0] = 61
    assert limiter.wait("10.0.0.1") == 0


# -- the console, through the real app ------------------------------------------------------------


@dataclass
class Console:
    client: httpx.Client
    url: str
    settings: Settings

    def login(self, name: str, password: str = PASSWORD) -> httpx.Response:
        return self.client.post("/ui/login", data={"name": name, "password": password, "next": "/ui/"})

    def session(self, name: str, password: str = PASSWORD) -> str:
        response = self.login(name, password)
        assert response.status_code == 303, response.text
        match = re.search(rf"{COOKIE}=([^;]+)", response.headers["set-cookie"])
        assert match is not None
        return match.group(1)

    def get(self, path: str, session: str) -> httpx.Response:
        return self.client.get(path, headers={"Cookie": f"{COOKIE}={session}"})

    def post(self, path: str, session: str, **form: str) -> httpx.Response:
        page = self.get(f"/ui/orders/{NO}", session).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        return self.client.post(path, data={"csrf": csrf.group(1), **form}, headers={"Cookie": f"{COOKIE}={session}"})

    def events(self) -> list[dict[str, Any]]:
        response = self.client.get(f"/orders/{NO}/events", headers=BEARER)
        assert response.status_code == 200
        return response.json()["events"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def console(merchant_env: dict[str, str], url: str, factory: NotificationFactory) -> Iterator[Console]:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": url, "LEDGER_ADMIN_TOKEN": TOKEN})
    with (
        running(create_app(settings, background=False)) as base,
        httpx.Client(base_url=base, timeout=10, follow_redirects=False) as client,
    ):
        assert client.post("/orders", json={"out_trade_no": NO, "amount_total": 100}, headers=BEARER).status_code == 201
        paid = factory.paid(NO, 90)
        assert client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
        database = Database(url)
        operators = Operators(database)
        for name, role in (("vera", Role.VIEWER), ("otto", Role.OPERATOR), ("ada", Role.ADMIN)):
            operators.add(name, role, PASSWORD)
        database.close()
        yield Console(client, url, settings)


@pytest.fixture
def ops(merchant_env: dict[str, str], database_url: str, factory: NotificationFactory) -> Iterator[Console]:
    with console(merchant_env, database_url, factory) as made:
        yield made


def test_a_viewer_sees_orders_but_no_action_and_a_forged_post_is_403(ops: Console) -> None:
    vera = ops.session("vera")
    page = ops.get(f"/ui/orders/{NO}", vera)
    assert page.status_code == 200 and NO in page.text and 'id="who"' in page.text and "vera · viewer" in page.text
    assert "/query?" not in page.text and 'id="refund-form"' not in page.text and 'id="close-form"' not in page.text
    before = len(ops.events())
    for action in ("query", "refund", "close"):
        forged = ops.post(f"/ui/orders/{NO}/{action}", vera, amount="1", out_refund_no="R1", confirm="yes")
        assert forged.status_code == 403 and "may not do this" in forged.text
    assert len(ops.events()) == before  # nothing was recorded, nothing asked


def test_an_operator_acknowledges_an_anomaly_and_the_history_names_them(ops: Console) -> None:
    services = bootstrap(ops.settings)
    try:
        key = OrderKey(MCHID, NO)
        order = services.ledger.get_order(MCHID, NO)
        assert order.open_anomalies == 1
        anomaly = order.anomalies[0]["key"]
        assert services.actions.acknowledge(key, anomaly, note="金额差 10 fen, refunded by phone", operator="otto")
        assert not services.actions.acknowledge(key, anomaly, note="again", operator="otto")
        with pytest.raises(InvalidRequest):
            services.actions.acknowledge(key, "no-such-anomaly", note="", operator="otto")
        acked = services.ledger.get_order(MCHID, NO)
        assert acked.open_anomalies == 0 and acked.summary()["anomalies"][0]["acknowledged"]["operator"] == "otto"
        project_until_caught_up(ops.url, services.ledger)
        row = services.orders_view.current().get(MCHID, NO)
        assert row is not None and (row["anomalies"], row["open_anomalies"]) == (1, 0)
    finally:
        services.close()
    last = ops.events()[-1]
    assert last["type"] == "AnomalyAcknowledged" and last["data"]["operator"] == "otto"
    assert last["data"]["note"] == "金额差 10 fen, refunded by phone"


def test_operator_actions_on_no_single_order_go_to_their_journal_of_the_day(ops: Console) -> None:
    services = bootstrap(ops.settings)
    try:
        endpoint = services.outbox.endpoints.add("https://erp.example.com/hooks")
        assert services.actions.set_endpoint(endpoint.id, enabled=False, operator="ada", reason="maintenance")
        assert not services.actions.set_endpoint(endpoint.id, enabled=False, operator="ada")  # nothing changed
        assert services.actions.set_endpoint(endpoint.id, enabled=True, operator="ada")
        now = dt.datetime.now(dt.UTC)
        services.actions.recover(now - dt.timedelta(hours=1), now, operator="otto")
        ada: Any = services.ledger.repository.get(journal_id("ada", beijing_day(now)))
        otto: Any = services.ledger.repository.get(journal_id("otto", beijing_day(now)))
        assert isinstance(ada, OperatorJournal) and (ada.operator, ada.actions) == ("ada", 2)
        assert isinstance(otto, OperatorJournal) and otto.actions == 1
        # Every stream, journals and operator events included, still verifies.
        report = services.audit_all()
        assert report.ok, report.summary()
    finally:
        services.close()


def test_the_activity_page_lists_who_did_what_newest_first(ops: Console) -> None:
    services = bootstrap(ops.settings)
    try:
        key = OrderKey(MCHID, NO)
        anomaly = services.ledger.get_order(MCHID, NO).anomalies[0]["key"]
        services.actions.acknowledge(key, anomaly, note="checked with finance", operator="otto")
        endpoint = services.outbox.endpoints.add("https://erp.example.com/hooks")
        services.actions.set_endpoint(endpoint.id, enabled=False, operator="ada", reason="maintenance")
        run_activity(ops.url, services.ledger)
    finally:
        services.close()
    vera = ops.session("vera")
    page = ops.get("/ui/activity", vera)
    assert page.status_code == 200
    rows = re.findall(
        r'<tr data-action="([a-z_]+)">\s*<td><time datetime="[^"]+">[^<]+ \+08:00</time></td>\s*<td><strong>([a-z-]+)</strong>',
        page.text,
    )
    assert rows == [("endpoint_disabled", "ada"), ("anomaly_acknowledged", "otto")]
    assert "checked with finance" in page.text and f"/ui/orders/{NO}?mchid={MCHID}" in page.text
    only = ops.get("/ui/activity?operator=otto", vera).text
    assert "anomaly_acknowledged" in only and 'data-action="endpoint_disabled"' not in only
    assert ops.get("/ui/activity?action=drop_tables", vera).status_code == 400


def test_disabling_or_a_new_password_ends_the_operators_sessions(ops: Console) -> None:
    otto = ops.session("otto")
    assert ops.get("/ui/", otto).status_code == 200
    database = Database(ops.url)
    operators = Operators(database)
    operators.set_password("otto", "a brand new passphrase")
    assert ops.get("/ui/", otto).status_code == 401
    otto = ops.session("otto", "a brand new passphrase")
    assert ops.get("/ui/", otto).status_code == 200
    operators.disable("otto")
    assert ops.get("/ui/", otto).status_code == 401
    refused = ops.login("otto", "a brand new passphrase")
    assert refused.status_code == 401 and "set-cookie" not in refused.headers  # the form again, no session
    database.close()


def test_failed_logins_trip_the_account_lock_and_the_address_limit(ops: Console) -> None:
    for _ in range(FAILURES_BEFORE_LOCK - 1):
        wrong = ops.login("ada", "not her password")
        assert wrong.status_code == 401 and "do not match" in wrong.text and "set-cookie" not in wrong.headers
    locked = ops.login("ada", "not her password")
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= LOCK_SECONDS
    assert ops.login("ada", PASSWORD).status_code == 429  # the right password waits for the lock too
    # Other names from the same address: the address limit (10 failures) trips as well.
    statuses = [ops.login(f"nobody{i}", "whatever it is").status_code for i in range(6)]
    assert statuses[-1] == 429 and 429 in statuses
    assert ops.client.post("/ui/login", data={"token": TOKEN, "next": "/ui/"}).status_code == 429


def test_the_admin_token_still_logs_in_and_acts_as_admin_token(ops: Console) -> None:
    response = ops.client.post("/ui/login", data={"token": TOKEN, "next": f"/ui/orders/{NO}"})
    assert response.status_code == 303
    assert ops.client.get(f"/ui/orders/{NO}", headers=BEARER).status_code == 200


# -- the command line ------------------------------------------------------------------------------


def _payledger(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def test_the_operators_command(database_url: str) -> None:
    env = {**clean_env(), "LEDGER_DATABASE_URL": database_url}
    added = _payledger(env, "operators", "add", "mei", "--role", "operator", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "mei added (operator)" in added.stdout and PASSWORD not in added.stdout + added.stderr
    again = _payledger(env, "operators", "add", "mei", "--role", "viewer", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "exists" in again.stderr
    short = _payledger(env, "operators", "add", "kai", "--role", "viewer", stdin="short\n")
    assert short.returncode == 1 and "12 to 1024" in short.stderr
    assert _payledger(env, "operators", "disable", "mei").returncode == 0
    listed = _payledger(env, "operators", "list", "--json")
    assert listed.returncode == 0
    assert [(o["name"], o["role"], o["disabled"]) for o in json.loads(listed.stdout)] == [("mei", "operator", True)]
    database = Database(database_url)
    assert Operators(database).authenticate("mei", PASSWORD).operator is None  # disabled
    database.close()


def test_the_history_keeps_every_operator_event_through_a_replay(database_url: str) -> None:
    ledger = build_ledger(database_url)
    try:
        order, _ = ledger.register_order(MCHID, "OPS-0002", 100, "CNY", "tea")
        ledger.change_order(
            order.key,
            lambda o: o.note_operator_action(
                "resend", operator="otto", detail={"message_id": "msg_1"}, at=dt.datetime.now(dt.UTC)
            ),
        )
        replayed = ledger.get_order(MCHID, "OPS-0002")
        assert replayed.operator_actions[0]["operator"] == "otto"
        assert [e["type"] for e in ledger.order_history(MCHID, "OPS-0002")][-1] == "OperatorActed"
    finally:
        ledger.close()
