"""`payledger bills reconcile` as an operator runs it, against the sandbox on loopback, on SQLite and
PostgreSQL ([protocol: Daily bills]): the report, each kind of difference, the exit codes, several
days (`--until`), several merchants, and `--follow` retrying a bill that is not ready.

The ledger learns of the day's payments and refund as it does in production: the sandbox delivers
signed notifications to the ledger's app. The expected figures are worked out here from the orders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.bootstrap import bootstrap
from ledger.settings import Settings
from ledger.wechatpay.bills import BEIJING
from ledger.wechatpay.sandbox.server import Sandbox
from projections.bills.reports import BillReport
from projections.bills.schedule import RETRY_AFTER, follow_bills, latest_due
from tests.support.cli import clean_env, following, payledger
from tests.support.servers import running

TRADE_BILL = "/v3/bill/tradebill"


@dataclass
class World:
    sandbox: Sandbox
    env: dict[str, str]  # a clean environment with the ledger's settings for the sandbox
    api: httpx.Client  # the ledger's app, to which the sandbox delivers notifications
    day: dt.date  # today in Beijing: the sandbox bills a day at once

    @property
    def mchid(self) -> str:
        return self.sandbox.mchid

    def sell(self, out_trade_no: str, total: int, *, register: bool = True, notify: bool = True) -> str:
        self.sandbox.create_order(out_trade_no, total, "测试商品")
        if register:
            answer = self.api.post("/orders", json={"out_trade_no": out_trade_no, "amount_total": total})
            assert answer.status_code == 201, answer.text
        transaction_id = self.sandbox.pay(out_trade_no, drop=not notify)
        self.sandbox.wait_idle(10)
        return transaction_id

    def a_day(self) -> dict[str, str]:
        """BILL-1 (88.00) and BILL-2 (100.00) paid, 30.00 of BILL-1 refunded; their transaction ids."""
        ids = {no: self.sell(no, total) for no, total in (("BILL-1", 8800), ("BILL-2", 10000))}
        self.sandbox.refund("BILL-1", "BILL-R-1", 3000)
        self.sandbox.wait_idle(10)
        assert self.api.get("/orders/BILL-1").json()["refunded_total"] == 3000
        return ids

    def bills(self, *args: str) -> subprocess.CompletedProcess[str]:
        return payledger("bills", "reconcile", *args, env=self.env)


@contextlib.contextmanager
def bills_world(tmp_path: Path, database_url: str) -> Iterator[World]:
    sandbox = Sandbox(seed=7, time_scale=1000)
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        env["LEDGER_DATABASE_URL"] = database_url
        app = create_app(Settings.load(env), background=False)
        with running(app) as ledger_url, httpx.Client(base_url=ledger_url, timeout=30) as api:
            sandbox.notify_url = f"{ledger_url}/wechatpay/notify"
            yield World(sandbox, {**clean_env(), **env}, api, dt.datetime.now(BEIJING).date())


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    with bills_world(tmp_path, database_url) as w:
        yield w


# -- one day, one merchant ------------------------------------------------------------------------------


def test_a_day_that_agrees_prints_its_totals_exits_0_and_a_second_run_fetches_nothing(world: World) -> None:
    world.a_day()
    result = world.bills("--date", world.day.isoformat())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"bills {world.mchid} {world.day} (Beijing day): agreed"
    assert lines[1].startswith("  trade bill: 3 line(s), 2 payment(s), 1 refund(s); sha1 ")
    # Fees 0.6% to 5 decimals of yuan: 0.52800 + 0.60000 - 0.18000 = 0.94800 yuan = 94.800 fen.
    assert lines[2] == "  totals (fen): payments 18800, refunds 3000, fees 94.800, net 15705.200"
    # Fund flow: 88.00 + 100.00 in, 0.18 fee returned; fees 0.53 + 0.60 and the 30.00 refund out.
    assert lines[3] == "  fund-flow bill: 6 line(s), income 18818 fen, expense 3113 fen"
    assert "differences" not in result.stdout
    assert world.sandbox.request_count(TRADE_BILL) == 1

    again = world.bills("--date", world.day.isoformat(), "--mchid", world.mchid, "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["mchid"], report["bill_date"], report["status"]) == (world.mchid, world.day.isoformat(), "agreed")
    assert report["bill"]["rows"] == 3 and report["bill"]["payments"] == 2 and report["bill"]["refunds"] == 1
    assert report["totals"]["payments"] == 18800 and report["totals"]["net"] == "15705.200"
    assert report["discrepancies"] == [] and report["reason"] is None
    assert world.sandbox.request_count(TRADE_BILL) == 1, "the kept bill is read again, not fetched"


@pytest.mark.parametrize(
    ("fault", "kind", "bill", "ledger"),
    [
        ("amount_changed", "amount_mismatch", "8801 fen", "8800 fen"),
        ("missing_row", "missing_in_bill", "none", "8800 fen"),
    ],
)
def test_a_difference_is_printed_exits_1_and_shows_in_the_orders_history(
    world: World, fault: str, kind: str, bill: str, ledger: str
) -> None:
    """The sandbox's fault changes (or leaves out) the bill's first line: BILL-1's payment."""
    ids = world.a_day()
    world.sandbox.set_bill_fault(world.day, fault)
    result = world.bills("--date", world.day.isoformat())
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines() or [result.stderr]
    assert lines[0] == f"bills {world.mchid} {world.day} (Beijing day): discrepancies, 1 unresolved"
    differences = lines[lines.index("  differences:") + 1 :]
    assert differences == [
        f"    {kind:<17}  out_trade_no=BILL-1 transaction_id={ids['BILL-1']}  bill {bill}, ledger {ledger}  UNRESOLVED"
    ]
    history = payledger("history", "BILL-1", env=world.env)
    assert history.returncode == 0, history.stderr
    (line,) = [line for line in history.stdout.splitlines() if "BillDiscrepancy" in line]
    assert line.startswith("<>")
    assert f"{kind} in the bill of {world.day}: transaction_id={ids['BILL-1']}" in line
    assert f"evidence=bill:trade:{world.day}:" in line
    assert "bill_discrepancies=1" in history.stdout.splitlines()[1]

    again = world.bills("--date", world.day.isoformat(), "--json")
    assert again.returncode == 1
    (found,) = json.loads(again.stdout)["discrepancies"]
    assert (found["kind"], found["out_trade_no"], found["resolved"]) == (kind, "BILL-1", False)
    history = payledger("history", "BILL-1", env=world.env)
    assert history.stdout.count("BillDiscrepancy") == 1, "once per bill, however often the day is run"


