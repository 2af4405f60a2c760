"""Daily-bill benchmark: a large trade bill fetched, read and reconciled against a ledger, as each morning.

Issue 2/8 asks for a 1,000,000-row bill reconciled against a ledger holding the same payments, on
PostgreSQL, in under 60 s with resident memory under 300 MB. In one run:

* generation (not timed): an ALL trade bill of N rows in WeChat's format ([protocol: Daily bills]:
  BOM, CRLF, backtick-prefixed values, payments and about 10% refunds, summary = the column sums),
  gzipped to a temp file, its SHA-1 taken; and a small valid fund-flow bill (`--fundflow-rows`);
* seeding (not timed, its time printed): a fresh ledger (a new PostgreSQL schema, dropped afterwards,
  or a SQLite file) holding the same payments and refunds, built with the domain's commands in a
  child processes (so their memory is not counted): per payment line an order opened, registered and
  decided by a status-query answer (`record_query`: `PaymentSucceeded` at the line's time, +08:00);
  per refund line an order paid the day before and a REFUND.SUCCESS callback (`receive`:
  `RefundSucceeded` with the line's refund_id and amount); appended with `Ledger.save_all` in large
  batches, then the orders view built by `rebuild_orders_view` and, on PostgreSQL, the tables
  ANALYZEd (what autovacuum does on a running server; the test server runs without it, and without
  statistics the planner answers each batch of lookups by scanning the view). Planted differences:
  3 payments and 1 refund the ledger lacks, 2 payments and 1 refund off by one fen, 2 payments of
  the day the bill lacks (at 00:00:00 and 23:59:59 Beijing time); the report must name exactly those;
* fetch + parse (the baseline): `apply_trade_bill`, `download_bill_to_temp(client.download_bill, ...)`
  (HTTP, gunzip, SHA-1, to disk), `read_trade_bill` over the file with every row consumed and the
  summary checked, and the same file read by `csv.DictReader` with no checks (a naive integration);
* reconcile (the verdict): `BillReconciler.reconcile(mchid, day)` end to end, wired as
  `Services.bills` wires it, with no query client (query=None: the payments the ledger lacks are
  reported, not queried). Both bills are served by a child process on 127.0.0.1 (its memory is not
  counted) with signed apply answers. Its phases are timed by wrappers around what the reconciler
  is given (client, ledger, facts, reports, catch-up), in wall-clock time and this process's CPU
  time; the service's code is not changed.

The process's resident memory is sampled every 0.2 s; the peak over the reconciliation is the
figure for the verdict.

    python bench/bills.py [--rows 1000000] [--store postgres|sqlite] [--refunds 0.1] [--seed 1]
                          [--fundflow-rows 1000] [--no-analyze]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import csv
import datetime as dt
import functools
import gzip
import hashlib
import json
import multiprocessing
import os
import queue
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import psycopg
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from memory import rss_mb  # bench/memory.py, beside this script
from seeding import POSTGRES_URL, callback_evidence, drop_scratch_store, scratch_store  # bench/seeding.py
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ledger.application import build_ledger
from ledger.bill_matching import DiscrepancyKind
from ledger.domain import PaymentOrder, QueryEvidence
from ledger.store.sql import Database
from ledger.wechatpay.bill_download import BillDownload, BillTicket, download_bill_to_temp
from ledger.wechatpay.bills import read_trade_bill
from ledger.wechatpay.client import WeChatPayClient
from ledger.wechatpay.sandbox.bills import FUND_HEADER, FUND_SUMMARY_HEADER, TRADE_HEADER, TRADE_SUMMARY_HEADER
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.bills.lines import BillLines
from projections.bills.reports import BillReport, BillReports
from projections.bills.service import BillReconciler
from projections.read_model.reader import LiveOrdersView
from projections.read_model.rebuild import rebuild_orders_view
from projections.read_model.runner import catch_up_orders_view

MCHID, APPID = "1900000109", "wxd678efh567hg6787"
MERCHANT_SERIAL = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115"
BILL_DATE = dt.date(2026, 12, 2)
SECONDS, MEGABYTES = 60.0, 300.0
SEED_BATCH = 2_000  # orders per `save_all` (one transaction, ~9,000 events)
SEED_PROCESSES = 2  # building the events is Python: one process per core

# Differences planted in the ledger, each at the first fitting bill line from a share of the bill on.
PLANTS = (
    ("missing_payment", 0.1),
    ("payment_amount", 0.3),
    ("missing_refund", 0.4),
    ("missing_payment", 0.5),
    ("refund_amount", 0.6),
    ("payment_amount", 0.7),
    ("missing_payment", 0.9),
)
EXTRA_TIMES = ("00:00:00", "23:59:59")  # the ledger's payments of the day that the bill lacks


def yuan(fen: int) -> str:
    return f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def fee(units: int) -> str:
    """A fee in 0.00001 yuan (0.6% of a fen amount is exactly 6 of them per fen), to 5 decimals."""
    return f"{'-' if units < 0 else ''}{abs(units) // 100_000}.{abs(units) % 100_000:05d}"


# -- the bill's lines, generated the same way for the bill and for the ledger ------------------------


class Line(NamedTuple):
    number: int  # the line's position in the bill, from 0
    when: str  # Beijing time, as the bill writes it
    total: int  # fen
    refund: int | None  # fen, on a refund line
    payer: str

    @property
    def out_trade_no(self) -> str:
        return f"BENCH{BILL_DATE:%Y%m%d}{self.number:010d}"

    @property
    def transaction_id(self) -> str:
        return f"42000{self.number:023d}"

    @property
    def refund_id(self) -> str:
        return f"503000{self.number:023d}"

    @property
    def out_refund_no(self) -> str:
        return f"RF{self.number:010d}"


def bill_lines(rows: int, refund_share: float, seed: int) -> Iterator[Line]:
    rng = random.Random(seed)
    day = dt.datetime.combine(BILL_DATE, dt.time())
    for i in range(rows):
        when = (day + dt.timedelta(seconds=i * 86_400 // rows)).strftime("%Y-%m-%d %H:%M:%S")
        total = rng.randint(1, 200_000)
        payer = f"oUpF8u{rng.getrandbits(64):016x}{i % 997:06d}"
        refund = rng.randint(1, total) if rng.random() < refund_share else None
        yield Line(i, when, total, refund, payer)


class Generated(NamedTuple):
    sha1: str
    size: int
    payments: int
    refunds: int
    settle: int
    refunded: int
    plan: dict[int, str]  # line index -> the difference planted in the ledger there


def generate(path: Path, rows: int, refund_share: float, seed: int) -> Generated:
    """Write the gzipped bill; choose the lines where the ledger will differ from it."""
    sha1, size = hashlib.sha1(usedforsecurity=False), 0
    settle = refunded = fees = payments = refunds = 0
    pending = [(int(share * rows), name) for name, share in PLANTS]
    plan: dict[int, str] = {}
    with gzip.GzipFile(path, "wb", compresslevel=6, mtime=0) as out:

        def emit(lines: list[str]) -> None:
            nonlocal size
            data = "".join(line + "\r\n" for line in lines).encode()
            sha1.update(data)
            size += len(data)
            out.write(data)

        emit(["\ufeff" + ",".join(TRADE_HEADER)])
        batch: list[str] = []
        for line in bill_lines(rows, refund_share, seed):
            i, when, total, amount = line.number, line.when, line.total, line.refund
            order, txn = line.out_trade_no, line.transaction_id
            if amount is not None:
                values = [when, APPID, MCHID, "0", "", txn, order, line.payer, "JSAPI", "REFUND", "OTHERS", "CNY",
                          "0.00", "0.00", line.refund_id, line.out_refund_no, yuan(amount), "0.00", "ORIGINAL",
                          "SUCCESS", "测试商品", "", fee(-amount * 6), "0.60%", "0.00", yuan(amount), ""]  # fmt: skip
                refunded += amount
                fees -= amount * 6
                refunds += 1
            else:
                values = [when, APPID, MCHID, "0", "", txn, order, line.payer, "JSAPI", "SUCCESS", "OTHERS", "CNY",
                          yuan(total), "0.00", "0", "0", "0.00", "0.00", "", "", "测试商品", f"batch={i % 7}",
                          fee(total * 6), "0.60%", yuan(total), "0.00", ""]  # fmt: skip
                settle += total
                fees += total * 6
                payments += 1
            for planted in pending:
                if planted[0] <= i and _fits(planted[1], line):
                    plan[i] = planted[1]
                    pending.remove(planted)
                    break
            batch.append(",".join("`" + value for value in values))
            if len(batch) == 10_000:
                emit(batch)
                batch = []
        emit(batch)
        summary = [str(rows), yuan(settle), yuan(refunded), "0.00", fee(fees), yuan(settle), yuan(refunded)]
        emit([",".join(TRADE_SUMMARY_HEADER), ",".join("`" + value for value in summary)])
    if pending:
        raise SystemExit(f"--rows {rows} is too few to plant every difference")
    return Generated(sha1.hexdigest(), size, payments, refunds, settle, refunded, plan)


def _fits(plant: str, line: Line) -> bool:
    if plant.endswith("_payment") or plant == "payment_amount":
        return line.refund is None
    if plant == "refund_amount":  # one fen more than the bill, still within what was paid
        return line.refund is not None and line.refund < line.total
    return line.refund is not None


def generate_fundflow(path: Path, rows: int) -> tuple[str, int]:
    """A valid fund-flow bill of `rows` movements (a payment in, its fee out, in pairs); its SHA-1 and size."""
    lines = ["\ufeff" + ",".join(FUND_HEADER)]
    balance = income = expense = incomes = expenses = 0
    for n in range(rows):
        i, paying = n // 2, n % 2 == 0
        fen = 1_000 + i % 50_000 if paying else (1_000 + i % 50_000) * 6 // 1_000
        when = (dt.datetime.combine(BILL_DATE, dt.time()) + dt.timedelta(seconds=n * 86_400 // max(rows, 1))).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        balance += fen if paying else -fen
        if paying:
            income, incomes = income + fen, incomes + 1
        else:
            expense, expenses = expense + fen, expenses + 1
        values = [when, f"42000{i:023d}", f"{n:028d}", "交易", "交易" if paying else "扣除交易手续费",
                  "收入" if paying else "支出", yuan(fen), yuan(balance), "system", "",
                  f"BENCH{BILL_DATE:%Y%m%d}{i:010d}" if paying else ""]  # fmt: skip
        lines.append(",".join("`" + value for value in values))
    lines.append(",".join(FUND_SUMMARY_HEADER))
    lines.append(",".join("`" + v for v in (str(rows), str(incomes), yuan(income), str(expenses), yuan(expense))))
    data = "".join(line + "\r\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data, mtime=0))
    return hashlib.sha1(data, usedforsecurity=False).hexdigest(), len(data)


# -- the ledger holding the same payments ----------------------------------------------------------


def _rfc3339(day: dt.date, bill_time: str) -> str:
    return f"{day.isoformat()}T{bill_time[-8:]}+08:00"


def _paid(order: PaymentOrder, transaction_id: str, total: int, success_time: str, payer: str) -> None:
    """A status-query answer deciding the payment, as `OrderQuery` records one."""
    transaction = {
        "appid": APPID,
        "mchid": MCHID,
        "out_trade_no": order.out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": success_time,
        "payer": {"openid": payer},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }
    request_id = f"08F78BB5AF06{order.out_trade_no[-10:]}"
    order.record_query(
        QueryEvidence(
            query="out-trade-no",
            status_code=200,
            raw_body=json.dumps(transaction, ensure_ascii=False, separators=(",", ":")),
            response_headers={"Request-ID": request_id},
            key_serial="PUB_KEY_ID_0001",
            request_id=request_id,
            transaction=transaction,
            queried_at=dt.datetime.fromisoformat(success_time) + dt.timedelta(seconds=5),
        )
    )


def _refunded(order: PaymentOrder, line: Line, amount: int) -> None:
    """A REFUND.SUCCESS callback, as the verifier hands it to the domain."""
    success_time = _rfc3339(BILL_DATE, line.when)
    resource = {
        "mchid": MCHID,
        "out_trade_no": line.out_trade_no,
        "transaction_id": line.transaction_id,
        "out_refund_no": line.out_refund_no,
        "refund_id": line.refund_id,
        "refund_status": "SUCCESS",
        "success_time": success_time,
        "user_received_account": "支付用户零钱",
        "amount": {"total": line.total, "refund": amount, "payer_total": line.total, "payer_refund": amount},
    }
    evidence = callback_evidence(
        str(uuid.UUID(int=line.number)),
        "REFUND.SUCCESS",
        resource,
        create_time=success_time,
        received_at=dt.datetime.fromisoformat(success_time),
    )
    order.receive(evidence)


def extra_no(k: int) -> tuple[str, str]:
    """(out_trade_no, transaction_id) of the ledger's k-th payment of the day that the bill lacks."""
    return f"BENCHX{BILL_DATE:%Y%m%d}{k:04d}", f"42009{k:023d}"


