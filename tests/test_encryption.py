"""Encryption at rest (`LEDGER_ENCRYPTION_KEYS`): nothing readable in the store, every read path
still works, rotation keeps old events readable, a missing key is a clear error."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from eventsourcing.persistence import MapperDeserialisationError

from api.app import create_app
from ledger.application import Ledger, build_ledger
from ledger.audit.integrity import check_all
from ledger.domain import order_id
from ledger.errors import ConfigurationError, EventUndecryptable
from ledger.settings import Settings
from ledger.store.cipher import SETTING, key_id, parse_keys, stored_key_id
from ledger.store.reencrypt import reencrypt
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from projections.read_model.rebuild import rebuild_orders_view
from projections.read_model.runner import open_orders_view
from tests.support.constants import MCHID
from tests.support.servers import running
from tests.support.tamper import all_states, edit_state, stored_state


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def kid(key: str) -> str:
    return key_id(base64.b64decode(key))


@pytest.fixture
def record(factory: NotificationFactory) -> Callable[[Ledger, Delivery], None]:
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    return lambda ledger, d: ledger.record_notification(MCHID, verifier.verify(d.headers, d.body)) and None


def test_stored_states_hide_the_order_and_the_body_and_every_read_path_works(
    database_url: str,
    factory: NotificationFactory,
    merchant_env: dict[str, str],
    record: Callable[[Ledger, Delivery], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = new_key()
    monkeypatch.setenv(SETTING, key)
    ledger = build_ledger(database_url)
    try:
        ledger.register_order(MCHID, "SECRET-ORDER-1", 100)
        paid = factory.paid("SECRET-ORDER-1", 100)
        record(ledger, paid)
        record(ledger, factory.paid("SECRET-ORDER-2", 200))
        states = all_states(database_url)
        assert len(states) == 7 and all(stored_key_id(s) == kid(key) for s in states)
        for state in states:
            assert b"SECRET-ORDER" not in state and paid.body[:40] not in state and b"chain" not in state

        order = ledger.get_order(MCHID, "SECRET-ORDER-1")
        assert (order.trade_state, order.paid_total) == ("SUCCESS", 100)
        assert ledger.order_history(MCHID, "SECRET-ORDER-1")[2]["data"]["raw_body"].encode() == paid.body
        many = ledger.get_many([order_id(MCHID, "SECRET-ORDER-1"), order_id(MCHID, "SECRET-ORDER-2")])
        assert sorted(o.out_trade_no for o in many.values()) == ["SECRET-ORDER-1", "SECRET-ORDER-2"]
        report = check_all(ledger, {MCHID: factory.key_store()})
        assert report.ok and report.key_ids == {kid(key): 7}
    finally:
        ledger.close()

    summary = rebuild_orders_view(database_url)
    assert (summary.events, summary.orders) == (7, 2)
    view = open_orders_view(database_url, summary.new)
    try:
        row: Any = view.get(MCHID, "SECRET-ORDER-2")
        assert row["document"]["trade_state"] == "SUCCESS"
    finally:
        view.datastore.close()  # type: ignore[attr-defined]

    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": database_url})
    with running(create_app(settings)) as base, httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/orders/SECRET-ORDER-1").json()["paid_total"] == 100
        events = client.get("/orders/SECRET-ORDER-1/events").json()["events"]
        assert [e["type"] for e in events][-1] == "PaymentSucceeded" and all(len(e["chain"]) == 64 for e in events)


def test_after_rotation_old_events_stay_readable_and_new_ones_use_the_new_key(
    sqlite_url: str, factory: NotificationFactory, record: Callable[[Ledger, Delivery], None]
) -> None:
    old, new = new_key(), new_key()
    first = build_ledger(sqlite_url, {SETTING: old})
    first.register_order(MCHID, "ORDER-R1", 100)
    first.close()

    rotated = build_ledger(sqlite_url, {SETTING: f"{new},{old}"})
    try:
        record(rotated, factory.paid("ORDER-R1", 100))
        assert rotated.get_order(MCHID, "ORDER-R1").trade_state == "SUCCESS"
        assert stored_key_id(stored_state(sqlite_url, order_id(MCHID, "ORDER-R1"), 1)) == kid(old)
        assert stored_key_id(stored_state(sqlite_url, order_id(MCHID, "ORDER-R1"), 4)) == kid(new)
        report = check_all(rotated, {MCHID: factory.key_store()})
        assert report.ok and report.key_ids == {kid(old): 2, kid(new): 2}
    finally:
        rotated.close()


def test_a_missing_key_is_a_clear_error_at_start_up_and_on_read(sqlite_url: str) -> None:
    old, new = new_key(), new_key()
    ledger = build_ledger(sqlite_url, {SETTING: old})
    ledger.register_order(MCHID, "ORDER-M1", 100)
    ledger.close()

    for keys in ("", new):  # encryption switched off, or the old key dropped too early
        with pytest.raises(ConfigurationError) as exc:
            build_ledger(sqlite_url, {SETTING: keys})
        assert exc.value.setting == SETTING and kid(old) in exc.value.problem and old not in str(exc.value)

    rotated = build_ledger(sqlite_url, {SETTING: f"{new},{old}"})
    rotated.register_order(MCHID, "ORDER-M2", 100)  # the newest event now uses the new key
    rotated.close()
    dropped = build_ledger(sqlite_url, {SETTING: new})
    try:
        with pytest.raises(MapperDeserialisationError) as read:
            dropped.get_order(MCHID, "ORDER-M1")
        assert isinstance(read.value.__cause__, EventUndecryptable)
        assert f"encrypted with key {kid(old)}, which is not in {SETTING}" in str(read.value)
        report = check_all(dropped, {})
        assert [(b.version, b.problem) for b in report.breaks] == [
            (1, f"event does not decode: encrypted with key {kid(old)}, which is not in {SETTING}"),
            (2, f"event does not decode: encrypted with key {kid(old)}, which is not in {SETTING}"),
        ]
    finally:
        dropped.close()


def test_switching_encryption_on_keeps_plaintext_events_readable_and_altered_ciphertext_is_caught(
    sqlite_url: str, factory: NotificationFactory
) -> None:
    plain = build_ledger(sqlite_url)
    plain.register_order(MCHID, "ORDER-P1", 100)
    plain.close()
    key = new_key()
    ledger = build_ledger(sqlite_url, {SETTING: key})
    try:
        ledger.register_order(MCHID, "ORDER-P2", 100)
        assert ledger.get_order(MCHID, "ORDER-P1").amount_total == 100
        assert check_all(ledger, {}).key_ids == {"unencrypted": 2, kid(key): 2}
        flip = lambda b: b[:-1] + bytes([b[-1] ^ 1])  # noqa: E731
        edit_state(sqlite_url, order_id(MCHID, "ORDER-P2"), 2, flip)
        assert [(b.name, b.version, b.problem) for b in check_all(ledger, {}).breaks] == [
            (
                "ORDER-P2",
                2,
                f"event does not decode: does not decrypt with key {kid(key)}: the stored bytes were altered",
            )
        ]
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("not base64!", "key 1 of 1 is not base64"),
        (base64.b64encode(b"short").decode(), "key 1 of 1 is 5 bytes; AES-256 keys are 32 bytes"),
        ("{k},{k}", "key 2 of 2 is listed twice"),
    ],
)
def test_bad_keys_fail_at_start_up_naming_the_setting_and_never_showing_a_key(value: str, problem: str) -> None:
    key = new_key()
    value = value.replace("{k}", key)
    with pytest.raises(ConfigurationError) as exc:
        Settings.load({SETTING: value}, require_merchant=False)
    assert (exc.value.setting, exc.value.problem) == (SETTING, problem)
    with pytest.raises(ConfigurationError):
        parse_keys(value)


def test_keys_are_masked_in_settings_and_cipher_reprs(sqlite_url: str) -> None:
    key = new_key()
    settings = Settings.load({SETTING: key}, require_merchant=False)
    assert len(settings.encryption_keys) == 1 and key not in repr(settings) and key not in str(settings)
    assert key not in repr(settings.encryption_keys)
    ledger = build_ledger(sqlite_url, {SETTING: key})
    try:
        assert repr(ledger.mapper.cipher) == f"RotatingAESCipher(key_ids=['{kid(key)}'])"
    finally:
        ledger.close()


def test_reencrypt_moves_every_state_to_the_newest_key_so_the_old_one_can_retire(
    database_url: str, factory: NotificationFactory, record: Callable[[Ledger, Delivery], None]
) -> None:
    import subprocess
    import sys

    old, new = new_key(), new_key()
    plain = build_ledger(database_url)
    plain.register_order(MCHID, "ORDER-E0", 100)  # from before encryption was switched on
    plain.close()
    first = build_ledger(database_url, {SETTING: old})
    record(first, factory.paid("ORDER-E1", 100))
    first.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHATPAY_", "LEDGER_"))}
    env |= {"LEDGER_DATABASE_URL": database_url, SETTING: f"{new},{old}"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "reencrypt"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"re-encrypted 5 of 5 stored states with key {kid(new)}"
    assert old not in result.stdout + result.stderr and new not in result.stdout + result.stderr

    retired = build_ledger(database_url, {SETTING: new})
    try:
        assert retired.get_order(MCHID, "ORDER-E1").paid_total == 100
        assert retired.get_order(MCHID, "ORDER-E0").amount_total == 100
        report = check_all(retired, {MCHID: factory.key_store()})
        assert report.ok and report.key_ids == {kid(new): 5}  # the chains still hold
        assert reencrypt(retired).rewritten == 0  # nothing left to do
    finally:
        retired.close()


def test_reencrypt_counts_only_the_rows_it_rewrote(database_url: str) -> None:
    """A state changed by someone else meanwhile is left alone, and not counted as rewritten."""
    from ledger.domain import order_id
    from ledger.store.reencrypt import _update

    ledger = build_ledger(database_url)
    try:
        ledger.register_order(MCHID, "ORDER-E9", 100)
        first, second = ledger.recorder.select_events(order_id(MCHID, "ORDER-E9"))[:2]
        changes = [
            (first.originator_id, first.originator_version, b"not what is stored", b"replacement"),
            (second.originator_id, second.originator_version, second.state, second.state),
        ]
        assert _update(ledger, changes) == 1
        assert ledger.recorder.select_events(order_id(MCHID, "ORDER-E9"))[0].state == first.state
    finally:
        ledger.close()
