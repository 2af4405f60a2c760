"""Broker endpoints (NATS JetStream, RabbitMQ) beside webhooks, against the real brokers on this
machine: each test makes its own stream, exchange and queue, and removes them.

Without a broker its tests are skipped, except when `CI` is set: then they fail. Schedules run
on a fake clock; the brokers are real.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cli.main import run
from cli.webhooks import register
from ledger.application import Ledger
from ledger.errors import ConfigurationError, InvalidEndpoint
from ledger.settings import EndpointSettings, Secret, Settings
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.webhooks.dispatcher import Dispatcher
from projections.webhooks.outbox import Outbox
from projections.webhooks.projection import sync_endpoints
from projections.webhooks.stats import AttemptTally
from tests.support.brokers import AMQP_URL, NATS_URL, AmqpQueue, Got, NatsStream, reachable
from tests.support.constants import MCHID
from tests.support.fakes import T0, FakeClock, Receiver
from tests.support.lifetimes import making
from tests.support.projectors import run_outbox
from tests.support.servers import free_port
from tests.support.webhooks import STREAM, decide

PASSWORD = "s3cr3t-p@ss"  # a password that must never show


def _broker(url: str, name: str) -> None:
    problem = reachable(url)
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {name} at {url} is unreachable ({problem})")
        pytest.skip(f"{name} unreachable ({problem}); set CI to make this a failure")


@pytest.fixture
def nats_stream() -> Iterator[Callable[..., NatsStream]]:
    _broker(NATS_URL, "NATS")
    yield from making(NatsStream, NatsStream.delete)


@pytest.fixture
def amqp_queue() -> Iterator[Callable[..., AmqpQueue]]:
    _broker(AMQP_URL, "RabbitMQ")
    yield from making(AmqpQueue, AmqpQueue.delete)


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., Dispatcher]]:
    """Dispatchers that give up on an attempt after 3 s (a broker that does not answer)."""
    yield from making(lambda outbox, **options: Dispatcher(outbox, **{"timeout": 3.0, **options}), Dispatcher.close)


def event(box: Outbox, order: str, version: int, event_type: str = "PaymentSucceeded") -> int:
    """What the projection does for decision `version` of `order`."""
    return box.messages.enqueue(
        source_id=f"{STREAM}-{order}:{version}",
        event_type=event_type,
        mchid=MCHID,
        out_trade_no=order,
        stream_version=version,
        data={"out_trade_no": order, "mchid": MCHID, "step": version},
        occurred_at=dt.datetime.fromtimestamp(T0 + version, dt.UTC),
        created_at=T0 + version,
    )


def drain(dispatcher: Dispatcher, clock: FakeClock, box: Outbox, *, passes: int = 20, step: float = 10.0) -> None:
    """Dispatch and let the schedule's time pass until nothing is pending or failing."""
    for _ in range(passes):
        dispatcher.run_once(1000)
        counts = box.messages.counts()
        if counts["pending"] == counts["failing"] == 0:
            return
        clock.advance(step)


def assert_contract(got: Got, body: bytes, msg_id: str, event_type: str) -> None:
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert got.body == body
    assert headers["ce-specversion"] == "1.0" and headers["ce-id"] == msg_id and headers["ce-type"] == event_type
    assert headers["ce-source"] == f"payledger/{MCHID}"
    assert headers["ce-time"] == json.loads(body)["timestamp"]
    assert headers["ce-subject"] == json.loads(body)["data"]["out_trade_no"]


# -- endpoint URLs ----------------------------------------------------------------------------------------


