"""Dispatch benchmark: a backlog of outbox messages delivered to each kind of endpoint, against a
bare publisher loop in the same run.

For each target (NATS JetStream, RabbitMQ, a webhook receiver on loopback):

* seeding (not timed): a fresh outbox (a SQLite file, or a new PostgreSQL schema dropped
  afterwards) with one endpoint of that kind and N pending messages (one per order, the webhook
  payload of a `PaymentSucceeded`), written in one transaction;
* dispatch (the figure): one `Dispatcher` as `payledger dispatch` builds it (default batch,
  workers and timeout) calling `run_once` until the backlog is empty: lease, publish or POST,
  wait for the broker's acknowledgement or the 2xx, record the attempt, settle the message;
* bare loop (the baseline): the same N messages published by the client library alone, one after
  another, each awaited as the dispatcher awaits it (JetStream: `js.publish` with the same
  headers, waiting for its PubAck; RabbitMQ: a mandatory persistent publish on a confirming
  channel; webhook: a signed POST with one `httpx.Client`), with no outbox at all.

The ratio dispatch/bare is what the outbox costs per message: leasing, bookkeeping, the attempt
log. Each target gets a stream, an exchange and a queue of its own (unique names), deleted after
the run; the webhook receiver runs in a child process (a Starlette app answering 204).

    python bench/dispatch.py [--messages 100000] [--store sqlite|postgres] [--targets nats,amqp,webhook]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import httpx
import nats
import psycopg
from nats.js.api import StreamConfig

from ledger.store.sql import Database
from projections.webhooks.brokers import cloudevent_headers
from projections.webhooks.dispatcher import Dispatcher
from projections.webhooks.messages import enqueue
from projections.webhooks.outbox import Outbox
from projections.webhooks.records import Endpoint, Message
from projections.webhooks.schema import outbox_url
from projections.webhooks.signing import generate_secret, headers

NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
MCHID = "1900000109"


# -- the targets ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _receiver(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def hook(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def webhook_receiver() -> Iterator[str]:
    port = _free_port()
    child = multiprocessing.get_context("spawn").Process(target=_receiver, args=(port,), daemon=True)
    child.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        child.terminate()
        child.join(10)


@contextlib.contextmanager
def nats_target() -> Iterator[tuple[str, str]]:
    prefix, stream = f"bench_{uuid.uuid4().hex[:10]}", f"BENCH_{uuid.uuid4().hex[:10].upper()}"

    async def call(create: bool) -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        if create:
            await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"]))
        else:
            await js.delete_stream(stream)
        await nc.close()

    asyncio.run(call(True))
    try:
        yield f"{NATS_URL}/{prefix}", prefix
    finally:
        asyncio.run(call(False))


@contextlib.contextmanager
def amqp_target() -> Iterator[tuple[str, str]]:
    exchange, queue = f"bench.{uuid.uuid4().hex[:10]}", f"bench.q.{uuid.uuid4().hex[:10]}"

    async def call(create: bool) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        if create:
            ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            q = await channel.declare_queue(queue, durable=True)
            await q.bind(ex, "#")
        else:
            await channel.queue_delete(queue)
            await channel.exchange_delete(exchange)
        await connection.close()

    asyncio.run(call(True))
    try:
        yield f"{AMQP_URL.rstrip('/')}/?exchange={exchange}", exchange
    finally:
        asyncio.run(call(False))


# -- the outbox -------------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_outbox(store: str) -> Iterator[Outbox]:
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            box = Outbox(Database(outbox_url(f"sqlite:///{tmp}/ledger.sqlite3")))
            try:
                yield box
            finally:
                box.database.close()
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    box = Outbox(Database(f"{POSTGRES_URL}{sep}schema={schema}"))
    try:
        yield box
    finally:
        box.database.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def seed(box: Outbox, endpoint: Endpoint, n: int) -> float:
    started = time.perf_counter()
    occurred = dt.datetime.now(dt.UTC)
    now = time.time() - 1
    with box.database.transaction() as cur:
        for i in range(n):
            no = f"BENCH-{i:07d}"
            data = {"out_trade_no": no, "mchid": MCHID, "trade_state": "SUCCESS", "amount_total": 100}
            enqueue(
                cur,
                box.database,
                source_id=f"bench:{i}",
                event_type="PaymentSucceeded",
                mchid=MCHID,
                out_trade_no=no,
                stream_version=4,
                data=data,
                occurred_at=occurred,
                endpoints=[endpoint],
                created_at=now + i * 1e-6,
            )
    return time.perf_counter() - started


def dispatch(box: Outbox, n: int) -> float:
    dispatcher = Dispatcher(box)  # as `payledger dispatch` builds it, with the default settings
    started = time.perf_counter()
    done = 0
    try:
        while done < n:
            attempted = dispatcher.run_once(1000)
            if not attempted:
                break
            done += attempted
    finally:
        dispatcher.close()
    elapsed = time.perf_counter() - started
    counts = box.messages.counts()
    if counts["delivered"] != n:
        raise SystemExit(f"not every message was delivered: {counts}")
    return elapsed


# -- the bare loops ---------------------------------------------------------------------------------


def sample_messages(box: Outbox, n: int) -> list[Message]:
    """The seeded messages (their bodies), read back once: the bare loops publish the same bytes."""
    messages = box.messages.newest(limit=n)
    return [m for m in messages]


def bare_nats(prefix: str, messages: list[Message]) -> float:
    async def run() -> float:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream(timeout=10)
        started = time.perf_counter()
        for m in messages:
            hdrs = cloudevent_headers(m) | {"content-type": "application/json", "Nats-Msg-Id": "bare-" + m.id}
            await js.publish(f"{prefix}.{m.event_type}", m.body, headers=hdrs)
        elapsed = time.perf_counter() - started
        await nc.close()
        return elapsed

    return asyncio.run(run())


def bare_amqp(exchange_name: str, messages: list[Message]) -> float:
    async def run() -> float:
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(exchange_name)
        started = time.perf_counter()
        for m in messages:
            message = aio_pika.Message(
                m.body,
                headers=dict(cloudevent_headers(m)),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=m.id,
            )
            await exchange.publish(message, routing_key=m.event_type, mandatory=True)
        elapsed = time.perf_counter() - started
        await connection.close()
        return elapsed

    return asyncio.run(run())


def bare_webhook(url: str, secret: str, messages: list[Message]) -> float:
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        for m in messages:
            sent = headers([secret], m.id, int(time.time()), m.body) | {"content-type": "application/json"}
            client.post(url, content=m.body, headers=sent).raise_for_status()
        return time.perf_counter() - started


# -- the run ------------------------------------------------------------------------------------------


def run_target(target: str, store: str, n: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        secret = generate_secret()
        if target == "nats":
            url, name = stack.enter_context(nats_target())
        elif target == "amqp":
            url, name = stack.enter_context(amqp_target())
        else:
            url, name = stack.enter_context(webhook_receiver()), ""
        box = stack.enter_context(fresh_outbox(store))
        endpoint = box.endpoints.add(url, secret if target == "webhook" else None)
        seeded = seed(box, endpoint, n)
        messages = sample_messages(box, n)
        if target == "nats":
            bare = bare_nats(name, messages)
        elif target == "amqp":
            bare = bare_amqp(name, messages)
        else:
            bare = bare_webhook(url, secret, messages)
        took = dispatch(box, n)
    return {"target": target, "seed_s": seeded, "dispatch_s": took, "bare_s": bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--targets", default="nats,amqp,webhook")
    args = parser.parse_args()
    n = args.messages
    print(f"backlog {n} messages, outbox on {args.store}, {os.cpu_count()} CPUs")
    print(f"{'target':8} {'dispatch msg/s':>15} {'bare msg/s':>11} {'ratio':>6}   (seeding {'':>1}s)")
    for target in args.targets.split(","):
        r = run_target(target.strip(), args.store, n)
        d, b = n / r["dispatch_s"], n / r["bare_s"]
        print(f"{r['target']:8} {d:15,.0f} {b:11,.0f} {d / b:6.2f}   ({r['seed_s']:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
