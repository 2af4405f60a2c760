"""Notification ingest benchmark: the ledger against a minimal baseline, over real HTTP.

Both servers run under uvicorn on loopback, each on a fresh store of the same kind and with the
same number of processes (`--processes 1,2`: each count measured in turn; several processes
share one port through the same pre-fork, `api/serving.py`): the ledger (`payledger serve
[--workers N]`) and `baseline_app.py` (verify, decrypt, one UPDATE). The same client drives
both with freshly signed TRANSACTION.SUCCESS notifications for distinct, pre-registered orders,
in two modes:

* throughput: N callbacks at a fixed concurrency (closed loop), callbacks/s and latency;
* rate: a fixed arrival rate for D seconds (open loop: sends are scheduled at t0 + i/rate
  whatever the answers), latency at that load.

Every answer must be 204; afterwards a sample of ledger orders must read SUCCESS and every
baseline row must be updated, otherwise the run is invalid and the exit code is 1.

    python bench/ingest.py [--store sqlite|postgres|both] [--processes 1,2] [--requests 2000]
                           [--concurrency 16] [--rate 200] [--duration 10] [--repeat 5] [--json]

Target (PostgreSQL, this 2-core machine): ledger throughput >= 1.5x the baseline's at each
process count (median of the runs), and ledger p99 < 50 ms at 200 callbacks/s. `--repeat 1
--requests 500 --duration 2` is a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from baseline_app import open_orders  # our sibling: this file runs as a script from bench/

from ledger.application import build_ledger
from ledger.domain import PaymentOrder
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
SERVERS = ("ledger", "baseline")
MODES = ("throughput", "rate")
AMOUNT = 100  # fen; every order is registered with it and paid in full, so no anomalies
DEFAULT_POSTGRES_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
# Enough connections that the open-loop mode never queues in the client at the target rate.
RATE_CONNECTIONS = 64
REQUEST_TIMEOUT = 30.0
STARTUP_TIMEOUT = 30.0
SEED_BATCH = 500
LEDGER_SAMPLE = 50
TARGET_RATIO = 1.5
TARGET_P99_MS = 50.0


class BenchError(Exception):
    """Setup failed (a server would not start, PostgreSQL unreachable): no numbers at all."""


def log(message: str) -> None:
    print(f"[ingest] {message}", file=sys.stderr, flush=True)


# -- parameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    stores: tuple[str, ...]
    processes: tuple[int, ...]
    requests: int
    concurrency: int
    rate: float
    duration: float
    repeat: int
    warmup: int
    postgres_url: str
    as_json: bool

    @property
    def rate_requests(self) -> int:
        return max(1, round(self.rate * self.duration))

    def describe(self) -> str:
        return (
            f"ingest benchmark: stores {', '.join(self.stores)}; "
            f"processes per server {', '.join(map(str, self.processes))}; "
            f"throughput {self.requests} callbacks at concurrency {self.concurrency}; "
            f"rate {self.rate:g}/s for {self.duration:g} s ({self.rate_requests} callbacks); "
            f"repeat {self.repeat} (median); warm-up {self.warmup} per server; "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of process counts") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("process counts must be at least 1")
    return counts


def parse_args(argv: Sequence[str] | None) -> Params:
    parser = argparse.ArgumentParser(description="Ledger vs. baseline notification ingest benchmark")
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--requests", type=_positive(int), default=2000, help="callbacks in throughput mode")
    parser.add_argument("--concurrency", type=_positive(int), default=16, help="in-flight callbacks")
    parser.add_argument("--rate", type=_positive(float), default=200.0, help="callbacks/s in rate mode")
    parser.add_argument("--duration", type=_positive(float), default=10.0, help="seconds of rate mode")
    parser.add_argument(
        "--processes", type=_counts, default=(1, 2), help="server processes per side, each count in turn (1,2)"
    )
    parser.add_argument("--repeat", type=_positive(int), default=5, help="runs per mode; medians reported")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured callbacks per server first")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="database for fresh schemas")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = parser.parse_args(argv)
    stores = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    return Params(
        stores=stores,
        processes=args.processes,
        requests=args.requests,
        concurrency=args.concurrency,
        rate=args.rate,
        duration=args.duration,
        repeat=args.repeat,
        warmup=max(0, args.warmup),
        postgres_url=args.postgres_url,
        as_json=args.json,
    )


# -- orders and stores ----------------------------------------------------------------------


@dataclass(frozen=True)
class OrderPlan:
    """Which orders each phase pays; both servers get the same ids, each in its own store."""

    warmup: list[str]
    throughput: list[list[str]]  # one list per round
    rate: list[list[str]]

    @property
    def all(self) -> list[str]:
        phases = [*self.throughput, *self.rate]
        return [*self.warmup, *(n for ids in phases for n in ids)]


def plan_orders(run_id: str, params: Params) -> OrderPlan:
    counter = iter(range(10**8))

    def take(count: int) -> list[str]:
        return [f"B{run_id}{next(counter):08d}" for _ in range(count)]

    warmup = take(params.warmup)
    throughput = [take(params.requests) for _ in range(params.repeat)]
    rate = [take(params.rate_requests) for _ in range(params.repeat)]
    return OrderPlan(warmup, throughput, rate)


@contextmanager
def fresh_stores(store: str, params: Params, run_id: str, tmp: Path) -> Iterator[dict[str, str]]:
    """A new, empty store per server: an SQLite file or a PostgreSQL schema, dropped after."""
    if store == "sqlite":
        yield {s: f"sqlite:///{tmp / f'{s}.sqlite3'}" for s in SERVERS}
        return
    schemas = {s: f"bench_{run_id}_{s}" for s in SERVERS}
    try:
        with psycopg.connect(params.postgres_url, autocommit=True, connect_timeout=5) as conn:
            for schema in schemas.values():
                conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL at {params.postgres_url}: {type(exc).__name__}: {exc}") from None
    sep = "&" if "?" in params.postgres_url else "?"
    try:
        yield {s: f"{params.postgres_url}{sep}schema={schema}" for s, schema in schemas.items()}
    finally:
        with psycopg.connect(params.postgres_url, autocommit=True) as conn:
            for schema in schemas.values():
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def seed_ledger(url: str, mchid: str, out_trade_nos: Sequence[str]) -> None:
    """Register every order, as `POST /orders` would, but many per transaction to save minutes."""
    ledger = build_ledger(url)
    try:
        for start in range(0, len(out_trade_nos), SEED_BATCH):
            orders = [PaymentOrder.open(mchid, n) for n in out_trade_nos[start : start + SEED_BATCH]]
            for order in orders:
                order.register(AMOUNT, "CNY", "")
            ledger.save(*orders)
    finally:
        ledger.close()


def seed_baseline(url: str, out_trade_nos: Sequence[str]) -> None:
    orders = open_orders(url)
    try:
        orders.insert_unpaid(out_trade_nos, AMOUNT)
    finally:
        orders.close()


def baseline_paid(url: str) -> int:
    orders = open_orders(url)
    try:
        return orders.count_paid()
    finally:
        orders.close()


# -- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_command(server: str, processes: int) -> list[str]:
    if server == "ledger":
        command = [sys.executable, "-m", "cli.main", "serve"]
    else:
        command = [sys.executable, str(BENCH_DIR / "baseline_app.py")]
    # One process is plain `payledger serve`, exactly as it runs without the option.
    return [*command, "--workers", str(processes)] if processes > 1 else command


def server_env(keys_env: dict[str, str], database_url: str) -> dict[str, str]:
    # Nothing inherited may reconfigure either server (an admin token, another merchant).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "WECHATPAY_"))}
    env.update(keys_env)
    env.update({"LEDGER_DATABASE_URL": database_url, "LEDGER_LOG_LEVEL": "WARNING"})
    return env


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise BenchError(f"server not ready within {STARTUP_TIMEOUT:.0f}s:\n{_tail(log_path)}")


SERVER_PIDS: dict[int, int] = {}
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(port: int) -> float:
    """User + system CPU the server's processes have used (the supervisor and its workers): what
    one callback costs it, whatever the noise."""
    root = SERVER_PIDS[port]
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(root) or fields[1] == str(root):
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def database_cpu_seconds() -> float:
    """User + system CPU of every local PostgreSQL process (backends, WAL writer, ...), plus
    what exited backends left in their parent's account: the database's share of the cost."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
        except OSError:  # the process ended while we looked
            continue
        if not head.endswith("(postgres"):
            continue
        fields = rest.split()
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / _TICKS


