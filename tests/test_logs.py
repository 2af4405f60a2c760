"""Log lines: JSON with the request id, and never a secret or a payer identifier, even at DEBUG."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from api.app import create_app
from ledger.errors import ConfigurationError
from ledger.logs import TextFormatter, configure_logging, default_format, request_id
from ledger.settings import Settings
from ledger.wechatpay.sandbox.server import Sandbox
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from tests.support.servers import running, service

TOKEN = "admin-token-for-the-log-test-0123456789"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"  # the payer every generated resource names


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """The root logger at DEBUG, writing JSON lines into a buffer, as `payledger serve` would to stderr."""
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("DEBUG", "json", stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_days_traffic_logged_at_debug_holds_no_secret_and_every_request_line_its_request_id(
    tmp_path: Path, log_buffer: io.StringIO, other_factory: NotificationFactory
) -> None:
    sandbox = Sandbox(seed=7, time_scale=1000)
    factory = sandbox.factory
    deliveries: list[Delivery] = []
    answered: list[httpx.Response] = []
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        env |= {"LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "LEDGER_ADMIN_TOKEN": TOKEN}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with (
            running(create_app(Settings.load(env), background=False)) as url,
            httpx.Client(base_url=url, timeout=30, headers=auth) as client,
        ):
            for no in ("ORDER-7801", "ORDER-7802"):
                sandbox.create_order(no, 100)
                assert client.post("/orders", json={"out_trade_no": no, "amount_total": 100}).status_code == 201
            paid = factory.paid("ORDER-7801", 100)
            other = factory.envelope(factory.transaction("ORDER-7801", 100))
            deliveries = [
                paid,  # accepted
                paid,  # duplicate
                factory.probe(factory.paid("ORDER-7801", 100)),
                other_factory.deliver(other, serial=factory.public_key_id),  # bad signature
                factory.deliver(factory.envelope(factory.transaction("ORDER-7801", 100), apiv3_key="X" * 32)),
            ]
            for delivery in deliveries:
                answered.append(client.post("/wechatpay/notify", content=delivery.body, headers=delivery.headers))
            sandbox.pay("ORDER-7802", drop=True)
            answered.append(client.post("/orders/ORDER-7802/query"))
            assert client.get("/orders/ORDER-7802/events").text.count(OPENID) > 0, "the answer did name the payer"
    assert [r.status_code for r in answered] == [204, 204, 401, 401, 500, 200]
    text = log_buffer.getvalue()
    private_pem = sandbox.merchant_private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    secrets = [OPENID, factory.apiv3_key, TOKEN, *private_pem.splitlines()[1:-1]]
    secrets += [json.loads(d.body)["resource"]["ciphertext"] for d in deliveries]
    for secret in secrets:
        assert secret not in text
    logged = lines(log_buffer)
    assert {"time", "level", "logger", "message"} <= set(logged[0])
    ours = [line for line in logged if line["logger"].startswith(("api", "ledger.queries", "ledger.wechatpay.client"))]
    assert len(ours) >= len(answered)
    assert all("request_id" in line for line in ours), [line for line in ours if "request_id" not in line]
    ids = {r.headers["x-request-id"] for r in answered}
    assert len(ids) == len(answered), "one id per request"
    assert ids <= {line["request_id"] for line in ours}, "each request's lines can be found by its id"
    outcomes = [line.get("outcome") for line in logged if line["logger"] == "api.notify"]
    assert outcomes == ["accepted", "duplicate", "probe", "bad_signature", "decrypt_failure"]


def test_concurrent_callbacks_each_log_under_their_own_request_id(
    merchant_env: dict[str, str], sqlite_url: str, factory: NotificationFactory, log_buffer: io.StringIO
) -> None:
    """The group committer stores many callbacks in one batch on its own thread; each line stays with its request."""
    deliveries = {f"cb-{n:02d}": factory.paid(f"ORDER-79{n:02d}", 100) for n in range(12)}

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url) as client:
            return await asyncio.gather(
                *(
                    client.post("/wechatpay/notify", content=d.body, headers={**d.headers, "X-Request-Id": rid})
                    for rid, d in deliveries.items()
                )
            )

    with service(merchant_env, sqlite_url) as (client, _):
        responses = asyncio.run(fire(str(client.base_url)))
    assert [r.status_code for r in responses] == [204] * len(deliveries)
    assert {r.headers["x-request-id"] for r in responses} == set(deliveries)
    accepted = {
        line["notification_id"]: line["request_id"]
        for line in lines(log_buffer)
        if line["logger"] == "api.notify" and line.get("outcome") == "accepted"
    }
    assert accepted == {d.notification_id: rid for rid, d in deliveries.items()}


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("abc-DEF_1.2", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("two words", False),
        ('quote"d', False),
        ("", False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_short_and_plain(
    merchant_env: dict[str, str], sqlite_url: str, given: str, echoed: bool
) -> None:
    with service(merchant_env, sqlite_url) as (client, _):
        response = client.get("/healthz", headers={"X-Request-Id": given})
        again = client.get("/healthz", headers={"X-Request-Id": given})
    returned = response.headers["x-request-id"]
    if echoed:
        assert returned == again.headers["x-request-id"] == given
    else:
        assert returned != given and len(returned) == 24 and returned.isalnum()
        assert again.headers["x-request-id"] != returned, "a fresh id for every request"


def test_an_error_answer_and_its_log_line_share_the_request_id(
    merchant_env: dict[str, str], sqlite_url: str, factory: NotificationFactory, log_buffer: io.StringIO
) -> None:
    delivery = factory.probe(factory.paid("ORDER-7950", 100))
    with service(merchant_env, sqlite_url) as (client, _):
        response = client.post("/wechatpay/notify", content=delivery.body, headers=delivery.headers)
        listed = client.get("/orders", headers={"X-Request-Id": "req-1"})
    assert response.status_code == 401
    assert listed.headers["x-request-id"] == "req-1"
    [line] = [line for line in lines(log_buffer) if line["logger"] == "api.notify"]
    assert (line["request_id"], line["level"], line["outcome"]) == (
        response.headers["x-request-id"],
        "WARNING",
        "probe",
    )


def test_text_lines_carry_the_request_id_when_there_is_one() -> None:
    record = logging.makeLogRecord(
        {"name": "api.notify", "levelname": "INFO", "msg": "stored %s", "args": ("n-1",), "outcome": "accepted"}
    )
    record.request_id = "r-9"
    assert TextFormatter().format(record).endswith("api.notify: stored n-1 request_id=r-9")
    record = logging.makeLogRecord({"name": "api", "levelname": "INFO", "msg": "start"})
    assert TextFormatter().format(record).endswith("api: start")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_default_format_is_text_at_a_terminal_and_json_otherwise() -> None:
    assert (default_format(_Terminal()), default_format(io.StringIO())) == ("text", "json")


def test_outside_a_request_there_is_no_request_id(log_buffer: io.StringIO) -> None:
    logging.getLogger("ledger.test").warning("start-up")
    token = request_id.set("r-inside")
    logging.getLogger("ledger.test").warning("inside", extra={"mchid": "1900000109"})
    request_id.reset(token)
    first, second = lines(log_buffer)[-2:]
    assert "request_id" not in first
    assert (second["request_id"], second["mchid"], second["message"]) == ("r-inside", "1900000109", "inside")


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, (None, 10_000)), ({"LEDGER_LOG_FORMAT": "JSON", "LEDGER_READY_MAX_LAG": "50"}, ("json", 50))],
)
def test_log_format_and_readiness_bound_settings(
    merchant_env: dict[str, str], env: dict[str, str], expected: tuple[str | None, int]
) -> None:
    settings = Settings.load({**merchant_env, **env})
    assert (settings.log_format, settings.ready_max_lag) == expected


@pytest.mark.parametrize(
    ("key", "raw"), [("LEDGER_LOG_FORMAT", "xml"), ("LEDGER_READY_MAX_LAG", "-1"), ("LEDGER_READY_MAX_LAG", "many")]
)
def test_bad_log_format_or_readiness_bound_is_refused_at_start(
    merchant_env: dict[str, str], key: str, raw: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.load({**merchant_env, key: raw})
    assert caught.value.setting == key
