"""Read benchmark: order reads and lists while callbacks arrive, against GET /healthz in the same run.

One fresh PostgreSQL schema; `payledger serve` and `payledger project` each as their own process,
as in production. The orders view's table is filled with synthetic orders by COPY (default
1,000,000, spread over merchants, sub-merchants, states and 90 days), then real orders are
registered and paid over HTTP so the view and the log agree. Every phase sends signed
TRANSACTION.SUCCESS callbacks for fresh orders at --callback-rate (open loop) while one kind of
read runs at its own rate (open loop):

* healthz at --read-rate: the baseline (the HTTP stack and the load, no reading);
* GET /orders/{no} and GET /orders/{no}/events at --read-rate: half of them for the order whose
  callback was sent just before (read-your-writes under way), half for an older paid order;
* healthz and GET /orders?... (filters, windows, keyset cursors) at --list-rate.

Reports p50/p99 per phase and each read's p99 as a ratio to its healthz baseline. Every answer
is checked (status, and that reads name the order asked for); any failure makes the run invalid.

    python bench/reads.py [--view-orders 1000000] [--read-rate 500] [--callback-rate 200]
                          [--list-rate 100] [--duration 10] [--repeat 1]

Targets (PostgreSQL, this 2-core machine): order and events reads p99 < 10 ms at 500/s with
200 callbacks/s; lists p99 < 20 ms with 1,000,000 orders in the view.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from loadgen import HOST, Stream, get_request, open_loop, percentile, post_request  # sibling: run from bench/

from ledger.application import build_ledger
from ledger.domain import PaymentOrder
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.runner import open_orders_view, orders_head
from projections.read_model.view import ORDER_FIELDS

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
POSTGRES_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
AMOUNT = 100
PROVIDER = "1900000200"  # a service provider: its synthetic orders name sub-merchants
SMALL = [f"19000003{i:02d}" for i in range(20)]
SUBS = [f"16000000{i:02d}" for i in range(50)]
STATES = (("SUCCESS", 70), ("NOTPAY", 12), ("CLOSED", 10), ("REFUND", 6), ("PAYERROR", 2))
DAY = 86400.0
TARGETS_MS = {"order": 10.0, "events": 10.0, "lists": 20.0}


def log(message: str) -> None:
    print(f"[reads] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Params:
    view_orders: int
    old_orders: int
    read_rate: float
    callback_rate: float
    list_rate: float
    duration: float
    repeat: int
    postgres_url: str
    profile: str | None = None

    def describe(self) -> str:
        return (
            f"reads benchmark (PostgreSQL): {self.view_orders:,} synthetic orders in the view, "
            f"{self.old_orders:,} paid orders read back; reads at {self.read_rate:g}/s, lists at "
            f"{self.list_rate:g}/s, each while callbacks arrive at {self.callback_rate:g}/s; "
            f"{self.duration:g} s per phase, repeat {self.repeat} (median); "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )


def parse_args(argv: Sequence[str] | None) -> Params:
    parser = argparse.ArgumentParser(description="Read latency under callback load, against GET /healthz")
    parser.add_argument("--view-orders", type=int, default=1_000_000, help="synthetic orders COPYed into the view")
    parser.add_argument("--old-orders", type=int, default=2000, help="orders paid before the phases, read back")
    parser.add_argument("--read-rate", type=float, default=500.0, help="order and events reads per second")
    parser.add_argument("--callback-rate", type=float, default=200.0, help="callbacks per second in every phase")
    parser.add_argument("--list-rate", type=float, default=100.0, help="list requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all phases; medians reported")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--profile", metavar="PHASE", help="py-spy the server during that phase (py-spy installed)")
    a = parser.parse_args(argv)
    return Params(
        a.view_orders,
        a.old_orders,
        a.read_rate,
        a.callback_rate,
        a.list_rate,
        a.duration,
        a.repeat,
        a.postgres_url,
        a.profile,
    )


# -- the store ------------------------------------------------------------------------------


@contextmanager
def fresh_schema(params: Params) -> Iterator[str]:
    schema = f"bench_reads_{secrets.token_hex(3)}"
    with psycopg.connect(params.postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in params.postgres_url else "?"
    try:
        yield f"{params.postgres_url}{sep}schema={schema}"
    finally:
        with psycopg.connect(params.postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def register(url: str, mchid: str, numbers: Sequence[str]) -> None:
    """As `POST /orders` would, many per transaction."""
    ledger = build_ledger(url)
    try:
        for start in range(0, len(numbers), 500):
            orders = [PaymentOrder.open(mchid, n) for n in numbers[start : start + 500]]
            for order in orders:
                order.register(AMOUNT, "CNY", "")
            ledger.save(*orders)
    finally:
        ledger.close()


def synthetic_rows(count: int, mchid: str, now: float) -> Iterator[tuple[object, ...]]:
    """Orders of one big merchant (half), a provider's 50 sub-merchants (30%), 20 small merchants."""
    rng = random.Random(15)
    states = [s for s, weight in STATES for _ in range(weight)]
    for i in range(count):
        pick = rng.random()
        if pick < 0.5:
            merchant, sub = mchid, ""
        elif pick < 0.8:
            merchant, sub = PROVIDER, rng.choice(SUBS)
        else:
            merchant, sub = rng.choice(SMALL), ""
        state = rng.choice(states)
        updated = now - rng.random() * 90 * DAY
        number = f"S{i:010d}"
        paid = state in ("SUCCESS", "REFUND")
        transaction_id = f"42000{i:023d}" if paid else None
        refunded = 30 if state == "REFUND" else 0
        document = {
            "out_trade_no": number,
            "mchid": merchant,
            "sp_mchid": merchant if sub else None,
            "sub_mchid": sub or None,
            "combine_out_trade_no": None,
            "registered": True,
            "trade_state": state,
            "amount_total": 100,
            "currency": "CNY",
            "description": "synthetic",
            "transaction_id": transaction_id,
            "success_time": "2026-11-27T10:34:56+08:00" if paid else None,
            "paid_total": 100 if paid else None,
            "payer_total": 100 if paid else None,
            "refunded_total": refunded,
            "refunds": [],
            "anomalies": [],
            "open_anomalies": 0,
            "operator_actions": [],
            "bill_discrepancies": [],
            "deliveries": [],
            "version": 2 if paid else 1,
        }
        values = {
            **document,
            "sub_mchid": sub,
            "stream_id": f"00000000-0000-4000-8000-{i:012d}",
            "anomalies": 0,
            "created_at": updated - rng.random() * 3600,
            "updated_at": updated,
            "document": json.dumps(document, separators=(",", ":")),
        }
        yield tuple(values[name] for name in ORDER_FIELDS)


