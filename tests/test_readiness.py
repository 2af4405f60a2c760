"""GET /healthz and GET /readyz: alive, and ready only when the store answers and projections keep up."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from ledger.application import Ledger
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.log_counts import unprocessed
from projections.webhooks.projection import OutboxProjection
from tests.support.projectors import project_until_caught_up, run_outbox
from tests.support.servers import post, service


def ready(client: httpx.Client) -> tuple[int, dict[str, object]]:
    response = client.get("/readyz")
    return response.status_code, response.json()


def pay(client: httpx.Client, factory: NotificationFactory, *out_trade_nos: str) -> None:
    """WeChat Pay notifies a payment of 100 for each order, and each is acknowledged."""
    for no in out_trade_nos:
        assert post(client, factory.paid(no, 100)) == 204


def lags(client: httpx.Client) -> dict[str, int]:
    """Each projection's lag as /metrics reports it (the open /readyz says only ready or not)."""
    text = client.get("/metrics").text
    return {
        name: int(float(v))
        for name, v in re.findall(r'payledger_projection_lag_events\{projection="(\w+)"\} (\S+)', text)
    }


def test_readyz_names_the_projection_that_lags_beyond_the_bound_until_it_catches_up(
    database_url: str, merchant_env: dict[str, str], factory: NotificationFactory
) -> None:
    with service(merchant_env, database_url, LEDGER_READY_MAX_LAG="1") as (client, ledger):
        assert ready(client) == (200, {"status": "ready"})
        client.post("/orders", json={"out_trade_no": "ORDER-7601", "amount_total": 100})
        assert ready(client) == (503, {"code": "NOT_READY", "message": "projection orders_view is lagging"})
        assert client.get("/healthz").json() == {"status": "ok"}, "alive whatever the lag"
        project_until_caught_up(database_url, ledger)
        assert ready(client)[0] == 200
        pay(client, factory, "ORDER-7601", "ORDER-7602")
        project_until_caught_up(database_url, ledger)
        # Both payments are decisions the outbox has not turned into messages yet.
        assert ready(client) == (503, {"code": "NOT_READY", "message": "projection outbox is lagging"})
        run_outbox(database_url, ledger)
        assert ready(client) == (200, {"status": "ready"})
        assert lags(client) == {"orders_view": 0, "outbox": 0, "notifications_view": 0, "activity_view": 0}


@pytest.fixture
def backlog(
    database_url: str, merchant_env: dict[str, str], factory: NotificationFactory
) -> Iterator[tuple[httpx.Client, Ledger]]:
    """The service after three payments, with no projection run: 9 events behind the orders
    view, 3 decisions behind the outbox."""
    with service(merchant_env, database_url) as (client, ledger):
        pay(client, factory, "ORDER-7700", "ORDER-7701", "ORDER-7702")
        yield client, ledger


def test_the_default_bound_tolerates_an_ordinary_backlog(backlog: tuple[httpx.Client, Ledger]) -> None:
    client, _ = backlog
    assert ready(client) == (200, {"status": "ready"})
    assert lags(client) == {"orders_view": 9, "outbox": 3, "notifications_view": 0, "activity_view": 0}


def test_lag_is_counted_exactly_up_to_a_cap_and_bounded_above_beyond_it(backlog: tuple[httpx.Client, Ledger]) -> None:
    _, ledger = backlog
    head = ledger.recorder.max_notification_id()
    decisions = OutboxProjection.topics
    counted = [unprocessed(ledger, 0, head, decisions, cap) for cap in (10, 4, 3, 2)]
    assert unprocessed(ledger, head, head, decisions) == 0
    # 3 payments among 9 events: exact below the cap; at or above it, the span of the log.
    assert counted == [3, 3, head, head]