def test_broker_urls_choose_the_transport_and_bad_ones_are_refused_without_quoting_them(outbox: Outbox) -> None:
    nats_ep = outbox.endpoints.add("nats://127.0.0.1:4222/payments")
    amqp_ep = outbox.endpoints.add(f"amqp://shop:{PASSWORD}@rabbit.internal:5672/ledger?exchange=payments")
    hook = outbox.endpoints.add("https://shop.example/h")
    assert (nats_ep.transport, amqp_ep.transport, hook.transport) == ("nats", "amqp", "webhook")
    assert nats_ep.secrets == () and amqp_ep.secrets == () and hook.secrets[0].startswith("whsec_")
    assert amqp_ep.shown_url == "amqp://shop:***@rabbit.internal:5672/ledger?exchange=payments"
    assert PASSWORD not in repr(amqp_ep) and PASSWORD not in repr(outbox.endpoints.all())
    assert all(PASSWORD not in json.dumps(e.detail) for e in outbox.endpoints.operator_events())
    bad = {
        f"nats://u:{PASSWORD}@127.0.0.1:4222": "subject prefix",
        f"nats://u:{PASSWORD}@127.0.0.1:4222/pay.*": "subject prefix",
        f"nats://u:{PASSWORD}@127.0.0.1:4222/pay?x=1": "no query",
        f"nats://u:{PASSWORD}@127.0.0.1:99999/pay": "port",
        f"amqp://u:{PASSWORD}@127.0.0.1:5672/": "exchange",
        f"amqp://u:{PASSWORD}@127.0.0.1:5672/?exchange=a&heartbeat=5": "exactly one parameter",
        f"amqp://u:{PASSWORD}@127.0.0.1:5672/?exchange=amq.topic": "exchange must",
        f"amqp://u:{PASSWORD}@/?exchange=x": "host",
        f"kafka://u:{PASSWORD}@127.0.0.1:9092/x": "http(s)://, nats:// or amqp(s)://",
    }
    for url, words in bad.items():
        with pytest.raises(InvalidEndpoint) as caught:
            outbox.endpoints.add(url)
        assert words in str(caught.value) and PASSWORD not in str(caught.value)
    assert len(outbox.endpoints.all()) == 3


def test_configured_broker_endpoints_need_no_secret_and_never_show_their_password(outbox: Outbox) -> None:
    table = {"id": "orders", "url": f"amqp://ledger:{PASSWORD}@rabbit:5672/shop?exchange=payments"}
    endpoint = EndpointSettings.from_table(table, "endpoints[0].")
    assert endpoint.secrets == () and PASSWORD not in repr(endpoint)
    sync_endpoints(outbox, [endpoint])
    sync_endpoints(outbox, [endpoint])  # a restart changes nothing
    [stored] = outbox.endpoints.all()
    assert (stored.id, stored.url, stored.transport, stored.secrets) == ("orders", table["url"], "amqp", ())
    [configured] = outbox.endpoints.operator_events()
    assert configured.detail == {"url": "amqp://ledger:***@rabbit:5672/shop?exchange=payments"}
    with pytest.raises(ConfigurationError) as caught:
        EndpointSettings.from_table({**table, "url": f"nats://ledger:{PASSWORD}@nats:4222/"}, "endpoints[0].")
    assert "subject prefix" in str(caught.value.problem) and PASSWORD not in str(caught.value)
    with pytest.raises(ConfigurationError):  # a webhook still needs its secret
        EndpointSettings.from_table({"id": "hook", "url": "https://shop.example/h"}, "endpoints[0].")


