"""Store-backed metrics: what pauses them (and readiness), and counting that survives failures."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError
from prometheus_client.core import GaugeMetricFamily

from api.metrics import Guarded, StoreBreaker
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.log_counts import DecisionTally
from tests.support.constants import MCHID


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def collect(self) -> Iterable[GaugeMetricFamily]:
        raise self.exc


def test_only_the_store_being_away_pauses_store_backed_figures() -> None:
    now = [0.0]
    breaker = StoreBreaker(pause=10.0, clock=lambda: now[0])
    assert Guarded("outbox", Failing(ValueError("undecryptable event")), breaker).collect() == []  # type: ignore[arg-type]
    assert not breaker.is_open, "a collector's own problem must not make the replica unready"
    assert Guarded("orders", Failing(OperationalError("connection refused")), breaker).collect() == []  # type: ignore[arg-type]
    assert breaker.is_open
    now[0] = 11.0
    assert not breaker.is_open


def test_a_failure_half_way_through_the_anomalies_counts_nothing_twice(
    ledger_factory: Callable[[], Any], factory: NotificationFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledger_factory()
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    for no in ("ORDER-MG-1", "ORDER-MG-2"):  # two amount mismatches: two AnomalyDetected events
        ledger.register_order(MCHID, no, 100)
        d = factory.paid(no, 99)
        ledger.record_notification(MCHID, verifier.verify(d.headers, d.body))
    tally = DecisionTally(ledger)
    decode = ledger.mapper.to_domain_event
    calls = {"n": 0}

    def second_one_fails(stored: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OperationalError("the store went away mid-page")
        return decode(stored)

    monkeypatch.setattr(ledger.mapper, "to_domain_event", second_one_fails)
    with pytest.raises(OperationalError):
        tally.read()
    decisions, anomalies = tally.read()
    assert sum(anomalies.values()) == 2, anomalies
    assert decisions["PaymentSucceeded"] == 2 and decisions["AnomalyDetected"] == 2


def test_a_callback_not_stored_for_a_reason_of_ours_is_answered_500_and_counted(
    merchant_env: dict[str, str], sqlite_url: str, factory: NotificationFactory
) -> None:
    from api.app import create_app
    from ledger.settings import Settings
    from tests.support.inprocess import in_process

    app = create_app(Settings.load({**merchant_env, "LEDGER_DATABASE_URL": sqlite_url}), background=False)
    with in_process(app) as client:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug of ours")

        app.state.app_state.committer.submit_async = broken
        paid = factory.paid("ORDER-MG-9", 100)
        answer = client.request(
            "POST", "/wechatpay/notify", [(k.encode(), v.encode()) for k, v in paid.headers.items()], paid.body
        )
        metrics = client.request("GET", "/metrics").body.decode()
    assert answer.status == 500
    assert b"a bug of ours" not in answer.body
    assert 'payledger_notifications_total{outcome="error"} 1.0' in metrics