def test_a_payment_the_ledger_never_heard_of_is_found_queried_and_resolved(world: World) -> None:
    world.a_day()
    transaction_id = world.sell("BILL-3", 4200, register=False, notify=False)
    result = world.bills("--date", world.day.isoformat())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"bills {world.mchid} {world.day} (Beijing day): agreed, 1 difference(s), all resolved"
    assert lines[-1] == (
        f"    missing_in_ledger  out_trade_no=BILL-3 transaction_id={transaction_id}"
        "  bill 4200 fen, ledger 4200 fen  resolved"
    )
    order = world.api.get("/orders/BILL-3").json()
    assert (order["trade_state"], order["transaction_id"]) == ("SUCCESS", transaction_id)


def test_a_bill_not_ready_exits_2_with_the_reason_and_is_had_once_ready(world: World) -> None:
    world.a_day()
    world.sandbox.set_bill_fault(world.day, "not_ready")
    result = world.bills("--date", world.day.isoformat())
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines() == [
        f"bills {world.mchid} {world.day} (Beijing day): not_ready",
        "  the bill could not be had: trade bill: WeChat Pay bill not ready yet",
    ]
    world.sandbox.set_bill_fault(world.day, "corrupted")
    corrupted = world.bills("--date", world.day.isoformat(), "--json")
    assert corrupted.returncode == 2
    report = json.loads(corrupted.stdout)
    assert (report["status"], report["reason"]) == ("failed", "trade bill: WeChat Pay bill does not match its hash")
    world.sandbox.set_bill_fault(world.day, None)
    assert world.bills("--date", world.day.isoformat()).returncode == 0