@contextmanager
def running(server: str, env: dict[str, str], log_path: Path, processes: int = 1) -> Iterator[int]:
    """Start one server on a free loopback port; yield the port; stop it."""
    port = free_port()
    with log_path.open("wb") as output:
        proc = subprocess.Popen(
            [*server_command(server, processes), "--host", HOST, "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    SERVER_PIDS[port] = proc.pid
    try:
        wait_ready(proc, f"http://{HOST}:{port}", log_path)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load -----------------------------------------------------------------------------------


@dataclass
class Phase:
    server: str
    mode: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    failures: list[str]
    cpu_seconds: float = 0.0
    database_cpu_seconds: float = 0.0


NOTIFY_PATH = "/wechatpay/notify"


class ProtocolError(ValueError):
    """An answer this minimal client does not understand (counted as a failed callback)."""


def encode_request(delivery: Delivery, port: int) -> bytes:
    """The complete HTTP/1.1 request for one delivery, bytes ready for the socket."""
    lines = [
        f"POST {NOTIFY_PATH} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(delivery.body)}",
        *(f"{name}: {value}" for name, value in delivery.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + delivery.body


def sign(factory: NotificationFactory, out_trade_nos: Sequence[str], port: int) -> list[bytes]:
    # Signing is WeChat's cost, not the server's: done before the clock starts, with fresh
    # timestamps each phase so none nears the 300 s window however long the phases take.
    return [encode_request(factory.paid(n, AMOUNT), port) for n in out_trade_nos]


class Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read the status and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection may be reused)."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"transfer-encoding" in headers:
            raise ProtocolError(f"unexpected transfer-encoding {headers[b'transfer-encoding']!r}")
        length = int(headers.get(b"content-length", b"0"))
        body = await self._reader.readexactly(length) if length else b""
        return int(status_line.split(b" ", 2)[1]), body, headers.get(b"connection") != b"close"

    def close(self) -> None:
        self._writer.close()


class Pool:
    """At most `size` connections to one server, opened before the clock starts.

    A few lines of asyncio rather than httpx: on this 2-core machine httpx.AsyncClient spends
    about 2 ms of CPU per request at 16 connections, time taken from the servers it measures.
    """

    def __init__(self, port: int, size: int) -> None:
        self._port = port
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def connect(self, count: int) -> None:
        self._idle.extend(await asyncio.gather(*(Connection.open(self._port) for _ in range(count))))

    async def post(self, request: bytes) -> tuple[int, bytes]:
        async with self._slots:
            connection = self._idle.pop() if self._idle else await Connection.open(self._port)
            try:
                status, body, reusable = await connection.exchange(request)
            except BaseException:
                connection.close()
                raise
            if reusable:
                self._idle.append(connection)
            else:
                connection.close()
            return status, body

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


async def send(pool: Pool, request: bytes, latencies: list[float], failures: list[str]) -> None:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, body = await pool.post(request)
    except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        return
    latencies.append((time.perf_counter() - started) * 1000)
    if status != 204:
        failures.append(f"HTTP {status}: {body[:200].decode(errors='replace')}")


async def closed_loop(pool: Pool, requests: Sequence[bytes], concurrency: int) -> Phase:
    """`concurrency` workers, each sending its next callback as soon as the last is answered."""
    latencies: list[float] = []
    failures: list[str] = []
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            await send(pool, request, latencies, failures)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return Phase("", "throughput", len(requests), seconds, latencies, failures)


async def open_loop(pool: Pool, requests: Sequence[bytes], rate: float) -> Phase:
    """Send callback i at t0 + i/rate whether or not earlier ones were answered."""
    latencies: list[float] = []
    failures: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    for i, request in enumerate(requests):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(pool, request, latencies, failures)))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    return Phase("", "rate", len(requests), seconds, latencies, failures)


async def run_phase(
    port: int, server: str, mode: str, ids: Sequence[str], factory: NotificationFactory, params: Params
) -> Phase:
    requests = sign(factory, ids, port)
    # A fresh pool per phase: no connection sits idle past the server's keep-alive timeout
    # while the other server is measured. Open-loop may need more than `concurrency`.
    size = params.concurrency if mode != "rate" else max(params.concurrency, RATE_CONNECTIONS)
    pool = Pool(port, size)
    cpu_before, database_before = cpu_seconds(port), database_cpu_seconds()
    try:
        await pool.connect(params.concurrency)
        if mode == "rate":
            phase = await open_loop(pool, requests, params.rate)
        else:
            phase = await closed_loop(pool, requests, params.concurrency)
    finally:
        pool.close()
    phase.server, phase.mode = server, mode
    phase.cpu_seconds = cpu_seconds(port) - cpu_before
    phase.database_cpu_seconds = database_cpu_seconds() - database_before
    return phase


async def check_ledger(port: int, out_trade_nos: Sequence[str]) -> list[str]:
    """A sample of the paid orders must read back SUCCESS with the full amount."""
    sample = random.sample(list(out_trade_nos), min(LEDGER_SAMPLE, len(out_trade_nos)))
    problems = []
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=REQUEST_TIMEOUT) as client:
        for out_trade_no in sample:
            response = await client.get(f"/orders/{out_trade_no}")
            body = response.json() if response.status_code == 200 else {}
            if body.get("trade_state") != "SUCCESS" or body.get("paid_total") != AMOUNT:
                answer = f"HTTP {response.status_code} {response.text[:200]}"
                problems.append(f"ledger order {out_trade_no}: {answer}")
    return problems