def orders_for(line: Line, planted: str | None) -> PaymentOrder | None:
    """The ledger's order for one bill line, as it should be (or with the difference `planted`)."""
    if planted == "missing_payment":
        return None
    order = PaymentOrder.open(MCHID, line.out_trade_no)
    if line.refund is None:
        total = line.total + (1 if planted == "payment_amount" else 0)
        order.register(total, "CNY", "测试商品")
        _paid(order, line.transaction_id, total, _rfc3339(BILL_DATE, line.when), line.payer)
        return order
    order.register(line.total, "CNY", "测试商品")
    # Paid the day before, at the same time of day: inside the window `payments_on` reads, left out by the matcher.
    _paid(order, line.transaction_id, line.total, _rfc3339(BILL_DATE - dt.timedelta(days=1), line.when), line.payer)
    if planted != "missing_refund":
        _refunded(order, line, line.refund + (1 if planted == "refund_amount" else 0))
    return order


def seed_ledger(
    url: str, rows: int, refund_share: float, seed: int, plan: dict[int, str], part: int, parts: int
) -> int:
    """Append the orders of every `parts`-th bill line from `part` (in a child process, beside the
    others: building events is Python, so it is shared among processes); how many orders."""
    started = time.perf_counter()
    ledger = build_ledger(url)
    batches: queue.Queue[list[PaymentOrder] | None] = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def write() -> None:  # the database works on one batch while the next is built
        while (batch := batches.get()) is not None:
            try:
                if not failed:
                    ledger.save_all(batch)
            except BaseException as exc:
                failed.append(exc)

    writer = threading.Thread(target=write, name="seed-writer")
    writer.start()
    orders = 0
    batch: list[PaymentOrder] = []
    try:
        for line in bill_lines(rows, refund_share, seed):
            if line.number % parts != part:
                continue
            order = orders_for(line, plan.get(line.number))
            if order is not None:
                batch.append(order)
            if len(batch) >= SEED_BATCH:
                batches.put(batch)
                orders += len(batch)
                batch = []
                if failed:
                    raise failed[0]
                if part == 0 and orders % 100_000 < SEED_BATCH:
                    rate = orders * parts / (time.perf_counter() - started)
                    print(f"  seeded ~{orders * parts:,} orders ({rate:,.0f}/s)", file=sys.stderr, flush=True)
        for k, at in enumerate(EXTRA_TIMES if part == 0 else ()):
            no, txn = extra_no(k)
            order = PaymentOrder.open(MCHID, no)
            order.register(1_000 + k, "CNY", "测试商品")
            _paid(order, txn, 1_000 + k, f"{BILL_DATE.isoformat()}T{at}+08:00", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
            batch.append(order)
        batches.put(batch)
        orders += len(batch)
    finally:
        batches.put(None)
        writer.join()
        ledger.close()
    if failed:
        raise failed[0]
    return orders


def seed_all(url: str, rows: int, refund_share: float, seed: int, plan: dict[int, str]) -> None:
    """The ledger's events, appended by `SEED_PROCESSES` children, then the orders view built (bulk)."""
    started = time.perf_counter()
    fork = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(SEED_PROCESSES, mp_context=fork) as pool:
        parts = [
            pool.submit(seed_ledger, url, rows, refund_share, seed, plan, part, SEED_PROCESSES)
            for part in range(SEED_PROCESSES)
        ]
        orders = sum(part.result() for part in parts)
        appended = time.perf_counter() - started
        rebuild = pool.submit(rebuild_orders_view, url).result()
    print(
        f"seeded in {time.perf_counter() - started:.0f} s (not timed below): {orders:,} orders, "
        f"{rebuild.events:,} events appended in {appended:.0f} s ({rebuild.events / appended:,.0f} events/s; "
        f"{SEED_PROCESSES} processes, batches of {SEED_BATCH:,} orders); orders view built by "
        f"rebuild_orders_view in {time.perf_counter() - started - appended:.0f} s: {rebuild}"
    )


def analyze(schema: str) -> float:
    """ANALYZE every table of the schema: the planner's statistics, as autovacuum keeps them on a running
    server (the test server runs with autovacuum off, and a freshly built view has none)."""
    started = time.perf_counter()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
        for (table,) in tables:
            conn.execute(f'ANALYZE "{schema}"."{table}"')
    return time.perf_counter() - started


# -- WeChat's side ---------------------------------------------------------------------------------


def serve(factory: NotificationFactory, bills: dict[str, tuple[Path, str]], port: int) -> None:
    """The WeChat side, in a child process: signed apply answers, then the gzip files, streamed from disk."""

    def apply(kind: str) -> Callable[[Request], Any]:
        async def answer(request: Request) -> Response:
            url = f"http://127.0.0.1:{port}/v3/billdownload/file?token={kind}&tartype=gzip"
            body = json.dumps({"download_url": url, "hash_type": "SHA1", "hash_value": bills[kind][1]}).encode()
            return Response(body, media_type="application/json", headers=factory.sign_headers(body))

        return answer

    async def download(request: Request) -> Response:
        return FileResponse(bills[request.query_params["token"]][0], media_type="application/x-gzip")

    app = Starlette(
        routes=[
            Route("/v3/bill/tradebill", apply("trade"), methods=["GET"]),
            Route("/v3/bill/fundflowbill", apply("fundflow"), methods=["GET"]),
            Route("/v3/billdownload/file", download),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (the server's and the database's are not in it)."""
    times = os.times()
    return times.user + times.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the bench server did not start")


# -- measuring -------------------------------------------------------------------------------------


class Peaks:
    """Peak RSS per phase, sampled every 0.2 s (and at each phase change)."""

    def __init__(self) -> None:
        self.phase, self.peaks, self._done = "start", {"start": rss_mb()}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _note(self) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss_mb())

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self._note()

    def enter(self, phase: str) -> None:
        self._note()
        self.phase = phase
        self._note()

    def stop(self) -> None:
        self._note()
        self._done.set()
        self._thread.join()


class Timeline:
    """Time spent in each wrapped call (summed per name, wall clock and this process's CPU), the moments
    marked, and the sampler's phase."""

    def __init__(self, peaks: Peaks) -> None:
        self.peaks = peaks
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.cpu: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()
        self.marks: dict[str, tuple[float, float]] = {}
        self.results: dict[str, Any] = {}

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), cpu_seconds()

    def mark(self, name: str, phase: str | None = None) -> None:
        self.marks[name] = self.now()
        if phase is not None:
            self.peaks.enter(phase)

    @contextlib.contextmanager
    def spent(self, name: str, phase: str | None = None, then: str | None = None) -> Iterator[None]:
        if phase is not None:
            self.peaks.enter(phase)
        started = self.now()
        self.marks.setdefault(f"{name} start", started)
        try:
            yield
        finally:
            ended = self.now()
            self.seconds[name] += ended[0] - started[0]
            self.cpu[name] += ended[1] - started[1]
            self.calls[name] += 1
            self.marks[f"{name} end"] = ended
            if then is not None:
                self.peaks.enter(then)

    def wrap(self, name: str, call: Callable[..., Any], phase: str | None = None, then: str | None = None) -> Any:
        @functools.wraps(call)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.spent(name, phase, then):
                result = call(*args, **kwargs)
            self.results[name] = result
            return result

        return timed

    def between(self, start: str, end: str) -> tuple[float, float]:
        """(wall, CPU) seconds from one mark to another."""
        (wall0, cpu0), (wall1, cpu1) = self.marks[start], self.marks[end]
        return wall1 - wall0, cpu1 - cpu0


class TimedClient:
    """The `BillClient` the reconciler is given: the real client, each call timed."""

    def __init__(self, client: WeChatPayClient, timeline: Timeline) -> None:
        self._client, self._t = client, timeline
        self._kind = "trade"

    def apply_trade_bill(self, bill_date: dt.date) -> BillTicket:
        self._kind = "trade"
        with self._t.spent("trade: apply", phase="trade: fetch"):
            return self._client.apply_trade_bill(bill_date)

    def apply_fundflow_bill(self, bill_date: dt.date) -> BillTicket:
        self._kind = "fund-flow"
        with self._t.spent("fund-flow: apply"):
            return self._client.apply_fundflow_bill(bill_date)

    def download_bill(self, ticket: BillTicket, into: BinaryIO) -> BillDownload:
        with self._t.spent(f"{self._kind}: download"):
            return self._client.download_bill(ticket, into)


def reconciler_for(
    url: str, client: WeChatPayClient, folder: Path, timeline: Timeline
) -> tuple[Any, Callable[[], None]]:
    """`BillReconciler` wired as `Services.bills` wires it (query=None), its collaborators timed."""
    database = Database(url)
    reports = BillReports(database)
    orders = LiveOrdersView(database)
    ledger = build_ledger(url)
    t = timeline
    # Instance attributes over the bound methods: the service's code is left as it is.
    store_bill = ledger.store_bill

    def keep(mchid: str, bill_date: dt.date, kind: str, *args: Any) -> bool:
        label = "trade" if kind == "trade" else "fund-flow"
        with t.spent(f"{label}: keep", phase="trade: keep" if kind == "trade" else None):
            return store_bill(mchid, bill_date, kind, *args)

    setattr(ledger, "store_bill", keep)  # noqa: B010
    setattr(  # noqa: B010
        ledger,
        "record_bill_discrepancies",
        t.wrap("discrepancies", ledger.record_bill_discrepancies, phase="discrepancies", then="fund-flow"),
    )
    setattr(reports, "save", t.wrap("report saved", reports.save, phase="save"))  # noqa: B010
    lines = BillLines(database)
    setattr(lines, "load", t.wrap("load", lines.load, phase="load"))  # noqa: B010
    setattr(lines, "match", t.wrap("match", lines.match, phase="match"))  # noqa: B010
    catch_up = t.wrap("catch-up", lambda: catch_up_orders_view(url), phase="catch-up")
    reconciler = BillReconciler(
        ledger,
        reports,
        {MCHID: TimedClient(client, timeline)},
        lines,
        orders.current,
        catch_up=catch_up,
        query=None,
        folder=folder,
    )

    def close() -> None:
        orders.close()
        ledger.close()
        database.close()

    return reconciler, close


def lines_kept(url: str) -> int:
    database = Database(url)
    try:
        with database.transaction(write=False) as cur:
            cur.execute(
                database.sql(
                    "SELECT COUNT(*) FROM {lines} WHERE mchid = %s AND bill_date = %s",
                    lines=database.qualify("payledger_bill_lines"),
                ),
                (MCHID, BILL_DATE.isoformat()),
            )
            return int(cur.fetchone()[0])
    finally:
        database.close()


def expected_differences(gen: Generated, rows: int, refund_share: float, seed: int) -> set[tuple[Any, ...]]:
    """(kind, out_trade_no, transaction_id, refund_id, bill amount, ledger amount) of each planted difference."""
    found: set[tuple[Any, ...]] = set()
    for line in bill_lines(rows, refund_share, seed):
        planted = gen.plan.get(line.number)
        if planted is None:
            continue
        key = (line.out_trade_no, line.transaction_id)
        if planted == "missing_payment":
            found.add((DiscrepancyKind.MISSING_IN_LEDGER, *key, None, line.total, None))
        elif planted == "payment_amount":
            found.add((DiscrepancyKind.AMOUNT_MISMATCH, *key, None, line.total, line.total + 1))
        elif planted == "missing_refund":
            found.add((DiscrepancyKind.MISSING_IN_LEDGER, *key, line.refund_id, line.refund, None))
        elif planted == "refund_amount":
            assert line.refund is not None
            found.add((DiscrepancyKind.AMOUNT_MISMATCH, *key, line.refund_id, line.refund, line.refund + 1))
    for k in range(len(EXTRA_TIMES)):
        found.add((DiscrepancyKind.MISSING_IN_BILL, *extra_no(k), None, None, 1_000 + k))
    return found


class Reconciled(NamedTuple):
    report: BillReport
    timeline: Timeline
    rss_before: float


def reconcile_timed(url: str, client: WeChatPayClient, folder: Path, peaks: Peaks) -> Reconciled:
    """`BillReconciler.reconcile` of the bench's merchant and day, end to end, its phases timed."""
    timeline = Timeline(peaks)
    reconciler, close = reconciler_for(url, client, folder, timeline)
    try:
        time.sleep(0.5)  # a sample of the memory before
        rss_before = rss_mb()
        timeline.mark("start", phase="trade: fetch")
        report = reconciler.reconcile(MCHID, BILL_DATE)
        timeline.mark("end", phase="end")
    finally:
        close()
    return Reconciled(report, timeline, rss_before)


def print_reconcile(reconciled: Reconciled, peaks: Peaks, store: str) -> tuple[float, float]:
    """The phases of the reconciliation, their time and memory; (seconds, peak RSS in MB) of the whole."""
    timeline, rows = reconciled.timeline, reconciled.report.rows

    def both(name: str) -> tuple[float, float]:
        return timeline.seconds[name], timeline.cpu[name]

    def plus(*spans: tuple[float, float]) -> tuple[float, float]:
        return sum(span[0] for span in spans), sum(span[1] for span in spans)

    def minus(span: tuple[float, float], *less: tuple[float, float]) -> tuple[float, float]:
        taken = plus(*less)
        return span[0] - taken[0], span[1] - taken[1]

    total = timeline.between("start", "end")
    fundflow = timeline.between("discrepancies end", "report saved start")
    keep = both("trade: keep")
    phases: list[tuple[str, tuple[float, float], str | None]] = [
        ("trade bill: apply", both("trade: apply"), "trade: fetch"),
        ("trade bill: download (HTTP, gunzip, SHA-1, to disk)", both("trade: download"), None),
        ("trade bill: keep (recompress, chunk events appended)", keep, "trade: keep"),
        ("load: parse, lines written (COPY / INSERT, streamed)", both("load"), "load"),
        ("catch-up of the orders view", both("catch-up"), "catch-up"),
        ("match: three joins answering the differences", both("match"), "match"),
        ("discrepancies recorded (events)", both("discrepancies"), "discrepancies"),
        ("fund-flow bill: apply + download + keep + parse", fundflow, "fund-flow"),
        ("report saved", both("report saved"), "save"),
    ]
    top = [span for label, span, _ in phases if not label.startswith(" ") and not label.startswith("trade bill: d")]
    accounted = plus(*top, both("trade: download"))
    print(f"reconcile (RSS before it: {reconciled.rss_before:.0f} MB; CPU = this process's):")
    for label, (wall, cpu), memory in [*phases, ("(between the above)", minus(total, accounted), None)]:
        shown = f"; peak RSS {peaks.peaks.get(memory, 0.0):.0f} MB" if memory else ""
        print(f"  {label:<56} {wall:7.2f} s, CPU {cpu:6.2f} s{shown}")
    peak = max(peaks.peaks.get(p, 0.0) for p in ("trade: fetch", "trade: keep", "load", "catch-up", "match",
                                                  "discrepancies", "fund-flow", "save"))  # fmt: skip
    waiting = "the rest: waiting for a core" if store == "sqlite" else "the rest: the database, or no core free"
    print(
        f"reconcile end to end: {total[0]:.1f} s, {rows / total[0]:,.0f} rows/s, peak RSS {peak:.0f} MB, "
        f"this process's CPU {total[1]:.1f} s ({waiting})"
    )
    return total[0], peak


# -- the run ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--refunds", type=float, default=0.1, help="share of refund rows")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fundflow-rows", type=int, default=1_000, help="rows of the day's fund-flow bill")
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ANALYZE the seeded tables (PostgreSQL), as autovacuum would on a running server",
    )
    args = parser.parse_args()
    print(
        f"daily-bill benchmark: ALL trade bill of {args.rows:,} rows (~{args.refunds:.0%} refunds) for "
        f"{BILL_DATE}, reconciled on {args.store}; fund-flow bill of {args.fundflow_rows:,} rows; seed {args.seed}; "
        f"ANALYZE after seeding: {'yes' if args.analyze and args.store == 'postgres' else 'no'}; "
        f"{os.cpu_count()} CPUs shared with the database (and with whatever else runs); "
        f"Python {sys.version.split()[0]}"
    )
    fork = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="payledger-bills-") as tmp:
        folder = Path(tmp)
        gz = folder / "bill.csv.gz"
        started = time.perf_counter()
        gen = generate(gz, args.rows, args.refunds, args.seed)
        sha1, size = gen.sha1, gen.size
        fundflow_sha1, _ = generate_fundflow(folder / "fundflow.csv.gz", args.fundflow_rows)
        print(
            f"generated in {time.perf_counter() - started:.1f} s (not timed below): {gz.stat().st_size:,} bytes "
            f"gzipped, {size:,} bytes decompressed, sha1 {sha1}; {gen.payments:,} payments, {gen.refunds:,} refunds"
        )

        url, schema = scratch_store(args.store, folder, f"bench_bills_{uuid.uuid4().hex[:8]}")
        server = None
        try:
            seed_all(url, args.rows, args.refunds, args.seed, gen.plan)
            if args.store == "postgres" and args.analyze:
                print(f"statistics: ANALYZE of the schema's tables in {analyze(schema):.0f} s (not timed below)")

            factory = NotificationFactory(mchid=MCHID, appid=APPID)
            port = free_port()
            bills = {"trade": (gz, sha1), "fundflow": (folder / "fundflow.csv.gz", fundflow_sha1)}
            server = fork.Process(target=serve, args=(factory, bills, port))
            server.start()
            wait_listening(port)
            client = WeChatPayClient(
                mchid=MCHID,
                merchant_serial_no=MERCHANT_SERIAL,
                merchant_private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                keys=factory.key_store,
                base_url=f"http://127.0.0.1:{port}",
                max_attempts=1,
            )
            downloads = folder / "downloads"
            downloads.mkdir()
            peaks = Peaks()
            times: dict[str, float] = {}

            def phase(name: str) -> None:
                peaks.enter(name)
                times[name] = time.perf_counter()

            cpu = [cpu_seconds()]
            phase("apply")
            ticket = client.apply_trade_bill(BILL_DATE)
            phase("download")
            path, download = download_bill_to_temp(client.download_bill, ticket, folder=folder)
            phase("parse")
            with path.open("rb") as file:
                bill = read_trade_bill(file)
                count = sum(1 for _ in bill)
                summary = bill.summary
            cpu.append(cpu_seconds())
            phase("baseline")
            with path.open(encoding="utf-8-sig", newline="") as file:
                naive = sum(1 for _ in csv.DictReader(file))
            phase("idle")
            path.unlink()
            reconciled = reconcile_timed(url, client, downloads, peaks)
            peaks.stop()
            client.close()
            kept_lines = lines_kept(url)
        finally:
            if server is not None:
                server.terminate()
                server.join()
            drop_scratch_store(schema)

    # -- what the run must have done ---------------------------------------------------------------
    report, timeline = reconciled.report, reconciled.timeline
    assert download.sha1 == sha1 and download.size == size and count == summary.count == args.rows, "bill mismatch"
    assert naive == args.rows + 2, "the csv baseline reads the rows and the two summary lines"
    found = {
        (d.kind, d.out_trade_no, d.transaction_id, d.refund_id, d.bill_amount, d.ledger_amount)
        for d in report.discrepancies
    }
    expected = expected_differences(gen, args.rows, args.refunds, args.seed)
    assert found == expected, f"differences: {sorted(found - expected)} not planted, {sorted(expected - found)} missed"
    assert len(report.discrepancies) == len(expected) and not any(d.resolved for d in report.discrepancies)
    assert (report.status, report.rows, report.payments, report.refunds) == (
        "discrepancies",
        args.rows,
        gen.payments,
        gen.refunds,
    ), f"report: {report.status}, {report.rows} rows"
    assert report.totals["payments"] == gen.settle and report.totals["refunds"] == gen.refunded
    assert report.totals["fundflow"]["rows"] == args.fundflow_rows
    assert kept_lines == gen.payments + gen.refunds, f"{kept_lines} lines kept"
    opened = sum(1 for planted in gen.plan.values() if planted == "missing_payment")  # streams the ledger lacked
    appended = timeline.results["discrepancies"]
    assert appended == len(expected) + opened, f"{appended} events: one BillDiscrepancy per difference expected"

    # -- figures -----------------------------------------------------------------------------------
    seconds = {name: times[after] - times[name] for name, after in zip(times, list(times)[1:], strict=False)}
    fetch_parse = times["baseline"] - times["apply"]
    fetch_peak = max(peaks.peaks[p] for p in ("apply", "download", "parse"))
    print(f"fetch + parse (the baseline; RSS before it: {peaks.peaks['start']:.0f} MB):")
    for name in ("apply", "download", "parse", "baseline"):
        rate = f", {args.rows / seconds[name]:,.0f} rows/s" if name != "apply" else ""
        print(f"  {name:<9} {seconds[name]:7.2f} s{rate}; peak RSS {peaks.peaks[name]:.0f} MB")
    print(
        f"  summary checked: {summary.count:,} rows, settlement {summary.settlement_total_fen:,} fen, "
        f"refunds {summary.refund_fen:,} fen, fee {summary.fee} yuan"
    )
    print(f"  parse / csv baseline: {seconds['parse'] / seconds['baseline']:.2f}x the time")
    print(
        f"  fetch+parse: {fetch_parse:.1f} s, {args.rows / fetch_parse:,.0f} rows/s, peak RSS {fetch_peak:.0f} MB; "
        f"this process's CPU {cpu[1] - cpu[0]:.1f} s"
    )

    total, peak = print_reconcile(reconciled, peaks, args.store)
    print(
        f"report: {report.status}, {report.rows:,} rows ({report.payments:,} payments, {report.refunds:,} refunds), "
        f"{len(report.discrepancies)} differences, exactly the planted ones; {kept_lines:,} lines kept"
    )
    print(
        f"reconcile / fetch+parse: {total / fetch_parse:.2f}x; reconcile / csv read: {total / seconds['baseline']:.1f}x"
    )
    print(f"verdict < {SECONDS:.0f} s: {'PASS' if total < SECONDS else 'FAIL'} ({total:.1f} s)")
    print(f"verdict < {MEGABYTES:.0f} MB: {'PASS' if peak < MEGABYTES else 'FAIL'} ({peak:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