def test_the_wrong_date_or_merchant_is_refused(world: World) -> None:
    tomorrow = world.day + dt.timedelta(days=1)
    future = world.bills("--date", tomorrow.isoformat())
    assert future.returncode == 1 and "in the future" in future.stderr
    unknown = world.bills("--mchid", "1900000999")
    assert unknown.returncode == 1
    assert "merchant 1900000999 is not configured to call WeChat Pay" in unknown.stderr
    malformed = world.bills("--date", "2026-5-4")
    assert malformed.returncode == 2 and "YYYY-MM-DD" in malformed.stderr


def test_the_default_day_is_yesterday_in_beijing(world: World) -> None:
    result = world.bills("--json")
    assert result.returncode == 0, result.stderr
    yesterday = dt.datetime.now(BEIJING).date() - dt.timedelta(days=1)
    assert json.loads(result.stdout)["bill_date"] == yesterday.isoformat()
    assert json.loads(result.stdout)["status"] == "empty"  # the sandbox sold nothing yesterday


# -- several days --------------------------------------------------------------------------------------------


def test_until_reconciles_every_day_in_order_with_a_progress_bar_only_on_a_terminal(world: World) -> None:
    world.a_day()
    days = [world.day - dt.timedelta(days=n) for n in (2, 1, 0)]
    span = ("--date", days[0].isoformat(), "--until", world.day.isoformat())
    piped = world.bills(*span, "--json")
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "", "no progress bar when stderr is not a terminal"
    reports = json.loads(piped.stdout)
    assert [(r["bill_date"], r["status"]) for r in reports] == [
        (days[0].isoformat(), "empty"),
        (days[1].isoformat(), "empty"),
        (world.day.isoformat(), "agreed"),
    ]
    on_terminal = payledger("bills", "reconcile", *span, env={**world.env, "FORCE_COLOR": "1"})
    assert on_terminal.returncode == 0, on_terminal.stderr
    bar = on_terminal.stderr
    assert "reconciling bills" in bar and "3/3" in bar and "runs/s" in bar and "ETA" in bar, bar
    heads = [line for line in on_terminal.stdout.splitlines() if line.startswith("bills ")]
    assert heads == [
        f"bills {world.mchid} {days[0]} (Beijing day): empty",
        f"bills {world.mchid} {days[1]} (Beijing day): empty",
        f"bills {world.mchid} {world.day} (Beijing day): agreed",
    ]
    one = world.bills("--date", world.day.isoformat(), "--until", world.day.isoformat(), "--json")
    assert [r["status"] for r in json.loads(one.stdout)] == ["agreed"], "with --until, always a list"

    backwards = world.bills("--date", world.day.isoformat(), "--until", days[0].isoformat())
    assert backwards.returncode == 1 and "--until is before --date" in backwards.stderr
    tomorrow = (world.day + dt.timedelta(days=1)).isoformat()
    future = world.bills("--date", world.day.isoformat(), "--until", tomorrow)
    assert future.returncode == 1 and "in the future" in future.stderr and future.stdout == ""
    assert world.bills("--until", world.day.isoformat(), "--follow").returncode == 2


# -- several merchants ------------------------------------------------------------------------------------