def test_endpoints_list_masks_a_brokers_password(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(Secret(sqlite_url), ())
    parser = argparse.ArgumentParser(prog="payledger")
    register(parser.add_subparsers(dest="command", required=True), lambda args: settings)
    url = f"amqp://ledger:{PASSWORD}@127.0.0.1:5672/?exchange=payments"
    assert run(parser.parse_args(["endpoints", "add", url])) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("endpoint ep_") and "secret" not in out
    assert run(parser.parse_args(["endpoints", "list"])) == 0
    out, _ = capsys.readouterr()
    (row,) = out.splitlines()[1:]  # under the header: url, then the number of secrets
    assert row.split()[3:] == ["amqp://ledger:***@127.0.0.1:5672/?exchange=payments", "0"] and PASSWORD not in out
    assert run(parser.parse_args(["endpoints", "add", f"nats://u:{PASSWORD}@h/"])) == 2
    _, err = capsys.readouterr()
    assert "subject prefix" in err and PASSWORD not in err


# -- against the real brokers ----------------------------------------------------------------------------


def test_a_paid_order_gives_one_message_per_broker_endpoint_with_the_contracts_headers_and_body(
    outbox: Outbox,
    dispatchers: Callable[..., Dispatcher],
    nats_stream: Callable[..., NatsStream],
    amqp_queue: Callable[..., AmqpQueue],
) -> None:
    stream, queue = nats_stream(), amqp_queue()
    nats_ep = outbox.endpoints.add(stream.endpoint_url)
    amqp_ep = outbox.endpoints.add(queue.endpoint_url)
    assert decide(outbox, 1) == 2
    assert dispatchers(outbox, clock=FakeClock()).run_once() == 2
    delivered = {m.endpoint_id: m for m in outbox.messages.newest()}
    assert {m.state for m in delivered.values()} == {"delivered"}
    [got] = stream.messages()
    msg = delivered[nats_ep.id]
    assert got.subject == f"{stream.prefix}.PaymentSucceeded"
    assert got.headers["Nats-Msg-Id"] == msg.id and got.headers["content-type"] == "application/json"
    assert_contract(got, msg.body, msg.id, "PaymentSucceeded")
    assert "stream " in msg.history[0].response_body and msg.history[0].error is None
    [got] = queue.messages()
    msg = delivered[amqp_ep.id]
    assert got.subject == "PaymentSucceeded"
    assert got.properties == {
        "message_id": msg.id,
        "content_type": "application/json",
        "delivery_mode": 2,
        "type": "PaymentSucceeded",
    }
    assert_contract(got, msg.body, msg.id, "PaymentSucceeded")
    assert json.loads(got.body)["data"]["out_trade_no"] == "ORDER-0001"
    assert dispatchers(outbox, clock=FakeClock()).run_once() == 0  # exactly one each
    assert len(stream.messages()) == 1 and queue.messages() == []
    assert AttemptTally(outbox).read()["delivered"] == 2  # the metrics count a broker's ack


def test_an_order_paid_through_the_ledger_reaches_both_brokers_once_through_the_projection(
    database_url: str,
    ledger_factory: Callable[[], Ledger],
    factory: NotificationFactory,
    outbox: Outbox,
    dispatchers: Callable[..., Dispatcher],
    nats_stream: Callable[..., NatsStream],
    amqp_queue: Callable[..., AmqpQueue],
) -> None:
    stream, queue = nats_stream(), amqp_queue()
    outbox.endpoints.add(stream.endpoint_url)
    outbox.endpoints.add(queue.endpoint_url)
    ledger = ledger_factory()
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    ledger.register_order(MCHID, "ORDER-BROKER-1", 100)
    delivery = factory.paid("ORDER-BROKER-1", 100)
    for _ in range(2):  # WeChat Pay delivers twice: one decision
        ledger.record_notification(MCHID, verifier.verify(delivery.headers, delivery.body))
    run_outbox(database_url, ledger)
    run_outbox(database_url, ledger)  # a replay queues nothing again
    dispatchers(outbox).run_once()
    for got_all in (stream.messages(), queue.messages()):
        [got] = got_all
        document = json.loads(got.body)
        assert document["type"] == "PaymentSucceeded" and document["data"]["out_trade_no"] == "ORDER-BROKER-1"
        assert got.headers["ce-type"] == "PaymentSucceeded" and got.headers["ce-subject"] == "ORDER-BROKER-1"


def test_brokers_down_while_payments_arrive_get_every_message_after_they_return_in_order_per_order(
    outbox: Outbox,
    dispatchers: Callable[..., Dispatcher],
    nats_stream: Callable[..., NatsStream],
    amqp_queue: Callable[..., AmqpQueue],
) -> None:
    stream, queue = nats_stream(), amqp_queue()
    closed = free_port()
    nats_down = f"nats://ledger:{PASSWORD}@127.0.0.1:{closed}/{stream.prefix}"
    amqp_down = f"amqp://ledger:{PASSWORD}@127.0.0.1:{closed}/?exchange={queue.exchange}"
    outbox.endpoints.upsert("ep_nats", nats_down, [])
    outbox.endpoints.upsert("ep_amqp", amqp_down, [])
    orders = [f"ORDER-{n}" for n in range(4)]
    for version in range(1, 4):
        for order in orders:
            event(outbox, order, version, "PaymentSucceeded" if version == 1 else "RefundSucceeded")
    clock = FakeClock(T0 + 10)
    dispatcher = dispatchers(outbox, clock=clock, schedule=(5.0,) * 10, workers=2)
    for _ in range(3):  # hours of an outage, in fake time
        dispatcher.run_once(1000)
        clock.advance(30)
    failing = outbox.messages.newest(state="failing", limit=100)
    assert {m.stream_version for m in failing} == {1}  # later ones wait behind their order's first
    assert all(a.error and a.status is None for m in failing for a in m.history)
    assert all(PASSWORD not in (a.error or "") for m in failing for a in m.history)
    outbox.endpoints.upsert("ep_nats", stream.endpoint_url, [])  # the brokers are back
    outbox.endpoints.upsert("ep_amqp", queue.endpoint_url, [])
    drain(dispatcher, clock, outbox)
    assert outbox.messages.counts()["delivered"] == 24
    for got_all in (stream.messages(), queue.messages()):
        assert len(got_all) == 12 and len({g.headers["ce-id"] for g in got_all}) == 12
        for order in orders:
            steps = [json.loads(g.body)["data"]["step"] for g in got_all if g.headers["ce-subject"] == order]
            assert steps == [1, 2, 3]


def test_a_dispatcher_killed_between_publish_and_bookkeeping_publishes_again_and_jetstream_keeps_one(
    outbox: Outbox,
    dispatchers: Callable[..., Dispatcher],
    nats_stream: Callable[..., NatsStream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = nats_stream()
    outbox.endpoints.add(stream.endpoint_url)
    decide(outbox, 1)
    clock = FakeClock()
    first = dispatchers(outbox, clock=clock, owner="first")

    def killed(*_: Any) -> bool:
        raise SystemExit("killed")

    monkeypatch.setattr(outbox.leases, "mark_delivered", killed)
    with pytest.raises(SystemExit):
        first.run_once()
    monkeypatch.undo()
    [msg] = outbox.messages.newest()
    assert msg.state == "pending" and msg.history == () and len(stream.messages()) == 1
    clock.advance(3600)  # the first dispatcher's lease runs out
    assert dispatchers(outbox, clock=clock, owner="second").run_once() == 1
    [msg] = outbox.messages.newest()
    assert msg.state == "delivered" and msg.history[0].response_body.endswith("(duplicate)")
    [got] = stream.messages()
    assert got.headers["Nats-Msg-Id"] == msg.id


def test_a_subject_no_stream_captures_is_a_failed_attempt_retried_until_a_stream_does(
    outbox: Outbox, dispatchers: Callable[..., Dispatcher], nats_stream: Callable[..., NatsStream]
) -> None:
    stream = nats_stream(create=False)
    outbox.endpoints.add(stream.endpoint_url)
    decide(outbox, 1)
    clock = FakeClock()
    dispatcher = dispatchers(outbox, clock=clock, schedule=(5.0, 5.0))
    dispatcher.run_once()
    [msg] = outbox.messages.newest()
    assert msg.state == "failing" and msg.history[0].error == "no JetStream stream captures the subject"
    stream.create()
    clock.advance(10)
    dispatcher.run_once()
    assert outbox.messages.newest()[0].state == "delivered" and len(stream.messages()) == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"reject_publish": True}, "nack: the broker refused the message"),
        ({"bind": False}, "unroutable: the exchange returned the message (no queue bound for its routing key)"),
    ],
)
def test_rabbitmq_nacks_and_unroutable_messages_are_retried_then_dead_lettered(
    outbox: Outbox,
    dispatchers: Callable[..., Dispatcher],
    amqp_queue: Callable[..., AmqpQueue],
    options: dict[str, bool],
    error: str,
) -> None:
    queue = amqp_queue(**options)
    endpoint = outbox.endpoints.add(queue.endpoint_url)
    decide(outbox, 1)
    clock = FakeClock()
    dispatcher = dispatchers(outbox, clock=clock, schedule=(5.0, 5.0))
    drain(dispatcher, clock, outbox)
    [msg] = outbox.messages.newest()
    assert msg.state == "dead" and [a.error for a in msg.history] == [error] * 3
    assert AttemptTally(outbox).read()["broker_refused"] == 3
    assert outbox.endpoints.get(endpoint.id).failing_since is not None
    assert (
        outbox.messages.recover(dt.datetime.fromtimestamp(0, dt.UTC), dt.datetime.fromtimestamp(T0 + 60, dt.UTC)) == 1
    )


