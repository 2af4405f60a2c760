"""The payledger commands, run as a user runs them (subprocesses against a sandbox on loopback)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.wechatpay.sandbox.server import Sandbox
from tests.support.cli import CLI, clean_env, following, payledger
from tests.support.servers import free_port, running


def test_demo_finishes_its_script_in_under_30_seconds_and_shows_the_recovered_order(tmp_path: Path) -> None:
    started = time.monotonic()
    result = payledger(
        "demo", "--no-wait", "--port", str(free_port()), "--sandbox-port", str(free_port()), cwd=tmp_path
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30
    out = result.stdout
    assert "DEMO-0003: NOTPAY -> SUCCESS" in out
    assert "DEMO-0003: SUCCESS" in out and "StatusQueried" in out
    assert "DEMO-0001: REFUND  amount_total=2500 refunded_total=700" in out
    assert "refund 700 of DEMO-0001's 2500 fen: answered 201 (accepted; recorded before it was sent)" in out
    assert "1801 more answered 409 (amount 1801 is more than the 1800 fen still refundable), nothing sent" in out
    assert "closed unpaid DEMO-0004 through the ledger: answered 200, CLOSED" in out
    assert "DEMO-0004: CLOSED" in out and "OrderClosed" in out and "RefundRequested" in out
    assert "answered 401" in out
    combined = out[out.index("\ncombined payment (合单) DEMO-COMBINE-01: ") :]
    # DEMO-0001..0003, and DEMO-0005 (the difference planted in the day's bill, decided by the query it set off)
    assert out[: -len(combined)].count("PaymentSucceeded") == 4
    bill = out[out.index("\ndaily bill of ") : -len(combined)]
    assert "planted: DEMO-0005 paid at WeChat (3300 fen)" in bill
    assert "(Beijing day): agreed, 1 difference(s), all resolved" in bill
    assert "trade bill: 5 line(s), 4 payment(s), 1 refund(s)" in bill
    assert "found: 1 difference(s)\n    missing_in_ledger DEMO-0005: " in bill
    (found,) = [line for line in bill.splitlines() if line.startswith("    missing_in_ledger  ")]
    assert "out_trade_no=DEMO-0005" in found and found.endswith("bill 3300 fen, ledger 3300 fen  resolved")
    history = bill[bill.index("DEMO-0005's history") :].splitlines()[1:5]
    assert [line.split()[1] for line in history] == ["Opened", "BillDiscrepancy", "StatusQueried", "PaymentSucceeded"]

    # A combined payment: ONE notification, and each sub-order's history has it and its own decision.
    refund = combined[combined.index("\nrefunded 300 of DEMO-0002's fen in the merchant console") :]
    combined = combined[: -len(refund)]
    notification_id = re.search(r"told in ONE notification \(([0-9a-f-]{36})\)", combined)
    assert notification_id is not None
    for no, amount in (("DEMO-0006", 1200), ("DEMO-0007", 800)):
        header, *history = combined[combined.index(f"\n{no}: ") + 1 :].splitlines()[:5]
        assert header == f"{no}: SUCCESS amount_total={amount} paid_total={amount} combine_out_trade_no=DEMO-COMBINE-01"
        kinds = [line.split()[1] for line in history]
        assert kinds == ["Opened", "Registered", "NotificationReceived", "PaymentSucceeded"]
        assert f"id={notification_id.group(1)}" in history[2]
        assert f"amount_total={amount} " in history[3] and history[3].endswith(f"evidence={notification_id.group(1)}")
    assert len(re.findall(r"^ +v[0-9]+ +PaymentSucceeded ", combined, re.M)) == 2  # one each, no more

    # A console refund: APIv2 XML, acknowledged with the SUCCESS XML, decided by the refund query that confirmed it.
    assert "/wechatpay/v2/notify (answered [200]: 200 is the SUCCESS XML)" in refund
    assert "\nDEMO-0002: REFUND  amount_total=999 refunded_total=300\n" in refund
    events = [line.split() for line in refund.splitlines() if line.startswith("    v")]
    assert [e[1] for e in events[4:]] == ["NotificationReceived", "StatusQueried", "RefundSucceeded"]
    assert events[4][2] == "REFUND.V2" and "serial=APIv2" in events[4]
    assert "by refund: HTTP 200 out_refund_no=DEMO-R-0002 status=SUCCESS" in " ".join(events[5])
    assert "out_refund_no=DEMO-R-0002" in events[6] and "refund=300" in events[6]
    assert events[6][-1] == f"evidence=query:{events[5][-1].removeprefix('request_id=')}"


@pytest.fixture
def sandbox_env(tmp_path: Path) -> Iterator[tuple[Sandbox, dict[str, str]]]:
    sandbox = Sandbox(seed=11, signing="certificate")
    with running(sandbox.app) as url:
        env = sandbox.write_ledger_config(tmp_path / "keys", url)
        env["LEDGER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        env["LEDGER_RECONCILE_SCHEDULE"] = "0.1,60"
        yield sandbox, {**clean_env(), **env}


@pytest.mark.slow
def test_query_reconcile_and_certificates_commands(sandbox_env: tuple[Sandbox, dict[str, str]]) -> None:
    sandbox, env = sandbox_env
    for no in ("ORDER-7001", "ORDER-7002"):
        sandbox.create_order(no, 100)
    sandbox.pay("ORDER-7001", notify=False)

    queried = payledger("query", "ORDER-7002", env=env)
    assert queried.returncode == 0, queried.stderr
    assert '"trade_state": "NOTPAY"' in queried.stdout

    # Register ORDER-7001 (paid at WeChat; its callback never came) and let reconciliation find it.
    from ledger.application import build_ledger

    ledger = build_ledger(env["LEDGER_DATABASE_URL"])
    ledger.register_order(sandbox.mchid, "ORDER-7001", 100)
    ledger.close()
    time.sleep(0.2)
    reconciled = payledger("reconcile", env=env)
    assert reconciled.returncode == 0, reconciled.stderr
    assert "ORDER-7001: NOTPAY -> SUCCESS" in reconciled.stdout

    ledger = build_ledger(env["LEDGER_DATABASE_URL"])
    ledger.register_order(sandbox.mchid, "ORDER-7002", 100)
    ledger.close()
    sandbox.fail_next(50, status=503)
    time.sleep(0.2)
    failing = payledger("reconcile", env=env)  # WeChat down: the pass still runs, exit 0
    assert failing.returncode == 0, failing.stderr
    assert "ORDER-7002: NOTPAY, query failed (WeChat Pay unavailable); will retry" in failing.stdout
    assert "1 failed" in failing.stdout

    history = payledger("history", "ORDER-7001", env=env)
    assert "StatusQueried" in history.stdout and "PaymentSucceeded" in history.stdout

    listed = payledger("certificates", env=env)
    assert listed.returncode == 0
    serial = sandbox.listed_certificates()[0].serial_number
    (row,) = [line.split() for line in listed.stdout.splitlines() if f"{serial:X}" in line]
    assert row[1:3] == ["certificate", f"{serial:X}"] and row[-1] == "valid"


def test_query_failure_exits_non_zero_with_a_reason(sandbox_env: tuple[Sandbox, dict[str, str]]) -> None:
    _, env = sandbox_env
    result = payledger("query", "ORDER-7404", env=env)
    assert result.returncode == 1
    assert "rejected" in result.stderr


def test_reconcile_follow_keeps_running_and_reports_changes(sandbox_env: tuple[Sandbox, dict[str, str]]) -> None:
    from ledger.application import build_ledger

    sandbox, env = sandbox_env
    with following("reconcile", "--follow", "--interval", "0.1", env=env) as (process, lines):
        sandbox.create_order("ORDER-7101", 100)
        sandbox.pay("ORDER-7101", notify=False)
        ledger = build_ledger(env["LEDGER_DATABASE_URL"])
        ledger.register_order(sandbox.mchid, "ORDER-7101", 100)
        ledger.close()
        deadline = time.monotonic() + 20
        while not any("ORDER-7101: NOTPAY -> SUCCESS" in line for line in lines) and time.monotonic() < deadline:
            assert process.poll() is None, "reconcile --follow exited"
            time.sleep(0.05)
    assert any("ORDER-7101: NOTPAY -> SUCCESS" in line for line in lines)


@pytest.mark.slow
def test_project_follows_the_log_and_a_second_projector_waits_for_the_first(
    tmp_path: Path, merchant_env: dict[str, str]
) -> None:
    import signal

    from ledger.application import build_ledger
    from projections.read_model.runner import open_orders_view

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    env = {**clean_env(), **merchant_env, "LEDGER_DATABASE_URL": url}
    ledger = build_ledger(url)
    ledger.register_order(merchant_env["WECHATPAY_MCHID"], "ORDER-7201", 100)
    first = subprocess.Popen([*CLI, "project"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    view = open_orders_view(url)
    try:
        deadline = time.monotonic() + 20
        while view.position() < (ledger.recorder.max_notification_id() or 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert view.get(merchant_env["WECHATPAY_MCHID"], "ORDER-7201") is not None
        second_log = tmp_path / "second.log"
        with second_log.open("w") as err:
            second = subprocess.Popen([*CLI, "project"], env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + 20  # however long it takes to start on a busy machine
        while "another projector holds" not in second_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "another projector holds" in second_log.read_text()
        assert second.poll() is None  # waiting, not projecting
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0  # a clean stop on SIGTERM
        ledger.register_order(merchant_env["WECHATPAY_MCHID"], "ORDER-7202", 100)  # only the second can see it
        deadline = time.monotonic() + 20
        while view.get(merchant_env["WECHATPAY_MCHID"], "ORDER-7202") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert view.get(merchant_env["WECHATPAY_MCHID"], "ORDER-7202") is not None  # the second took over
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            if process is not None and process.stderr is not None:
                process.stderr.close()
        view.datastore.close()  # type: ignore[attr-defined]
        ledger.close()


def test_sandbox_command_serves_and_writes_the_ledger_configuration(tmp_path: Path) -> None:
    import httpx

    from ledger.settings import Settings

    port = free_port()
    process = subprocess.Popen(
        [*CLI, "sandbox", "--port", str(port), "--folder", str(tmp_path / "sb"), "--time-scale", "100"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/sandbox/deliveries").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        created = httpx.post(
            f"http://127.0.0.1:{port}/sandbox/orders", json={"out_trade_no": "ORDER-7301", "amount_total": 100}
        )
        assert created.status_code in (200, 201)
        env = dict(line.split("=", 1) for line in (tmp_path / "sb" / "env").read_text().splitlines())
        settings = Settings.load({**env, "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'l.sqlite3'}"})
        assert settings.merchants[0].api_base_url == f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()  # type: ignore[union-attr]
