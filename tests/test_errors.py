"""The one exception → answer table (api/errors.py), and the notification failures that come before verification.

The table is what the app's handlers, the notification endpoint and the operator pages answer
with; these tests hold it to the metrics (every refusal is counted under an outcome /metrics
knows), to the OpenAPI description (every code it answers is documented), and to the rule that
an answer never carries exception text unless that text is our own sentence.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import ledger.errors
from api.app import create_app
from api.errors import ANSWERS, UNEXPECTED, answer_for
from api.metrics import NOTIFICATION_OUTCOMES
from api.openapi_schemas import SCHEMAS
from ledger.errors import (
    ClientGone,
    DuplicateSignatureHeader,
    InvalidRequest,
    LedgerError,
    NotificationRejected,
    OrderNotFound,
    UnknownMerchant,
    VerificationFailed,
    WeChatPayRejected,
    WeChatPayUnavailable,
)
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from tests.support.inprocess import Answer, InProcess, Receive, in_process

ERRORS = [getattr(ledger.errors, name) for name in ledger.errors.__all__]
REFUSALS = [cls for cls in ERRORS if issubclass(cls, NotificationRejected) and cls is not NotificationRejected]


@pytest.mark.parametrize("cls", REFUSALS, ids=lambda cls: cls.__name__)
def test_every_refused_notification_is_counted_under_an_outcome_the_metrics_know(cls: type[LedgerError]) -> None:
    answer = answer_for(cls)
    assert answer.outcome in NOTIFICATION_OUTCOMES
    assert answer.outcome not in ("accepted", "duplicate", "error"), "a refusal of ours is not a bug"
    assert 400 <= answer.status < 600


def test_every_failure_outcome_the_metrics_know_is_one_the_table_answers() -> None:
    failures = set(NOTIFICATION_OUTCOMES) - {"accepted", "duplicate"}
    assert failures == {answer.outcome for answer in ANSWERS.values()}


def test_every_code_the_table_answers_is_in_the_openapi_description() -> None:
    documented = set(SCHEMAS["Error"]["properties"]["code"]["enum"])
    assert {answer.code for answer in ANSWERS.values()} <= documented


def test_a_class_without_an_entry_answers_like_its_nearest_ancestor() -> None:
    class VersionMissing(OrderNotFound):
        pass

    assert answer_for(VersionMissing) == answer_for(OrderNotFound)
    assert answer_for(DuplicateSignatureHeader) == answer_for(VerificationFailed)
    assert answer_for(KeyError("x")) == answer_for(Exception) == answer_for(BaseException) == UNEXPECTED
    assert all(answer_for(cls).status >= 400 for cls in ERRORS)


def _answer(exc: BaseException, *, notification: bool = False) -> tuple[int, Any]:
    response = answer_for(exc).response(exc, notification=notification)
    return response.status_code, json.loads(response.body)


def test_only_our_own_sentences_reach_an_answer() -> None:
    assert _answer(InvalidRequest("limit must be between 1 and 500")) == (
        400,
        {"code": "INVALID_REQUEST", "message": "limit must be between 1 and 500"},
    )
    assert _answer(OrderNotFound("ORDER-9 has no version 7")) == (
        404,
        {"code": "NOT_FOUND", "message": "order not found"},
    )
    assert _answer(RuntimeError("secret-internal-detail")) == (500, {"code": "FAIL", "message": "internal error"})
    assert _answer(WeChatPayUnavailable("connect timeout to 10.0.0.7")) == (
        502,
        {"code": "FAIL", "message": "WeChat Pay unavailable"},
    )


def test_wechat_pays_code_is_shown_and_its_message_is_not() -> None:
    rejected = WeChatPayRejected(404, "ORDER_NOT_EXIST", "order does not exist (WeChat's own words)")
    assert _answer(rejected) == (502, {"code": "FAIL", "message": "WeChat Pay rejected the request: ORDER_NOT_EXIST"})
    assert _answer(WeChatPayRejected(400, "", "no code")) == (
        502,
        {"code": "FAIL", "message": "WeChat Pay rejected the request"},
    )


def test_an_answer_to_wechat_pay_always_says_fail() -> None:
    assert _answer(UnknownMerchant("no merchant '1999'")) == (404, {"code": "NOT_FOUND", "message": "unknown merchant"})
    assert _answer(UnknownMerchant("no merchant '1999'"), notification=True) == (
        404,
        {"code": "FAIL", "message": "unknown merchant"},
    )
    assert _answer(ClientGone(), notification=True) == (400, {"code": "FAIL", "message": "client disconnected"})


# -- the failures notify meets before it verifies anything, through the app in-process ------------------


def _counted(client: InProcess, outcome: str) -> float:
    answer = client.request("GET", "/metrics")
    assert answer.status == 200
    line = f'payledger_notifications_total{{outcome="{outcome}"}} '
    return float(next(row for row in answer.body.decode().splitlines() if row.startswith(line)).split()[-1])


def _notify(app: Any, outcome: str, receive: Receive, delivery: Delivery) -> Answer:
    """POST `delivery`'s headers with the body `receive` gives; the answer, once `outcome` was counted once."""
    headers = [(k.lower().encode(), v.encode()) for k, v in delivery.headers.items()]
    with in_process(app) as client:
        before = _counted(client, outcome)
        answered = client.request("POST", "/wechatpay/notify", headers, receive=receive)
        assert _counted(client, outcome) - before == 1
    return answered


@pytest.fixture
def app(merchant_env: dict[str, str], tmp_path: Path) -> Any:
    env = {**merchant_env, "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"}
    return create_app(Settings.load({**env, "LEDGER_BODY_READ_TIMEOUT": "1"}), background=False)


def test_a_client_that_leaves_mid_body_is_answered_400_and_counted(app: Any, factory: NotificationFactory) -> None:
    paid = factory.paid("ORDER-E001", 100)
    parts = iter([{"type": "http.request", "body": paid.body[:10], "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(parts)

    answer = _notify(app, "disconnected", receive, paid)
    assert (answer.status, answer.json()) == (400, {"code": "FAIL", "message": "client disconnected"})
    assert "connection" not in answer.headers


def test_a_body_that_stops_arriving_is_answered_408_closed_and_counted(app: Any, factory: NotificationFactory) -> None:
    paid = factory.paid("ORDER-E002", 100)
    parts = iter([{"type": "http.request", "body": paid.body[:10], "more_body": True}])

    async def receive() -> dict[str, Any]:
        for part in parts:
            return part
        await asyncio.sleep(30)  # LEDGER_BODY_READ_TIMEOUT=1 ends the wait long before
        return {"type": "http.disconnect"}

    answer = _notify(app, "body_timeout", receive, paid)
    assert (answer.status, answer.json()) == (408, {"code": "FAIL", "message": "request body timeout"})
    assert answer.headers["connection"] == "close"