async def measure(
    ports: dict[str, int], plan: OrderPlan, factory: NotificationFactory, params: Params, store: str
) -> tuple[list[Phase], list[str]]:
    """Warm up both servers, then alternate them phase by phase; returns phases and problems."""
    for server in SERVERS:
        warm = await run_phase(ports[server], server, "warm-up", plan.warmup, factory, params)
        if warm.failures:
            return [], [f"{server} warm-up: {f}" for f in warm.failures[:5]]
    phases: list[Phase] = []
    for round_no in range(params.repeat):
        # Alternate who goes first so neither always runs right after the other's load.
        order = SERVERS if round_no % 2 == 0 else SERVERS[::-1]
        for mode, ids in (("throughput", plan.throughput[round_no]), ("rate", plan.rate[round_no])):
            for server in order:
                log(f"{store}: {server} {mode} run {round_no + 1}/{params.repeat} ({len(ids)} callbacks)")
                phases.append(await run_phase(ports[server], server, mode, ids, factory, params))
    return phases, await check_ledger(ports["ledger"], plan.all)


# -- results --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: a latency some request actually had."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True)
class Row:
    server: str
    mode: str
    requests: int
    callbacks_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    failures: int
    cpu_ms_per_callback: float | None = None
    database_cpu_ms_per_callback: float | None = None


