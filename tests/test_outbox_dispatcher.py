"""The outbox and its dispatchers against a real receiver on loopback, on SQLite and PostgreSQL.

Schedules run on a fake clock: a "day" of retries takes no time. The receiver verifies every
request with the independent verifier of tests/support/webhooks.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.utils
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cli.main import run
from cli.webhooks import register
from ledger.errors import EndpointNotFound, InvalidEndpoint
from ledger.settings import Secret, Settings
from ledger.store.sql import Database
from projections.webhooks.dispatcher import WEBHOOK_RETRY_SCHEDULE, Dispatcher
from projections.webhooks.endpoints import load_endpoints
from projections.webhooks.messages import enqueue, message_id
from projections.webhooks.outbox import Outbox
from projections.webhooks.schema import outbox_url
from tests.support.constants import MCHID
from tests.support.fakes import T0, FakeClock, Receiver, failing_then
from tests.support.servers import free_port
from tests.support.webhooks import STREAM, InvalidWebhook, decide, verify


@pytest.fixture
def sqlite_outbox(sqlite_url: str) -> Iterator[Outbox]:
    box = Outbox(Database(outbox_url(sqlite_url)))
    yield box
    box.database.close()


def statuses(outbox: Outbox, msg: str) -> list[int | None]:
    return [a.status for a in outbox.messages.get(msg).history]


# -- the outbox as the projection fills it ------------------------------------------------------------


def test_enqueue_writes_one_message_per_matching_endpoint_once_and_in_the_callers_transaction(
    outbox: Outbox,
) -> None:
    every = outbox.endpoints.add("http://127.0.0.1:9/all")
    refunds = outbox.endpoints.add("http://10.0.0.7/refunds", events=["RefundSucceeded"])
    payments = outbox.endpoints.add("http://[::1]:8080/payments", events=["PaymentSucceeded"])
    outbox.endpoints.disable(payments.id, "maintenance")  # still written: it waits for the endpoint

    assert decide(outbox, 1) == 2
    assert decide(outbox, 1) == 0  # a rebuild processing the same event again
    assert decide(outbox, 2, event_type="RefundSucceeded") == 2
    with pytest.raises(RuntimeError), outbox.database.transaction() as cur:
        written = enqueue(
            cur,
            outbox.database,
            source_id=f"{STREAM}:3",
            event_type="PaymentSucceeded",
            mchid=MCHID,
            out_trade_no="ORDER-0003",
            stream_version=3,
            data={},
            occurred_at=dt.datetime.now(dt.UTC),
            endpoints=load_endpoints(cur, outbox.database),
        )
        assert written == 2
        raise RuntimeError("the projection's transaction fails")

    messages = outbox.messages.newest()
    assert sorted((m.source_id, m.endpoint_id) for m in messages) == sorted(
        [
            (f"{STREAM}:1", every.id),
            (f"{STREAM}:1", payments.id),
            (f"{STREAM}:2", every.id),
            (f"{STREAM}:2", refunds.id),
        ]
    )
    assert all(m.id == message_id(m.source_id, m.endpoint_id) and m.state == "pending" for m in messages)
    body = json.loads(next(m for m in messages if m.event_type == "RefundSucceeded").body)
    assert body["type"] == "RefundSucceeded" and body["timestamp"].endswith("Z")
    assert body["data"]["out_trade_no"] == "ORDER-0002" and body["data"]["stream_version"] == 2
    assert outbox.messages.counts() == {"pending": 4, "delivered": 0, "failing": 0, "dead": 0}


def test_endpoints_take_any_http_url_and_keep_their_secret_out_of_sight(outbox: Outbox) -> None:
    for url in ("http://localhost:8000/h", "https://192.168.1.20/h", "http://[fd00::1]/h", "https://shop.example/h"):
        endpoint = outbox.endpoints.add(url)
        assert endpoint.url == url and endpoint.enabled
        assert endpoint.secrets[0].startswith("whsec_") and endpoint.secrets[0] not in repr(endpoint)
    for url in ("ftp://shop.example/h", "shop.example/h", "http://"):
        with pytest.raises(InvalidEndpoint):
            outbox.endpoints.add(url)
    with pytest.raises(InvalidEndpoint):
        outbox.endpoints.add("http://shop.example/h", secret="plain-text")
    assert len(outbox.endpoints.all()) == 4


def test_configured_endpoints_sync_by_id_and_keep_an_operators_disable(outbox: Outbox) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    outbox.endpoints.upsert("ep_shop", "https://shop.example/h", [secret], ["PaymentSucceeded"])
    outbox.endpoints.upsert("ep_shop", "https://shop.example/h", [secret], ["PaymentSucceeded"])  # a restart
    outbox.endpoints.disable("ep_shop", "maintenance")
    updated = outbox.endpoints.upsert("ep_shop", "https://shop.example/v2", [secret], ["*"])
    assert (updated.url, updated.event_types, updated.enabled) == ("https://shop.example/v2", ("*",), False)
    kinds = [e.kind for e in outbox.endpoints.operator_events()]
    assert kinds == ["endpoint_configured", "endpoint_disabled", "endpoint_configured"]
    with pytest.raises(EndpointNotFound):
        outbox.endpoints.disable("ep_missing", "no such endpoint")


# -- delivery, one failure mode at a time ---------------------------------------------------------------


def test_a_500_is_retried_with_the_same_webhook_id_and_a_fresh_signature(
    outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    endpoint = outbox.endpoints.add(receiver.url + "/hook")
    receiver.answer = failing_then(1, status=500)
    decide(outbox, 1)
    clock = FakeClock(T0 + 1)
    dispatcher = dispatchers(outbox, clock=clock)

    assert dispatcher.run_once() == 1
    [msg] = outbox.messages.newest()
    assert msg.state == "failing" and statuses(outbox, msg.id) == [500]
    assert T0 + 1 + 4 <= msg.next_attempt_at <= T0 + 1 + 6  # 5 s ± 20 %
    assert dispatcher.run_once() == 0  # not due yet
    clock.advance(6)
    assert dispatcher.run_once() == 1

    delivered = outbox.messages.get(msg.id)
    assert delivered.state == "delivered" and statuses(outbox, msg.id) == [500, 200]
    assert (
        delivered.history[0].response_body.startswith("answer 500") and len(delivered.history[0].response_body) == 500
    )
    first, second = receiver.hits
    assert first.id == second.id == msg.id and first.body == second.body
    assert second.timestamp == first.timestamp + 6
    for hit in (first, second):
        assert verify(endpoint.secrets[0], hit.headers, hit.body, now=hit.timestamp)["data"]["stream_version"] == 1
        assert hit.headers["content-type"] == "application/json"


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    sqlite_outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    sqlite_outbox.endpoints.add(receiver.url + "/hook")
    receiver.answer = lambda hit: (301, {"location": receiver.url + "/moved"}, 0.0)
    decide(sqlite_outbox, 1)
    dispatchers(sqlite_outbox, clock=FakeClock()).run_once()
    [msg] = sqlite_outbox.messages.newest()
    assert msg.state == "failing" and statuses(sqlite_outbox, msg.id) == [301]
    assert "redirect not followed" in (msg.history[0].error or "")
    assert receiver.to("/moved") == []


def test_a_receiver_slower_than_the_timeout_is_a_failure(
    sqlite_outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    sqlite_outbox.endpoints.add(receiver.url + "/hook")
    receiver.answer = lambda hit: (200, {}, 2.0)
    decide(sqlite_outbox, 1)
    dispatchers(sqlite_outbox, clock=FakeClock(), timeout=0.3).run_once()
    [msg] = sqlite_outbox.messages.newest()
    assert msg.state == "failing"
    [attempt] = msg.history
    assert attempt.status is None and attempt.error == "timeout" and 250 <= attempt.duration_ms < 2000


def test_an_unreachable_endpoint_is_a_failure(sqlite_outbox: Outbox, dispatchers: Callable[..., Dispatcher]) -> None:
    sqlite_outbox.endpoints.add(f"http://127.0.0.1:{free_port()}/hook")
    decide(sqlite_outbox, 1)
    dispatchers(sqlite_outbox, clock=FakeClock()).run_once()
    [msg] = sqlite_outbox.messages.newest()
    assert msg.state == "failing" and msg.history[0].status is None
    assert "ConnectError" in (msg.history[0].error or "")


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("2", 2.0), ("0", 1.0), ("86400", 60.0), (email.utils.formatdate(T0 + 30, usegmt=True), 30.0)],
)
def test_retry_after_is_honoured_within_bounds(
    sqlite_outbox: Outbox,
    receiver: Receiver,
    dispatchers: Callable[..., Dispatcher],
    retry_after: str,
    expected: float,
) -> None:
    sqlite_outbox.endpoints.add(receiver.url + "/hook")
    receiver.answer = failing_then(1, status=429, headers={"retry-after": retry_after})
    decide(sqlite_outbox, 1)
    clock = FakeClock()
    dispatcher = dispatchers(sqlite_outbox, clock=clock, retry_after_max=60.0)
    dispatcher.run_once()
    [msg] = sqlite_outbox.messages.newest()
    assert msg.next_attempt_at == pytest.approx(T0 + expected, abs=0.01)
    clock.advance(expected)
    assert dispatcher.run_once() == 1
    assert statuses(sqlite_outbox, msg.id) == [429, 200]


# -- long outages, dead letters, disabled endpoints ----------------------------------------------------


def test_an_endpoint_down_for_hours_gets_every_message_after_it_recovers_in_order(
    outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    endpoint = outbox.endpoints.add(receiver.url + "/hook")
    down = threading.Event()
    down.set()
    receiver.answer = lambda hit: (503, {}, 0.0) if down.is_set() else (200, {}, 0.0)
    for n in (1, 2, 3, 4):
        decide(outbox, n, at=T0 + n)
    created = [message_id(f"{STREAM}:{n}", endpoint.id) for n in (1, 2, 3, 4)]
    clock = FakeClock(T0 + 10)
    dispatcher = dispatchers(outbox, clock=clock)

    assert dispatcher.run_once() == 4
    for step in WEBHOOK_RETRY_SCHEDULE[:3]:  # 5 s, 5 min, 30 min later: still down
        clock.advance(step * 1.2 + 1)
        assert dispatcher.run_once() == 4
    assert outbox.messages.counts()["failing"] == 4
    down.clear()
    clock.advance(WEBHOOK_RETRY_SCHEDULE[3] * 1.2 + 1)  # two hours later it is back
    assert dispatcher.run_once() == 4

    assert outbox.messages.counts() == {"pending": 0, "delivered": 4, "failing": 0, "dead": 0}
    assert [hit.id for hit in receiver.hits[-4:]] == created
    for msg in created:
        hits = [hit for hit in receiver.hits if hit.id == msg]
        assert len(hits) == 5 and len({hit.body for hit in hits}) == 1
        assert [h.timestamp for h in hits] == sorted({h.timestamp for h in hits})
        verify(endpoint.secrets[0], hits[-1].headers, hits[-1].body, now=clock.now)
        assert statuses(outbox, msg) == [503, 503, 503, 503, 200]


def test_an_exhausted_message_is_dead_until_recovered_or_resent(
    outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    outbox.endpoints.add(receiver.url + "/hook")
    down = threading.Event()
    down.set()
    receiver.answer = lambda hit: (500, {}, 0.0) if down.is_set() else (200, {}, 0.0)
    decide(outbox, 1, at=T0 - 86400)  # a day older: outside the window recovered below
    decide(outbox, 2, at=T0)
    clock = FakeClock(T0)
    dispatcher = dispatchers(outbox, clock=clock, schedule=(5, 10))
    for _ in range(3):
        assert dispatcher.run_once() == 2
        clock.advance(13)
    assert outbox.messages.counts()["dead"] == 2
    clock.advance(86400)
    assert dispatcher.run_once() == 0  # dead messages are not retried...
    assert len(outbox.messages.newest(state="dead")) == 2  # ...nor dropped

    down.clear()
    window = (dt.datetime.fromtimestamp(T0 - 60, dt.UTC), dt.datetime.fromtimestamp(T0 + 60, dt.UTC))
    assert outbox.messages.recover(*window, at=clock.now) == 1
    assert dispatcher.run_once() == 1
    older, newer = sorted(outbox.messages.newest(), key=lambda m: m.created_at)
    assert (older.state, newer.state) == ("dead", "delivered")
    assert statuses(outbox, newer.id) == [500, 500, 500, 200]
    outbox.messages.resend(older.id, at=clock.now)
    assert dispatcher.run_once() == 1
    assert outbox.messages.get(older.id).state == "delivered"
    assert [e.kind for e in outbox.endpoints.operator_events()][-2:] == ["messages_recovered", "message_resent"]


def test_an_endpoint_failing_longer_than_allowed_is_disabled_and_its_messages_wait(
    outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    endpoint = outbox.endpoints.add(receiver.url + "/hook")
    healthy = outbox.endpoints.add(receiver.url + "/moved")
    down = threading.Event()
    down.set()
    receiver.answer = lambda hit: (503, {}, 0.0) if down.is_set() and hit.path == "/hook" else (200, {}, 0.0)
    decide(outbox, 1)
    clock = FakeClock(T0)
    dispatcher = dispatchers(outbox, clock=clock, schedule=(1000,) * 10, disable_after=3600)
    dispatcher.run_once()
    for _ in range(3):
        assert outbox.endpoints.get(endpoint.id).enabled
        clock.advance(1300)
        dispatcher.run_once()

    disabled = outbox.endpoints.get(endpoint.id)
    assert not disabled.enabled and "failing since" in (disabled.disabled_reason or "")
    assert outbox.endpoints.get(healthy.id).enabled
    [event] = [e for e in outbox.endpoints.operator_events() if e.kind == "endpoint_disabled"]
    assert event.endpoint_id == endpoint.id and event.at == clock.now
    decide(outbox, 2)  # new decisions are still written for it
    hits = len(receiver.to("/hook"))
    clock.advance(86400)
    dispatcher.run_once()
    assert len(receiver.to("/hook")) == hits == 4
    waiting = outbox.messages.newest(endpoint_id=endpoint.id)
    assert sorted(m.state for m in waiting) == ["failing", "pending"]

    down.clear()
    assert outbox.endpoints.enable(endpoint.id, at=clock.now)
    assert dispatcher.run_once() == 2
    assert {m.state for m in outbox.messages.newest(endpoint_id=endpoint.id)} == {"delivered"}


def test_two_dispatchers_never_send_the_same_message_twice(
    database_url: str, outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    receiver.answer = lambda hit: (200, {}, 0.005)
    outbox.endpoints.add(receiver.url + "/hook")
    outbox.endpoints.add(receiver.url + "/moved")
    for n in range(1, 31):
        decide(outbox, n, at=None)
    second = Outbox(Database(outbox_url(database_url)))
    attempted: list[int] = []

    def work(d: Dispatcher) -> None:
        deadline = time.monotonic() + 20
        while outbox.messages.counts()["delivered"] < 60 and time.monotonic() < deadline:
            attempted.append(d.run_once(limit=5))

    try:
        threads = [
            threading.Thread(target=work, args=(dispatchers(box, batch=3, workers=2, owner=name),))
            for box, name in ((outbox, "one"), (second, "two"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        second.database.close()
    assert outbox.messages.counts()["delivered"] == 60
    per_message = Counter(hit.id for hit in receiver.hits)
    assert len(per_message) == 60 and set(per_message.values()) == {1}
    assert sum(attempted) == 60


def test_during_rotation_both_secrets_sign_until_the_old_one_is_dropped(
    sqlite_outbox: Outbox, receiver: Receiver, dispatchers: Callable[..., Dispatcher]
) -> None:
    endpoint = sqlite_outbox.endpoints.add(receiver.url + "/hook")
    old = endpoint.secrets[0]
    new = sqlite_outbox.endpoints.add_secret(endpoint.id)
    decide(sqlite_outbox, 1)
    clock = FakeClock()
    dispatcher = dispatchers(sqlite_outbox, clock=clock)
    dispatcher.run_once()
    sqlite_outbox.endpoints.drop_old_secrets(endpoint.id)
    [msg] = sqlite_outbox.messages.newest()
    sqlite_outbox.messages.resend(msg.id, at=clock.now)
    dispatcher.run_once()
    during, after = receiver.hits
    verify(old, during.headers, during.body, now=clock.now)
    verify(new, during.headers, during.body, now=clock.now)
    verify(new, after.headers, after.body, now=clock.now)
    with pytest.raises(InvalidWebhook):
        verify(old, after.headers, after.body, now=clock.now)


# -- the commands ------------------------------------------------------------------------------------------


def test_endpoint_and_delivery_commands(
    sqlite_url: str, receiver: Receiver, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(Secret(sqlite_url), (), webhook_retry_schedule=(60.0, 60.0))
    parser = argparse.ArgumentParser(prog="payledger")
    register(parser.add_subparsers(dest="command", required=True), lambda args: settings)

    def payledger(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(argv)
        code = run(args)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = payledger("endpoints", "add", receiver.url + "/hook", "--events", "PaymentSucceeded")
    assert code == 0
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    endpoint, secret = lines["endpoint"], lines["secret"]
    assert payledger("endpoints", "add", "ftp://shop.example/h")[0] == 2
    code, out, _ = payledger("endpoints", "list")
    assert endpoint in out and "enabled" in out and "PaymentSucceeded" in out and secret not in out

    box = Outbox(Database(outbox_url(sqlite_url)))  # the projection's side
    decide(box, 1, at=None)
    decide(box, 2, at=None, event_type="RefundSucceeded")  # not subscribed
    box.database.close()
    receiver.answer = failing_then(1, status=500)
    assert payledger("dispatch", "--once")[1].startswith("attempted 1 message(s)")
    code, out, _ = payledger("deliveries", "list", "--json")
    [listed] = json.loads(out)
    assert listed["state"] == "failing" and [a["status"] for a in listed["attempts"]] == [500]
    assert (listed["endpoint_id"], listed["type"], listed["out_trade_no"]) == (
        endpoint,
        "PaymentSucceeded",
        "ORDER-0001",
    )
    assert payledger("deliveries", "resend", "msg_unknown")[0] == 1
    assert payledger("deliveries", "resend", listed["webhook_id"])[0] == 0
    payledger("dispatch", "--once")
    [listed] = json.loads(payledger("deliveries", "list", "--json", "--state", "delivered")[1])
    assert [a["status"] for a in listed["attempts"]] == [500, 200]
    (row,) = [line for line in payledger("deliveries", "list")[1].splitlines() if line.startswith(listed["webhook_id"])]
    cells = [listed["webhook_id"], endpoint, "PaymentSucceeded", "ORDER-0001 v1", "delivered", "500, 200"]
    assert re.split(r"\s{2,}", row) == cells
    for hit in receiver.hits:
        assert hit.id == listed["webhook_id"]
        verify(secret, hit.headers, hit.body, now=time.time())

    code, out, _ = payledger("deliveries", "recover", "--since", "2020-01-01", "--until", "2100-01-01T00:00:00+08:00")
    assert (code, out.strip()) == (0, "0 message(s) queued again")
    assert payledger("endpoints", "disable", endpoint)[0] == 0
    assert "disabled by operator" in payledger("endpoints", "list")[1]
    assert payledger("endpoints", "enable", endpoint)[1].strip() == f"endpoint {endpoint} enabled"


def test_dispatch_stops_cleanly_on_sigterm_after_finishing_the_request_in_flight(
    sqlite_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    box = Outbox(Database(outbox_url(sqlite_url)))
    box.endpoints.add(receiver.url + "/hook")
    decide(box, 1, at=None)
    receiver.answer = lambda hit: (204, {}, 1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHATPAY_", "LEDGER_"))}
    env["LEDGER_DATABASE_URL"] = sqlite_url
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "dispatch", "--interval", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not receiver.hits and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        assert receiver.hits, f"no request (dispatcher exit code {process.poll()})"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert box.messages.counts()["delivered"] == 1
    box.database.close()
