"""The outbox projection: decisions become messages exactly once, whatever is replayed or rebuilt."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.application import Ledger
from ledger.store.sql import Database
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.rebuild import rebuild_orders_view
from projections.webhooks.outbox import Outbox
from projections.webhooks.projection import open_outbox_view
from projections.webhooks.schema import outbox_url
from tests.support.constants import MCHID
from tests.support.projectors import project_until_caught_up, run_outbox


def pay_and_refund(ledger: Ledger, factory: NotificationFactory, no: str) -> None:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    ledger.register_order(MCHID, no, 100)
    for delivery in (factory.paid(no, 100), factory.refunded(no, f"R-{no}", 40, 100)):
        ledger.record_notification(MCHID, verifier.verify(delivery.headers, delivery.body))


def test_decisions_become_one_message_per_matching_endpoint(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory, outbox: Outbox
) -> None:
    ledger = ledger_factory()
    everything = outbox.endpoints.add("http://127.0.0.1:9/all")
    payments = outbox.endpoints.add("http://127.0.0.1:9/payments", events=["PaymentSucceeded"])
    pay_and_refund(ledger, factory, "ORDER-9401")
    run_outbox(database_url, ledger)
    messages = outbox.messages.newest(limit=100)
    by_endpoint = sorted((m.endpoint_id, m.event_type, m.stream_version) for m in messages)
    assert by_endpoint == sorted(
        [
            (everything.id, "PaymentSucceeded", 4),
            (everything.id, "RefundSucceeded", 6),
            (payments.id, "PaymentSucceeded", 4),
        ]
    )
    assert {m.state for m in messages} == {"pending"}


def test_replaying_the_log_or_rebuilding_the_view_queues_nothing_again_and_loses_nothing(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory, outbox: Outbox
) -> None:
    ledger = ledger_factory()
    endpoint = outbox.endpoints.add("http://127.0.0.1:9/all")
    pay_and_refund(ledger, factory, "ORDER-9402")
    run_outbox(database_url, ledger)
    project_until_caught_up(database_url, ledger)
    first = {m.id: m.state for m in outbox.messages.newest(limit=100)}
    assert len(first) == 2

    # Deliver one (as the dispatcher would), leave the other pending.
    delivered_id = next(iter(first))
    sqlite = outbox.database.dialect == "sqlite"
    table = "payledger_outbox" if sqlite else f'"{outbox.database.schema}".payledger_outbox'
    with outbox.database.transaction() as cur:
        cur.execute(f"UPDATE {table} SET state = 'delivered' WHERE id = {'?' if sqlite else '%s'}", (delivered_id,))

    rebuild_orders_view(database_url)  # the read model's rebuild never touches the outbox

    # Replay the whole log through the outbox projection from the start, as a rebuild would.
    view = open_outbox_view(database_url)
    tracking = "tracking" if sqlite else f'"{view.datastore.schema}".{view.tracking_table_name}'
    with view.transaction() as curs:  # resetting the position is what a replay means
        curs.execute(f"DELETE FROM {tracking}")
    view.datastore.close()
    run_outbox(database_url, ledger)

    after = {m.id: m.state for m in outbox.messages.newest(limit=100)}
    assert set(after) == set(first)  # nothing queued twice
    assert after[delivered_id] == "delivered"  # not to be sent again
    assert [state for mid, state in after.items() if mid != delivered_id] == ["pending"]  # not lost
    assert endpoint.id


def test_endpoints_from_the_configuration_file_are_synced(
    tmp_path: Path, merchant_env: dict[str, str], sqlite_url: str
) -> None:
    from ledger.settings import Settings
    from projections.webhooks.projection import sync_endpoints
    from projections.webhooks.signing import generate_secret

    secret = generate_secret()
    config = tmp_path / "ledger.toml"
    config.write_text(
        f'[[endpoints]]\nid = "erp"\nurl = "http://10.0.0.5:8080/wechat"\nsecret = "{secret}"\n'
        'events = ["PaymentSucceeded", "RefundSucceeded"]\n'
    )
    settings = Settings.load({**merchant_env, "LEDGER_CONFIG": str(config), "LEDGER_DATABASE_URL": sqlite_url})
    assert secret not in repr(settings)
    outbox = Outbox(Database(outbox_url(sqlite_url)))
    sync_endpoints(outbox, settings.endpoints)
    sync_endpoints(outbox, settings.endpoints)  # every start: idempotent
    [endpoint] = outbox.endpoints.all()
    assert (endpoint.id, endpoint.url, endpoint.event_types) == (
        "erp",
        "http://10.0.0.5:8080/wechat",
        ("PaymentSucceeded", "RefundSucceeded"),
    )
    assert outbox.endpoints.secrets("erp") == [secret]
    outbox.database.close()
    config.write_text('[[endpoints]]\nid = "erp"\nurl = "ftp://x"\nsecret = "nope"\n')
    from ledger.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as error:
        Settings.load({**merchant_env, "LEDGER_CONFIG": str(config), "LEDGER_DATABASE_URL": sqlite_url})
    assert error.value.setting == "LEDGER_CONFIG endpoints[0].url"


def test_refunds_asked_refused_and_closes_become_messages_for_business_systems(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory, outbox: Outbox
) -> None:
    """Issue 4/8: business systems hear of the refunds the ledger asked (and WeChat's refusals) and of its
    closes, not only of WeChat's decisions; WeChat's bare answers (RefundAnswered) stay in the history."""
    ledger = ledger_factory()
    everything = outbox.endpoints.add("http://127.0.0.1:9/all")
    pay_and_refund(ledger, factory, "ORDER-9402")
    at = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    key = ledger.get_order(MCHID, "ORDER-9402").key
    ask = {"refund": 10, "reason": "", "requested_by": "alice", "notify_url": None, "requested_at": at}
    ledger.change_order(key, lambda o: o.ask_refund(out_refund_no="R-ASKED", **ask))
    refusal = {"status_code": 403, "code": "NOT_ENOUGH", "message": "", "raw_body": "", "request_id": ""}
    ledger.change_order(key, lambda o: o.record_refund_rejection("R-ASKED", **refusal, answered_at=at))
    ledger.register_order(MCHID, "ORDER-9403", 100)
    closing = ledger.get_order(MCHID, "ORDER-9403").key
    ledger.change_order(closing, lambda o: o.close(requested_by="bob", status_code=204, request_id="", closed_at=at))
    run_outbox(database_url, ledger)
    sent = sorted(
        (m.out_trade_no, m.event_type) for m in outbox.messages.newest(limit=100) if m.endpoint_id == everything.id
    )
    assert sent == [
        ("ORDER-9402", "PaymentSucceeded"),
        ("ORDER-9402", "RefundRejected"),
        ("ORDER-9402", "RefundRequested"),
        ("ORDER-9402", "RefundSucceeded"),
        ("ORDER-9403", "OrderClosed"),
    ]