def test_webhook_nats_and_rabbitmq_endpoints_each_get_their_share(
    outbox: Outbox,
    dispatchers: Callable[..., Dispatcher],
    nats_stream: Callable[..., NatsStream],
    amqp_queue: Callable[..., AmqpQueue],
    receiver: Receiver,
) -> None:
    stream, queue = nats_stream(), amqp_queue()
    outbox.endpoints.add(receiver.url + "/hook")
    outbox.endpoints.add(stream.endpoint_url, events=["PaymentSucceeded"])
    outbox.endpoints.add(queue.endpoint_url, events=["RefundSucceeded"])
    for n in range(1, 7):
        decide(outbox, n, event_type="PaymentSucceeded" if n % 2 else "RefundSucceeded")
    clock = FakeClock()
    drain(dispatchers(outbox, clock=clock), clock, outbox)
    assert outbox.messages.counts() == {"pending": 0, "delivered": 12, "failing": 0, "dead": 0}
    assert len(receiver.to("/hook")) == 6
    assert sorted(json.loads(g.body)["data"]["out_trade_no"] for g in stream.messages()) == [
        "ORDER-0001",
        "ORDER-0003",
        "ORDER-0005",
    ]
    assert [g.subject for g in queue.messages()] == ["RefundSucceeded"] * 3


def test_with_ci_set_an_unreachable_broker_fails_its_tests_rather_than_skipping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = f"nats://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set but NATS"):
        _broker(closed, "NATS")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _broker(closed, "NATS")