def summarise(phases: Sequence[Phase]) -> Row:
    """The median of each figure over the repeated runs of one server and mode."""
    first = phases[0]
    return Row(
        server=first.server,
        mode=first.mode,
        requests=first.requests,
        callbacks_per_s=statistics.median(p.requests / p.seconds for p in phases),
        p50_ms=_median([percentile(p.latencies_ms, 0.50) for p in phases]),
        p99_ms=_median([percentile(p.latencies_ms, 0.99) for p in phases]),
        max_ms=_median([max(p.latencies_ms, default=None) for p in phases]),
        failures=sum(len(p.failures) for p in phases),
        cpu_ms_per_callback=_median([1000 * p.cpu_seconds / p.requests for p in phases]),
        database_cpu_ms_per_callback=_median([1000 * p.database_cpu_seconds / p.requests for p in phases]),
    )


@dataclass
class StoreReport:
    store: str
    processes: int
    rows: list[Row]
    throughput_ratio: float
    target_met: bool | None  # only PostgreSQL has a target
    problems: list[str]
    checked: str = ""

    def row(self, server: str, mode: str) -> Row:
        return next(r for r in self.rows if r.server == server and r.mode == mode)

    @property
    def valid(self) -> bool:
        return not self.problems and all(r.failures == 0 for r in self.rows)


def report_store(
    store: str, processes: int, phases: Sequence[Phase], problems: list[str], params: Params
) -> StoreReport:
    rows = [summarise([p for p in phases if p.server == s and p.mode == m]) for m in MODES for s in SERVERS]
    by_key = {(r.server, r.mode): r for r in rows}
    ratio = by_key["ledger", "throughput"].callbacks_per_s / by_key["baseline", "throughput"].callbacks_per_s
    target_met = None
    if store == "postgres":
        at_rate = by_key["ledger", "rate"]
        kept_up = at_rate.callbacks_per_s >= 0.95 * params.rate
        fast = at_rate.p99_ms is not None and at_rate.p99_ms < TARGET_P99_MS
        target_met = ratio >= TARGET_RATIO and kept_up and fast
    failures = [f"{p.server} {p.mode}: {f}" for p in phases for f in p.failures[:5]]
    return StoreReport(store, processes, rows, ratio, target_met, [*problems, *failures])


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_store(report: StoreReport, params: Params) -> None:
    plural = "es" if report.processes > 1 else ""
    print(f"\n== {report.store}, {report.processes} process{plural} per server ==")
    print(
        f"{'server':<9} {'mode':<8} {'requests':>8} {'callbacks/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'failures':>8} {'server cpu ms/cb':>16} {'db cpu ms/cb':>12}"
    )
    for r in report.rows:
        mode = f"c={params.concurrency}" if r.mode == "throughput" else f"{params.rate:g}/s"
        print(
            f"{r.server:<9} {mode:<8} {r.requests:>8} {r.callbacks_per_s:>12.1f} {_ms(r.p50_ms):>8} "
            f"{_ms(r.p99_ms):>8} {_ms(r.max_ms):>8} {r.failures:>8} {_cpu(r.cpu_ms_per_callback):>16} "
            f"{_cpu(r.database_cpu_ms_per_callback if report.store == 'postgres' else None):>12}"
        )
    ledger_rate, baseline_rate = report.row("ledger", "rate"), report.row("baseline", "rate")
    print(
        f"ledger/baseline throughput: {report.throughput_ratio:.2f}x; p99 at {params.rate:g}/s: "
        f"ledger {_ms(ledger_rate.p99_ms)} ms, baseline {_ms(baseline_rate.p99_ms)} ms"
    )
    if report.target_met is not None:
        verdict = "MET" if report.target_met else "NOT MET"
        print(
            f"target (>= {TARGET_RATIO:.1f}x baseline throughput, ledger p99 < {TARGET_P99_MS:.0f} ms "
            f"at {params.rate:g}/s): {verdict}"
        )
    print(f"checked: {report.checked}")
    for problem in report.problems[:20]:
        print(f"INVALID: {problem}")