def fill_view(url: str, params: Params, mchid: str) -> None:
    view = open_orders_view(url)  # creates the tables of the live version
    table = view.qualify(view.orders_table)
    view.close()
    schema = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["schema"][0]
    started = time.perf_counter()
    with psycopg.connect(params.postgres_url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(ORDER_FIELDS)}) FROM STDIN") as copy:
            for row in synthetic_rows(params.view_orders, mchid, time.time()):
                copy.write_row(row)
        conn.execute(f"SET search_path TO {schema}")
        conn.execute(f"ANALYZE {table}")
    log(f"{params.view_orders:,} synthetic orders copied into {table} in {time.perf_counter() - started:.0f} s")


# -- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args], env=env, cwd=ROOT, stdout=output, stderr=output
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"reads: {what} not within {timeout:.0f} s")


def wait_for_view(url: str) -> None:
    """Until the projector has every order event in the view."""
    ledger, view = build_ledger(url), open_orders_view(url)
    try:
        head, started = orders_head(ledger), time.perf_counter()
        wait_until(lambda: view.position() >= head, "the orders view catching up", timeout=900)
        log(f"the view reached {head:,} in {time.perf_counter() - started:.0f} s")
    finally:
        ledger.close()
        view.close()


@contextmanager
def profiling(pid: int, name: str, params: Params) -> Iterator[None]:
    """py-spy's collapsed stacks of the server over phase `name`, if asked for, in reads-<phase>.txt."""
    if params.profile != name:
        yield
        return
    out = Path(f"reads-{name}.txt").resolve()
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw"]
    proc = subprocess.Popen([*spy, "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(30)
        log(f"profile of {name} in {out}")


# -- phases ---------------------------------------------------------------------------------


def order_check(kind: str) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        document = json.loads(body)
        if kind == "order" and document.get("trade_state") not in ("NOTPAY", "SUCCESS"):
            return f"order read: unexpected {body[:200]!r}"
        if kind == "events" and not document.get("events"):
            return f"events read: no events in {body[:200]!r}"
        return None

    return check


def list_paths(count: int, mchid: str, now: float, rng: random.Random) -> list[str]:
    """A mix of list queries: filters, a small merchant's rare state, time windows, deep keyset pages."""

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    def moment() -> float:
        return now - rng.random() * 90 * DAY

    kinds: list[Callable[[], dict[str, str]]] = [
        lambda: {},
        lambda: {"mchid": mchid},
        lambda: {"trade_state": "REFUND"},
        lambda: {"mchid": rng.choice(SMALL), "trade_state": "REFUND"},
        lambda: {"mchid": PROVIDER, "sub_mchid": rng.choice(SUBS)},
        lambda: {"since": iso(t := moment()), "until": iso(t + DAY)},
        lambda: {"mchid": rng.choice(SMALL), "since": iso(t := moment()), "until": iso(t + 7 * DAY)},
        lambda: {"cursor": json.dumps([moment(), "", ""])},
        lambda: {"mchid": mchid, "trade_state": "SUCCESS", "cursor": json.dumps([moment(), mchid, ""])},
    ]
    return [f"/orders?{urllib.parse.urlencode({**rng.choice(kinds)(), 'limit': '50'})}" for _ in range(count)]


def list_check(body: bytes) -> str | None:
    return None if isinstance(json.loads(body).get("orders"), list) else f"list: {body[:200]!r}"


@dataclass
class Result:
    phase: str
    rate: float
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    failures: list[str]
    callbacks_p99_ms: float | None
    cpu_ms: float = 0.0  # the server's CPU over the phase, its callbacks' share included


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU process `pid` has used: the server's own cost, whatever else runs on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def phase(
    name: str,
    port: int,
    pid: int,
    params: Params,
    factory: NotificationFactory,
    fresh: Sequence[str],
    old: Sequence[str],
) -> Result:
    """`name`'s reads while callbacks for `fresh` orders arrive at --callback-rate."""
    rng = random.Random(name)
    callbacks = [
        post_request("/wechatpay/notify", port, d.body, d.headers) for d in (factory.paid(n, AMOUNT) for n in fresh)
    ]
    rate = params.list_rate if name in ("healthz-lists", "lists") else params.read_rate
    count = round(rate * params.duration)
    if name.startswith("healthz"):
        paths, check = ["/healthz"] * count, None
    elif name == "lists":
        paths, check = list_paths(count, factory.mchid, time.time(), rng), list_check
    else:
        suffix = "/events" if name == "events" else ""
        paths = []
        for i in range(count):
            # The order whose callback went out just before this read, or an older paid one.
            just_sent = int(i / rate * params.callback_rate) - 1
            number = fresh[just_sent] if i % 2 and just_sent >= 0 else rng.choice(old)
            paths.append(f"/orders/{number}{suffix}")
        check = order_check(name)
    reads = Stream(name, [get_request(p, port) for p in paths], rate, check=check)
    notify = Stream("callbacks", callbacks, params.callback_rate, expect=204)
    cpu = cpu_seconds(pid)
    await open_loop(port, [reads, notify])
    cpu = cpu_seconds(pid) - cpu
    failures = [f"{name}: {f}" for f in reads.failures[:5]] + [f"{name} callbacks: {f}" for f in notify.failures[:5]]
    return Result(
        name,
        rate,
        len(paths),
        percentile(reads.latencies_ms, 0.5),
        percentile(reads.latencies_ms, 0.99),
        failures,
        percentile(notify.latencies_ms, 0.99),
        1000 * cpu,
    )


PHASES = ("healthz", "order", "events", "healthz-lists", "lists")
BASELINE = {"order": "healthz", "events": "healthz", "lists": "healthz-lists"}


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(results: Sequence[Result], params: Params) -> bool:
    print(
        f"{'phase':<14} {'rate/s':>7} {'requests':>8} {'p50 ms':>7} {'p99 ms':>7} {'callbacks p99 ms':>17}"
        f" {'cpu ms/read':>11}  p99 ratio"
    )
    p99, cpu = {}, {}
    for name in PHASES:
        runs = [r for r in results if r.phase == name]
        p50, p99[name] = median([r.p50_ms for r in runs]), median([r.p99_ms for r in runs])
        ratio = ""
        if name in BASELINE and p99[name] and p99[BASELINE[name]]:
            ratio = f"{p99[name] / p99[BASELINE[name]]:.2f}x {BASELINE[name]} p99"
        cb, cpu[name] = median([r.callbacks_p99_ms for r in runs]), median([r.cpu_ms / r.requests for r in runs])
        print(
            f"{name:<14} {runs[0].rate:>7g} {runs[0].requests:>8} {ms(p50):>7} {ms(p99[name]):>7} {ms(cb):>17}"
            f" {cpu[name] or 0:>11.3f}  {ratio}"
        )
    extra = ", ".join(f"{k} {(cpu[k] or 0) - (cpu[BASELINE[k]] or 0):.3f}" for k in BASELINE)
    print(f"server CPU per read beyond its healthz baseline (ms; the callbacks' share cancels out): {extra}")
    met = all((p99[k] or 1e9) < limit for k, limit in TARGETS_MS.items())
    targets = ", ".join(f"{k} p99 < {v:g} ms" for k, v in TARGETS_MS.items())
    print(f"targets ({targets}): {'MET' if met else 'NOT MET'}")
    failures = [f for r in results for f in r.failures]
    for failure in failures[:20]:
        print(f"INVALID: {failure}")
    return not failures


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_args(argv)
    print(params.describe(), flush=True)
    factory = NotificationFactory()
    run = secrets.token_hex(2)
    per_phase = round(params.callback_rate * params.duration)
    old = [f"R{run}O{i:07d}" for i in range(params.old_orders)]
    fresh = [[f"R{run}F{r}{p}{i:06d}" for i in range(per_phase)] for r in range(params.repeat) for p in range(5)]
    with tempfile.TemporaryDirectory(prefix="payledger-reads-") as folder, ExitStack() as stack:
        tmp = Path(folder)
        url = stack.enter_context(fresh_schema(params))
        fill_view(url, params, factory.mchid)
        log(f"registering {len(old) + sum(map(len, fresh)):,} orders")
        register(url, factory.mchid, [*old, *(n for ids in fresh for n in ids)])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "WECHATPAY_"))}
        env.update(factory.write_keys(tmp / "keys"))
        env.update({"LEDGER_DATABASE_URL": url, "LEDGER_LOG_LEVEL": "WARNING"})
        port = free_port()
        server = stack.enter_context(process(["serve", "--port", str(port)], env, tmp / "serve.log"))
        stack.enter_context(process(["project"], env, tmp / "project.log"))
        wait_until(
            lambda: server.poll() is None and httpx.get(f"http://{HOST}:{port}/healthz").status_code == 200, "serve"
        )
        log(f"paying {len(old):,} orders to read back")
        warm = [
            post_request("/wechatpay/notify", port, d.body, d.headers)
            for d in map(lambda n: factory.paid(n, AMOUNT), old)
        ]
        stream = Stream("warm-up", warm, 2 * params.callback_rate, expect=204)
        asyncio.run(open_loop(port, [stream]))
        if stream.failures:
            raise SystemExit(f"reads: warm-up failed: {stream.failures[:3]}")
        wait_for_view(url)
        results = []
        for round_no in range(params.repeat):
            for index, name in enumerate(PHASES):
                log(f"round {round_no + 1}/{params.repeat}: {name}")
                ids = fresh[round_no * 5 + index]
                with profiling(server.pid, name, params):
                    results.append(asyncio.run(phase(name, port, server.pid, params, factory, ids, old)))
        valid = report(results, params)
        if not valid:
            print(_tail(tmp / "serve.log"), file=sys.stderr)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