def test_every_merchant_is_reconciled_and_the_exit_code_is_the_worst(tmp_path: Path, database_url: str) -> None:
    first, second = Sandbox(mchid="1900000109", seed=1), Sandbox(mchid="1900000222", seed=2)
    day = dt.datetime.now(BEIJING).date() - dt.timedelta(days=1)
    second.set_bill_fault(day, "not_ready")
    with running(first.app) as first_url, running(second.app) as second_url:
        tables = []
        for sandbox, url in ((first, first_url), (second, second_url)):
            env = sandbox.write_ledger_config(tmp_path / sandbox.mchid, url)
            settings = sorted(env.items())  # every WECHATPAY_* key, the APIv2 key included, is a TOML key too
            table = "\n".join(f'{k.removeprefix("WECHATPAY_").lower()} = "{v}"' for k, v in settings)
            tables.append(f"[[merchants]]\n{table}\n")
        config = tmp_path / "payledger.toml"
        config.write_text(f'database_url = "{database_url}"\n\n' + "\n".join(tables))
        env = {**clean_env(), "LEDGER_CONFIG": str(config)}
        as_json = payledger("bills", "reconcile", "--json", env=env)
        text = payledger("bills", "reconcile", env=env)
        one = payledger("bills", "reconcile", "--mchid", "1900000109", "--json", env=env)
    assert as_json.returncode == 2, as_json.stderr
    reports = json.loads(as_json.stdout)
    assert [(r["mchid"], r["bill_date"], r["status"]) for r in reports] == [
        ("1900000109", day.isoformat(), "empty"),
        ("1900000222", day.isoformat(), "not_ready"),
    ]
    assert text.returncode == 2
    assert f"bills 1900000109 {day} (Beijing day): empty" in text.stdout
    assert f"bills 1900000222 {day} (Beijing day): not_ready" in text.stdout
    assert one.returncode == 0 and json.loads(one.stdout)["status"] == "empty"


# -- --follow ---------------------------------------------------------------------------------------------


def test_follow_retries_a_bill_not_ready_thirty_minutes_later_until_it_is_had(world: World) -> None:
    """The loop as `--follow` runs it, on the real services and the sandbox, with a clock that starts at
    10:00 Beijing time tomorrow (so today's bills are the ones due) and moves on instead of sleeping."""
    world.a_day()
    world.sandbox.set_bill_fault(world.day, "not_ready")
    now = [dt.datetime.combine(world.day + dt.timedelta(days=1), dt.time(10), tzinfo=BEIJING)]
    stop = threading.Event()
    runs: list[tuple[dt.datetime, str]] = []

    def wait(seconds: float) -> bool:
        now[0] += dt.timedelta(seconds=seconds)
        return stop.is_set()

    def on_report(report: BillReport) -> None:
        runs.append((now[0], report.status))
        if report.status == "not_ready" and len(runs) == 2:
            world.sandbox.set_bill_fault(world.day, None)  # WeChat has made the bill meanwhile
        if report.status == "agreed":
            stop.set()

    services = bootstrap(Settings.load(world.env))
    try:
        follow_bills(services.bills, [world.mchid], stop, on_report=on_report, clock=lambda: now[0], wait=wait)
    finally:
        services.close()
    start = now[0] - 2 * RETRY_AFTER
    assert runs == [(start, "not_ready"), (start + RETRY_AFTER, "not_ready"), (start + 2 * RETRY_AFTER, "agreed")]
    assert start == dt.datetime.combine(world.day + dt.timedelta(days=1), dt.time(10), tzinfo=BEIJING)
    assert world.sandbox.request_count(TRADE_BILL) == 3


def test_follow_command_prints_each_run_keeps_waiting_and_stops_cleanly_on_sigterm(world: World) -> None:
    """From two days ago (always due) on: its bill is not ready, printed, and the command keeps running
    (the retry is 30 minutes away); every later day due is run too; SIGTERM ends it with 0."""
    day = world.day - dt.timedelta(days=2)
    world.sandbox.set_bill_fault(day, "not_ready")
    due = [day + dt.timedelta(days=n) for n in range((latest_due(dt.datetime.now(dt.UTC)) - day).days + 1)]
    command = ["bills", "reconcile", "--follow", "--json", "--date", day.isoformat()]
    with following(*command, env=world.env) as (process, lines):
        deadline = time.monotonic() + 30
        while len(lines) < len(due) and time.monotonic() < deadline:
            assert process.poll() is None, "bills reconcile --follow exited"
            time.sleep(0.05)
        time.sleep(0.5)
        assert process.poll() is None, "it waits for the retry"
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    reports = [json.loads(line) for line in lines]
    expected = [(day.isoformat(), "not_ready")] + [(later.isoformat(), "empty") for later in due[1:]]
    assert [(r["bill_date"], r["status"]) for r in reports] == expected