def print_summary(reports: Sequence[StoreReport]) -> None:
    print("\nledger/baseline throughput at c=16, by store and processes per server:")
    for r in reports:
        verdict = "" if r.target_met is None else ("  target MET" if r.target_met else "  target NOT MET")
        print(f"  {r.store:<9} {r.processes} process(es): {r.throughput_ratio:.2f}x{verdict}")


# -- driver ---------------------------------------------------------------------------------


def bench_store(
    store: str, processes: int, params: Params, factory: NotificationFactory, keys_env: dict[str, str], tmp: Path
) -> StoreReport:
    run_id = secrets.token_hex(3)
    plan = plan_orders(run_id, params)
    ids = plan.all
    with fresh_stores(store, params, run_id, tmp) as urls:
        log(f"{store}: registering {len(ids)} orders in each store")
        seed_ledger(urls["ledger"], factory.mchid, ids)
        seed_baseline(urls["baseline"], ids)
        envs = {s: server_env(keys_env, urls[s]) for s in SERVERS}
        with (
            running("ledger", envs["ledger"], tmp / "ledger.log", processes) as ledger_port,
            running("baseline", envs["baseline"], tmp / "baseline.log", processes) as baseline_port,
        ):
            ports = {"ledger": ledger_port, "baseline": baseline_port}
            phases, problems = asyncio.run(measure(ports, plan, factory, params, store))
        paid = baseline_paid(urls["baseline"])
    if not problems and paid != len(ids):
        problems.append(f"baseline: {paid} of {len(ids)} orders updated to SUCCESS")
    if not phases:
        raise BenchError(f"{store}: warm-up failed: {'; '.join(problems)}")
    report = report_store(store, processes, phases, problems, params)
    report.checked = (
        f"{min(LEDGER_SAMPLE, len(ids))} sampled ledger orders read back; baseline {paid}/{len(ids)} rows SUCCESS"
    )
    return report


def as_json(params: Params, reports: Sequence[StoreReport]) -> str:
    document = {
        "params": asdict(params),
        "stores": [
            {
                "store": r.store,
                "processes": r.processes,
                "rows": [asdict(row) for row in r.rows],
                "throughput_ratio": r.throughput_ratio,
                "target_met": r.target_met,
                "valid": r.valid,
                "problems": r.problems,
                "checked": r.checked,
            }
            for r in reports
        ],
        "valid": all(r.valid for r in reports),
    }
    return json.dumps(document, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_args(argv)
    if not params.as_json:
        print(params.describe(), flush=True)
    factory = NotificationFactory()
    reports = []
    try:
        with tempfile.TemporaryDirectory(prefix="payledger-bench-") as folder:
            tmp = Path(folder)
            keys_env = factory.write_keys(tmp / "keys")
            for store in params.stores:
                for processes in params.processes:
                    store_tmp = tmp / f"{store}-{processes}"
                    store_tmp.mkdir()
                    reports.append(bench_store(store, processes, params, factory, keys_env, store_tmp))
                    if not params.as_json:
                        print_store(reports[-1], params)
    except BenchError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    if params.as_json:
        print(as_json(params, reports))
    else:
        print_summary(reports)
    return 0 if all(r.valid for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
