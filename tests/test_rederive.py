"""`verify` replays each order's evidence and checks that every stored decision follows from it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.audit import rederive
from ledger.audit.integrity import check_all, check_order
from ledger.domain import order_id
from ledger.wechatpay.keys import KeyStore
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.audit import ORDER, fill, problems
from tests.support.builders import query_answer
from tests.support.constants import APPID, MCHID
from tests.support.tamper import edit_json, rechain

APPIDS = {MCHID: APPID}


@pytest.fixture
def ledger(ledger_factory: Callable[[], Ledger], factory: NotificationFactory) -> Ledger:
    """A ledger holding ORDER and its neighbours (tests/support/audit.py)."""
    ledger = ledger_factory()
    fill(ledger, factory)
    return ledger


def _with_a_query(ledger: Ledger) -> None:
    ledger.record_query(
        MCHID,
        ORDER,
        query_answer({"out_trade_no": ORDER, "trade_state": "REFUND", "amount": {"total": 100}}),
        expected_appid=APPID,
    )


@pytest.mark.parametrize("shadows", [None, 1], ids=["all-in-memory", "one-shadow-resumed-from-the-store"])
def test_every_decision_of_a_clean_ledger_follows_from_its_evidence(
    ledger: Ledger, keys: dict[str, KeyStore], monkeypatch: pytest.MonkeyPatch, shadows: int | None
) -> None:
    if shadows is not None:  # streams interleave in the log: shadows are dropped and resumed
        monkeypatch.setattr(rederive, "SHADOWS", shadows)
    _with_a_query(ledger)
    report = check_all(ledger, keys, appids=APPIDS)
    assert report.ok, report.breaks
    decisions = [e for e in ledger.order_history(MCHID, ORDER) if e["type"] in ("PaymentSucceeded", "RefundSucceeded")]
    assert report.decisions >= len(decisions) + 1  # and ORDER-9002's anomaly
    assert check_order(ledger, keys, MCHID, ORDER, appids=APPIDS).ok


def test_a_decision_edited_with_its_chain_is_caught(
    ledger: Ledger, keys: dict[str, KeyStore], database_url: str
) -> None:
    stream = order_id(MCHID, ORDER)
    assert [e["type"] for e in ledger.order_history(MCHID, ORDER)][5] == "RefundSucceeded"

    def refund_more(state: dict[str, Any]) -> None:
        state["refund"] = 90

    edit_json(database_url, stream, 6, refund_more)
    rechain(database_url, ledger, stream, 6)
    assert ledger.get_order(MCHID, ORDER).refunded_total == 90  # the edit is live
    assert problems(check_all(ledger, keys)) == [], "the chain alone cannot tell"
    assert problems(check_all(ledger, keys, appids=APPIDS)) == [
        (ORDER, 6, "RefundSucceeded is not what its evidence decides (RefundSucceeded expected)")
    ]


def test_a_decision_cut_off_the_end_of_a_stream_is_caught(
    ledger: Ledger, keys: dict[str, KeyStore], database_url: str
) -> None:
    """A stream's last event deleted leaves every chain intact; the evidence still decides it."""
    from tests.support.tamper import delete_event

    history = ledger.order_history(MCHID, ORDER)
    last = history[-1]
    assert last["type"] == "RefundSucceeded" and history[-2]["type"] == "NotificationReceived"
    delete_event(database_url, order_id(MCHID, ORDER), last["version"])
    assert problems(check_all(ledger, keys)) == [], "the chain alone cannot tell"
    assert problems(check_all(ledger, keys, appids=APPIDS)) == [
        (ORDER, last["version"] - 1, "decision RefundSucceeded is missing")
    ]
    assert problems(check_order(ledger, keys, MCHID, ORDER, appids=APPIDS)) == [
        (ORDER, last["version"] - 1, "decision RefundSucceeded is missing")
    ]
