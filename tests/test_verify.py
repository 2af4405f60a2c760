"""Tamper evidence: the chain, `verify` (function and the real `payledger verify`), on both stores."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.audit.integrity import check_all, check_order
from ledger.domain import inbox_id, order_id
from ledger.hashchain import GENESIS, event_fields, link
from ledger.wechatpay.keys import KeyStore
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.audit import ORDER, fill, problems
from tests.support.cli import clean_env, payledger
from tests.support.constants import MCHID
from tests.support.tamper import delete_event, edit_json, edit_state, rechain, stored_state


@pytest.fixture
def cli_env(merchant_env: dict[str, str], database_url: str) -> dict[str, str]:
    return {**clean_env(), **merchant_env, "LEDGER_DATABASE_URL": database_url}


def test_a_clean_ledger_verifies_every_chain_and_notification(
    ledger_factory: Callable[[], Ledger], factory: NotificationFactory, keys: dict[str, KeyStore]
) -> None:
    ledger = ledger_factory()
    notification_id = fill(ledger, factory)
    report = check_all(ledger, keys, page=3)  # small pages: streams straddle page boundaries
    assert report.ok, problems(report)
    assert (report.streams, report.notifications) == (3, 4)
    assert report.events == sum(
        len(ledger.history(s))
        for s in (order_id(MCHID, ORDER), order_id(MCHID, "ORDER-9002"), inbox_id(MCHID, notification_id))
    )
    one = check_order(ledger, keys, MCHID, ORDER)
    assert (one.ok, one.streams, one.events, one.notifications) == (True, 1, 6, 2)
    assert check_order(ledger, keys, MCHID, notification_id).events == 2  # an inbox stream by its id


def test_history_shows_a_chain_that_links_each_event_to_the_one_before(
    ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    fill(ledger, factory)
    history = ledger.order_history(MCHID, ORDER)
    stored = list(ledger.events.get(order_id(MCHID, ORDER)))
    previous = GENESIS
    for shown, event in zip(history, stored, strict=True):
        assert shown["chain"] == event.chain == link(previous, type(event), event_fields(event))
        assert "chain" not in shown["data"]
        previous = shown["chain"]
    assert len({e["chain"] for e in history}) == len(history)


def test_chains_survive_a_restart_and_identical_replays(
    ledger_factory: Callable[[], Ledger], factory: NotificationFactory, keys: dict[str, KeyStore]
) -> None:
    ledger = ledger_factory()
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    delivery = factory.paid(ORDER, 100)
    ledger.register_order(MCHID, ORDER, 100)
    ledger.record_notification(MCHID, verifier.verify(delivery.headers, delivery.body))
    before = [e["chain"] for e in ledger.order_history(MCHID, ORDER)]
    ledger.close()

    restarted = ledger_factory()
    assert [e["chain"] for e in restarted.order_history(MCHID, ORDER)] == before
    # The same delivery again (no event), then WeChat's re-signed retry (a new event chained on).
    restarted.record_notification(MCHID, verifier.verify(delivery.headers, delivery.body))
    retry = factory.deliver(delivery.body)
    restarted.record_notification(MCHID, verifier.verify(retry.headers, retry.body))
    after = restarted.order_history(MCHID, ORDER)
    assert [e["chain"] for e in after[: len(before)]] == before and len(after) == len(before) + 1
    assert check_all(restarted, keys).ok


def test_an_edited_amount_is_caught_by_verify_and_by_the_cli(
    ledger_factory: Callable[[], Ledger],
    factory: NotificationFactory,
    keys: dict[str, KeyStore],
    database_url: str,
    cli_env: dict[str, str],
) -> None:
    ledger = ledger_factory()
    fill(ledger, factory)
    assert payledger("verify", "--all", env=cli_env).returncode == 0
    assert ledger.order_history(MCHID, ORDER)[3]["type"] == "PaymentSucceeded"

    def pay_less(state: dict[str, Any]) -> None:
        assert state["amount_total"] == 100
        state["amount_total"] = 1

    edit_json(database_url, order_id(MCHID, ORDER), 4, pay_less)
    assert ledger.get_order(MCHID, ORDER).paid_total == 1  # the edit is live: only the chain tells
    assert problems(check_all(ledger, keys)) == [(ORDER, 4, "chain mismatch")]

    one = payledger("verify", ORDER, env=cli_env)
    assert one.returncode == 1
    assert f"BREAK order {ORDER} (mchid {MCHID}) version 4: chain mismatch" in one.stdout
    # With the merchant's settings the CLI also replays the evidence: the decision is wrong too.
    assert "version 4: PaymentSucceeded is not what its evidence decides" in one.stdout
    assert "2 breaks" in one.stdout.splitlines()[-1]
    every = payledger("verify", "--all", "--json", env=cli_env)
    assert every.returncode == 1, every.stderr
    answer = json.loads(every.stdout)
    assert answer["ok"] is False and answer["streams"] == 3
    assert [(b["kind"], b["name"], b["version"], b["problem"]) for b in answer["breaks"]] == [
        ("order", ORDER, 4, "chain mismatch"),
        ("order", ORDER, 4, "PaymentSucceeded is not what its evidence decides (PaymentSucceeded expected)"),
    ]
    assert answer["decisions"] >= 1


def test_a_deleted_middle_event_is_caught(
    ledger_factory: Callable[[], Ledger], factory: NotificationFactory, keys: dict[str, KeyStore], database_url: str
) -> None:
    ledger = ledger_factory()
    fill(ledger, factory)
    delete_event(database_url, order_id(MCHID, ORDER), 5)  # the refund's NotificationReceived
    assert problems(check_order(ledger, keys, MCHID, ORDER)) == [
        (ORDER, 6, "events missing before it (version 5)"),
        (ORDER, 6, "chain mismatch"),
    ]


def test_a_raw_body_that_no_longer_matches_its_signature_is_reported(
    ledger_factory: Callable[[], Ledger], factory: NotificationFactory, keys: dict[str, KeyStore], database_url: str
) -> None:
    ledger = ledger_factory()
    fill(ledger, factory)
    stream = order_id(MCHID, ORDER)

    def one_byte(state: dict[str, Any]) -> None:
        body = state["raw_body"]
        state["raw_body"] = body.replace('"id":"', '"id":"X', 1)
        assert state["raw_body"] != body

    edit_json(database_url, stream, 3, one_byte)
    assert problems(check_order(ledger, keys, MCHID, ORDER)) == [
        (ORDER, 3, "chain mismatch"),
        (ORDER, 3, "signature does not verify"),
    ]

    # An attacker who also recomputes every chain from there on still cannot re-sign the body.
    rechain(database_url, ledger, stream, 3)
    assert problems(check_order(ledger, keys, MCHID, ORDER)) == [(ORDER, 3, "signature does not verify")]


def test_a_stored_resource_that_is_not_what_the_signed_body_decrypts_to_is_reported(
    ledger_factory: Callable[[], Ledger], factory: NotificationFactory, keys: dict[str, KeyStore], database_url: str
) -> None:
    """An attacker who edits the decrypted resource (the amount) and recomputes every chain
    leaves the signed body alone: with the APIv3 key, verify decrypts it again and compares."""
    ledger = ledger_factory()
    fill(ledger, factory)
    stream = order_id(MCHID, ORDER)
    apiv3 = {MCHID: factory.apiv3_key.encode()}
    clean = check_order(ledger, keys, MCHID, ORDER, apiv3=apiv3)
    assert clean.ok and clean.resources == clean.notifications > 0 and clean.resources_unchecked == 0

    def richer(state: dict[str, Any]) -> None:
        state["resource"]["amount"]["total"] += 1000

    edit_json(database_url, stream, 3, richer)
    rechain(database_url, ledger, stream, 3)
    assert problems(check_order(ledger, keys, MCHID, ORDER)) == [], "without the APIv3 key it cannot tell"
    assert problems(check_order(ledger, keys, MCHID, ORDER, apiv3=apiv3)) == [
        (ORDER, 3, "stored resource is not what the signed body decrypts to")
    ]
    # After an APIv3 key reset old bodies no longer decrypt: not a break, but said.
    reset = check_order(ledger, keys, MCHID, ORDER, apiv3={MCHID: b"k" * 32})
    assert reset.ok and reset.resources == 0 and reset.resources_unchecked == reset.notifications


def test_unknown_keys_missing_chains_and_garbage_are_each_reported(
    ledger_factory: Callable[[], Ledger],
    factory: NotificationFactory,
    other_factory: NotificationFactory,
    keys: dict[str, KeyStore],
    database_url: str,
) -> None:
    ledger = ledger_factory()
    notification_id = fill(ledger, factory)
    public_key_id = next(iter(factory.key_store().public_keys))
    stranger = check_order(ledger, {MCHID: other_factory.key_store()}, MCHID, notification_id)
    assert problems(stranger) == [(notification_id, 2, f"key {public_key_id} not configured")]

    edit_json(database_url, order_id(MCHID, ORDER), 2, lambda s: s.pop("chain"))  # as stored before chains
    edit_state(database_url, order_id(MCHID, "ORDER-9002"), 1, lambda b: b[:-5])
    report = check_all(ledger, keys)
    assert problems(report) == [
        (ORDER, 2, "event has no chain"),
        ("", 1, "event does not decode: stored state is not a valid event"),
    ]
    assert str(report.breaks[1]).startswith(f"stream {order_id(MCHID, 'ORDER-9002')} version 1")
    assert stored_state(database_url, order_id(MCHID, ORDER), 3)  # the rest is untouched
