"""GET /metrics through the real app: every figure moves by exactly what was done.

Per-request figures (notification outcomes, answer latency, query outcomes) are the replica's
own; store figures (decisions, anomalies, lag, outbound attempts, dead letters) are read from
the store, so a second app on the same store reports the same.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import NOTIFICATION_OUTCOMES
from ledger.bill_matching import DiscrepancyKind
from ledger.settings import Settings
from ledger.store.cipher import SETTING as ENCRYPTION_KEYS
from ledger.store.cipher import stored_key_id
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.server import Sandbox
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.bills.reports import REPORT_STATUSES
from projections.webhooks.dispatcher import Dispatcher
from projections.webhooks.outbox import Outbox
from projections.webhooks.records import Attempt
from projections.webhooks.schema import outbox_url
from projections.webhooks.stats import ATTEMPT_RESULTS
from tests.support.bill_world import a_day_with_a_refund, beijing_midnight, bill_world, today
from tests.support.constants import MCHID
from tests.support.fakes import FakeClock, Receiver
from tests.support.servers import post, running, service, through_proxy
from tests.support.tamper import all_states
from tests.support.webhooks import decide

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample, which must be there (a metric missing from a scrape is a failure, not a 0)."""
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_notification_outcome_is_counted_once_and_every_answer_is_timed(
    database_url: str,
    merchant_env: dict[str, str],
    factory: NotificationFactory,
    other_factory: NotificationFactory,
) -> None:
    now = int(time.time())
    paid = factory.paid("ORDER-7001", 100)
    other_body = factory.envelope(factory.transaction("ORDER-7002", 100))
    sent = {
        "accepted": (paid, 204),
        "duplicate": (paid, 204),  # the same bytes again
        "probe": (factory.probe(factory.paid("ORDER-7003", 100)), 401),
        "bad_signature": (other_factory.deliver(other_body, serial=factory.public_key_id), 401),
        "stale": (factory.deliver(other_body, timestamp=now - 3600), 401),
        "unknown_serial": (factory.deliver(other_body, serial="PUB_KEY_ID_" + "7" * 30), 401),
        "malformed": (factory.deliver(b'{"id":"n-7005","event_type":"TRANSACTION.SUCCESS"}'), 400),
        "decrypt_failure": (
            factory.deliver(factory.envelope(factory.transaction("ORDER-7006", 100), apiv3_key="X" * 32)),
            500,
        ),
    }
    with service(merchant_env, database_url, LEDGER_MAX_BODY_BYTES="2048") as (client, _):
        before = scrape(client)
        assert {value(before, "payledger_notifications_total", outcome=o) for o in NOTIFICATION_OUTCOMES} == {0.0}
        for outcome, (delivery, status) in sent.items():
            assert post(client, delivery) == status, outcome
        big = factory.deliver(factory.envelope({**factory.transaction("ORDER-7007", 100), "attach": "x" * 3000}))
        assert post(client, big) == 413
        assert post(client, paid, "/wechatpay/notify/1999999999") == 404
        after = scrape(client)
    expected = dict.fromkeys(NOTIFICATION_OUTCOMES, 0) | dict.fromkeys(sent, 1)
    expected |= {"too_large": 1, "unknown_merchant": 1}
    counted = {
        o: value(after, "payledger_notifications_total", outcome=o)
        - value(before, "payledger_notifications_total", outcome=o)
        for o in NOTIFICATION_OUTCOMES
    }
    assert counted == expected
    answers = value(after, "payledger_notification_answer_seconds_count") - value(
        before, "payledger_notification_answer_seconds_count"
    )
    assert answers == len(sent) + 2
    within_5s = value(after, "payledger_notification_answer_seconds_bucket", le="5.0") - value(
        before, "payledger_notification_answer_seconds_bucket", le="5.0"
    )
    assert within_5s == answers
    assert value(after, "payledger_notification_answer_seconds_sum") > value(
        before, "payledger_notification_answer_seconds_sum"
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_a_store_that_goes_away_is_counted_and_metrics_still_answer(
    postgres_url: str, merchant_env: dict[str, str], factory: NotificationFactory
) -> None:
    proxy, proxied = through_proxy(postgres_url)
    with service(merchant_env, proxied) as (client, _):
        assert post(client, factory.paid("ORDER-7101", 100)) == 204
        assert client.get("/readyz").status_code == 200
        proxy.cut()
        assert post(client, factory.paid("ORDER-7102", 100)) == 503
        ready = client.get("/readyz")
        samples = scrape(client)
        assert client.get("/healthz").status_code == 200
    assert (ready.status_code, ready.json()) == (503, {"code": "NOT_READY", "message": "store unavailable"})
    assert value(samples, "payledger_notifications_total", outcome="store_unavailable") == 1
    assert value(samples, "payledger_notifications_total", outcome="accepted") == 1
    assert not any(name == "payledger_decisions_total" for name, _ in samples), "store figures are left out, not 0"


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_decisions_by_type_and_anomalies_by_kind_come_from_the_log_for_every_replica(
    database_url: str,
    merchant_env: dict[str, str],
    factory: NotificationFactory,
    encrypted: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if encrypted:  # an anomaly's kind is inside the stored state: read through the mapper
        monkeypatch.setenv(ENCRYPTION_KEYS, base64.b64encode(os.urandom(32)).decode())
    with service(merchant_env, database_url) as (client, _):
        before = scrape(client)
        for no in ("ORDER-7201", "ORDER-7202"):
            assert client.post("/orders", json={"out_trade_no": no, "amount_total": 100}).status_code == 201
        assert post(client, factory.paid("ORDER-7201", 100)) == 204
        assert post(client, factory.paid("ORDER-7202", 90)) == 204  # not what was registered
        assert post(client, factory.refunded("ORDER-7201", "REFUND-7201", 30, 100)) == 204
        after = scrape(client)
        with service(merchant_env, database_url) as (second, _):
            other_replica = scrape(second)
    states = all_states(database_url)
    assert states and all((stored_key_id(state) is not None) == encrypted for state in states)
    decided = {
        t: value(after, "payledger_decisions_total", type=t) - value(before, "payledger_decisions_total", type=t)
        for t in ("PaymentSucceeded", "RefundSucceeded", "RefundClosed", "RefundAbnormal", "AnomalyDetected")
    }
    assert decided == {
        "PaymentSucceeded": 2,
        "RefundSucceeded": 1,
        "RefundClosed": 0,
        "RefundAbnormal": 0,
        "AnomalyDetected": 1,
    }
    assert value(after, "payledger_anomalies_total", kind="amount_mismatch") == 1
    assert ("payledger_anomalies_total", (("kind", "amount_mismatch"),)) not in before
    for name in ("payledger_decisions_total", "payledger_anomalies_total", "payledger_log_position"):
        mine = {k: v for k, v in after.items() if k[0] == name}
        assert mine and mine == {k: v for k, v in other_replica.items() if k[0] == name}, name


def test_bill_differences_and_each_merchants_last_reconciled_day_come_from_the_kept_reports(
    tmp_path: Path, database_url: str
) -> None:
    yesterday = today() - dt.timedelta(days=1)
    with bill_world(tmp_path, database_url) as w:
        before = scrape(w.client)
        w.sandbox.set_bill_fault(yesterday, "not_ready")
        assert w.reconcile(yesterday).status_code == 502
        not_ready = scrape(w.client)
        a_day_with_a_refund(w)
        w.pay_unnoticed("BILL-ORDER-3", 5000)  # missing_in_ledger, queried at once: resolved
        w.sandbox.set_bill_fault(today(), "amount_changed")  # amount_mismatch on BILL-ORDER-1
        assert w.reconcile().json()["status"] == "discrepancies"
        after = scrape(w.client)

    kinds = [str(kind) for kind in DiscrepancyKind]
    for kind in kinds:
        for resolved in ("false", "true"):
            assert value(before, "payledger_bill_discrepancies", kind=kind, resolved=resolved) == 0
    found = {
        (kind, resolved): value(after, "payledger_bill_discrepancies", kind=kind, resolved=resolved)
        for kind in kinds
        for resolved in ("false", "true")
    }
    assert found == {
        ("amount_mismatch", "false"): 1,
        ("amount_mismatch", "true"): 0,
        ("missing_in_bill", "false"): 0,
        ("missing_in_bill", "true"): 0,
        ("missing_in_ledger", "false"): 0,
        ("missing_in_ledger", "true"): 1,
    }

    def days(samples: Samples) -> dict[str, float]:
        return {dict(k[1])["mchid"]: v for k, v in samples.items() if k[0] == "payledger_bill_last_reconciled_day"}

    def statuses(samples: Samples) -> dict[str, float]:
        return {
            dict(k[1])["status"]: v
            for k, v in samples.items()
            if k[0] == "payledger_bill_latest_status" and dict(k[1])["mchid"] == MCHID
        }

    assert days(before) == days(not_ready) == {}, "a day whose bill was never had is not a reconciled day"
    assert days(after) == {MCHID: beijing_midnight(today())}
    assert statuses(before) == {}
    assert statuses(not_ready) == {status: float(status == "not_ready") for status in REPORT_STATUSES}
    assert statuses(after) == {status: float(status == "discrepancies") for status in REPORT_STATUSES}


def test_query_outcomes_are_counted_by_outcome_and_wechat_code(tmp_path: Path) -> None:
    sandbox = Sandbox(seed=7, time_scale=1000)
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        env["LEDGER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        with (
            running(create_app(Settings.load(env), background=False)) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            sandbox.create_order("ORDER-7301", 100)
            client.post("/orders", json={"out_trade_no": "ORDER-7301", "amount_total": 100})
            sandbox.pay("ORDER-7301", drop=True)
            before = scrape(client)
            assert client.post("/orders/ORDER-7301/query").status_code == 200
            sandbox.probe_next_response()
            assert client.post("/orders/ORDER-7301/query").status_code == 502
            assert client.post("/orders/ORDER-7399/query").status_code == 502
            sandbox.fail_next(10, status=503)
            assert client.post("/orders/ORDER-7301/query").status_code == 502
            after = scrape(client)

    def delta(outcome: str, code: str = "") -> float:
        now = value(after, "payledger_queries_total", outcome=outcome, code=code)
        return now - before.get(("payledger_queries_total", (("code", code), ("outcome", outcome))), 0.0)

    assert (delta("recorded"), delta("untrusted"), delta("unavailable"), delta("rejected", "ORDER_NOT_EXIST")) == (
        1,
        1,
        1,
        1,
    )
    assert delta("not_configured") == 0


def test_outbound_attempts_by_result_and_dead_letters_as_any_dispatcher_left_them(
    database_url: str,
    merchant_env: dict[str, str],
    receiver: Receiver,
) -> None:
    outbox = Outbox(Database(outbox_url(database_url)))
    endpoint = outbox.endpoints.add(receiver.url + "/hook")
    # An hour ago: these attempts are old enough to be remembered rather than recounted.
    clock = FakeClock(time.time() - 3600)
    dispatcher = Dispatcher(outbox, schedule=(1.0,), clock=clock, workers=1, jitter=0.0)
    try:
        with service(merchant_env, database_url) as (client, _):
            before = scrape(client)
            assert value(before, "payledger_webhook_dead_letters") == 0
            receiver.answer = lambda hit: (500, {}, 0.0)
            decide(outbox, 1, at=clock())
            assert dispatcher.run_once() == 1
            clock.advance(2)
            assert dispatcher.run_once() == 1  # the schedule is exhausted: dead
            first = scrape(client)
            receiver.answer = lambda hit: (200, {}, 0.0)
            clock.now = time.time()
            decide(outbox, 2, at=clock())
            assert dispatcher.run_once() == 1
            outbox.leases.record_attempt("msg_x", Attempt(time.time(), None, 1.0, "", "ConnectError: refused"))
            outbox.leases.record_attempt("msg_x", Attempt(time.time(), None, 1.0, "", "timeout"))
            outbox.leases.record_attempt("msg_x", Attempt(time.time(), 404, 1.0, "", None))
            outbox.leases.record_attempt("msg_x", Attempt(time.time(), 302, 1.0, "", "redirect not followed"))
            second = scrape(client)
            third = scrape(client)
    finally:
        dispatcher.close()
        outbox.database.close()
    assert endpoint.enabled

    def attempts(samples: Samples) -> dict[str, float]:
        return {r: value(samples, "payledger_webhook_attempts_total", result=r) for r in ATTEMPT_RESULTS}

    zero = dict.fromkeys(ATTEMPT_RESULTS, 0.0)
    assert attempts(before) == zero
    assert attempts(first) == zero | {"http_5xx": 2}
    assert value(first, "payledger_webhook_dead_letters") == 1
    assert value(first, "payledger_outbox_messages", state="dead") == 1
    expected = zero | {"http_5xx": 2, "delivered": 1, "network_error": 1, "timeout": 1, "http_4xx": 1, "redirect": 1}
    assert attempts(second) == expected
    assert attempts(third) == expected, "a second scrape counts nothing twice"
    assert value(third, "payledger_webhook_dead_letters") == 1
    assert value(third, "payledger_outbox_messages", state="pending") == 0


def test_projection_lag_counts_only_the_events_each_projection_follows(
    database_url: str, merchant_env: dict[str, str], factory: NotificationFactory
) -> None:
    with service(merchant_env, database_url) as (client, ledger):
        client.post("/orders", json={"out_trade_no": "ORDER-7401", "amount_total": 100})
        registered = scrape(client)
        assert post(client, factory.paid("ORDER-7401", 100)) == 204
        paid = scrape(client)
        head = ledger.recorder.max_notification_id()
    # Opened + Registered; then NotificationReceived + PaymentSucceeded, of which the outbox follows one.
    assert value(registered, "payledger_projection_lag_events", projection="orders_view") == 2
    assert value(registered, "payledger_projection_lag_events", projection="outbox") == 0
    assert value(paid, "payledger_projection_lag_events", projection="orders_view") == 4
    assert value(paid, "payledger_projection_lag_events", projection="outbox") == 1
    assert value(paid, "payledger_log_position") == head
