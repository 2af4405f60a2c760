"""`payledger history`: an order's timeline in the terminal and as JSON, on a realistic order."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.audit_world import NO, REFUND_NO, audit_world
from tests.support.cli import clean_env, payledger


def test_history_shows_retries_anomalies_queries_refunds_and_webhook_attempts(
    tmp_path: Path, database_url: str
) -> None:
    with audit_world(tmp_path, database_url) as w:
        env = {**clean_env(), **w.env}
        text = payledger("history", NO, env=env)
        as_json = payledger("history", NO, "--json", env=env)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert out.startswith(f"order {NO} (mchid {w.sandbox.mchid}): REFUND, version ")
    lines = out.splitlines()
    deliveries = [line for line in lines if "NotificationReceived" in line]
    assert len(deliveries) == 4  # three of the payment (the byte-identical replay is not stored), one refund
    assert "TRANSACTION.SUCCESS" in deliveries[0] and deliveries[0].endswith("[delivery 1]")
    assert deliveries[1].endswith("[delivery 2, retry +15s]")
    assert deliveries[2].endswith("[delivery 3, retry +15s]")
    assert "REFUND.SUCCESS" in deliveries[3] and deliveries[3].endswith("[delivery 1]")
    # Charged 120 for an order of 100: flagged on the payment and again on the refund.
    anomalies = [line for line in lines if line.startswith("!!")]
    assert len(anomalies) == 2 and all("AnomalyDetected" in line for line in anomalies)
    assert 'amount_mismatch {"actual":120,"expected":100,"field":"amount.total"}' in anomalies[0]
    (payment,) = [line for line in lines if "PaymentSucceeded  " in line]
    assert f"transaction_id={w.transaction_id} amount_total=120" in payment
    assert re.search(r"StatusQueried\s+by out_trade_no: HTTP 200 trade_state=SUCCESS", out)
    assert f"RefundSucceeded       out_refund_no={REFUND_NO} refund=30" in out
    # Each event line: version, ISO time, type in that order.
    assert re.search(r"^\s+1  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  Opened ", out, re.MULTILINE)

    outbound = out[out.index("outbound deliveries") :]
    assert "endpoint ep_" in outbound and f"{w.receiver.url}/hook" in outbound
    assert re.search(r"PaymentSucceeded v\d+  delivered", outbound)
    assert len(re.findall(r"AnomalyDetected v\d+  delivered", outbound)) == 2
    assert re.search(r"RefundSucceeded v\d+  delivered", outbound)
    attempts = re.findall(r"attempt (\d)  \S+Z  HTTP (\d{3}) in \d+ ms", outbound)
    assert sorted(attempts) == [("1", "200"), ("1", "200"), ("1", "200"), ("1", "503"), ("2", "200")]

    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["order"]["trade_state"] == "REFUND" and doc["order"]["refunded_total"] == 30
    received = [e for e in doc["events"] if e["type"] == "NotificationReceived"]
    assert [(e["delivery"], e["retry_gap_seconds"]) for e in received] == [(1, None), (2, 15.0), (3, 15.0), (1, None)]
    assert received[0]["data"]["raw_body"] and "Wechatpay-Signature" in received[0]["data"]["signature_headers"]
    assert [e["type"] for e in doc["events"] if e["anomaly"]] == ["AnomalyDetected", "AnomalyDetected"]
    assert [e["version"] for e in doc["events"]] == list(range(1, doc["order"]["version"] + 1))
    (endpoint,) = doc["outbound"]
    statuses = sorted((m["type"], [a["status"] for a in m["attempts"]]) for m in endpoint["messages"])
    assert statuses == [
        ("AnomalyDetected", [200]),
        ("AnomalyDetected", [503, 200]),
        ("PaymentSucceeded", [200]),
        ("RefundSucceeded", [200]),
    ]
    assert doc["outbound_error"] is None


def test_history_escapes_control_characters_from_payloads() -> None:
    import datetime as dt

    from cli.history import render_text
    from projections.timeline import build_timeline

    order = {
        "out_trade_no": "ORDER-1",
        "mchid": "1",
        "trade_state": "NOTPAY",
        "version": 2,
        "amount_total": 1,
        "currency": "CNY",
        "paid_total": None,
        "refunded_total": 0,
        "transaction_id": None,
        "deliveries": 0,
        "anomalies": [],
    }
    events = [
        {
            "version": 1,
            "type": "Opened",
            "recorded_at": dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
            "data": {"mchid": "1\x9b31m", "out_trade_no": "ORDER-1\x1b]0;pwned\x07"},
        },
        {
            "version": 2,
            "type": "Registered",
            "recorded_at": dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
            "data": {"amount_total": 1, "currency": "CNY", "description": "tea\x1b[2J\x07"},
        },
    ]
    out = render_text(build_timeline(order, events))
    assert not any(ch in out for ch in "\x1b\x07\x9b")
    assert "out_trade_no=ORDER-1\\x1b]0;pwned\\x07" in out and "mchid=1\\x9b31m" in out
    assert 'description="tea\\u001b[2J\\u0007"' in out
