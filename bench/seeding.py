"""What the benches share to fill a ledger: a callback as the verifier hands it to the domain, with a
real-sized raw body, and a scratch store for one run."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import psycopg

from ledger.domain import Evidence

__all__ = ["POSTGRES_URL", "callback_evidence", "drop_scratch_store", "scratch_store"]

POSTGRES_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
_KINDS = {"TRANSACTION.SUCCESS": ("transaction", "支付成功"), "REFUND.SUCCESS": ("refund", "退款成功")}


def callback_evidence(
    notification_id: str,
    event_type: str,
    resource: dict[str, Any],
    *,
    create_time: str,
    received_at: dt.datetime,
    resource_digest: str | None = None,
) -> Evidence:
    """A TRANSACTION.SUCCESS or REFUND.SUCCESS callback carrying `resource`: its envelope, a raw body with
    a 600-byte ciphertext, signature headers of the real sizes; `resource_digest` the body's unless given."""
    original_type, summary = _KINDS[event_type]
    envelope: dict[str, Any] = {
        "id": notification_id,
        "create_time": create_time,
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "associated_data": original_type,
            "nonce": "fdasflkja484",
        },
    }
    body = json.dumps({**envelope, "resource": {**envelope["resource"], "ciphertext": "x" * 600}}, ensure_ascii=False)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return Evidence(
        notification_id=notification_id,
        event_type=event_type,
        delivery_key=digest,
        key_serial="PUB_KEY_ID_0001",
        raw_body=body,
        signature_headers={
            "Wechatpay-Timestamp": "1795000000",
            "Wechatpay-Nonce": "n" * 32,
            "Wechatpay-Signature": "s" * 344,
            "Wechatpay-Serial": "PUB_KEY_ID_0001",
        },
        envelope=envelope,
        resource=resource,
        resource_digest=resource_digest or digest,
        received_at=received_at,
    )


def scratch_store(store: str, folder: Path | str, schema: str) -> tuple[str, str | None]:
    """A fresh ledger store for one run: on "postgres" the new schema `schema` at `POSTGRES_URL` (drop it
    with `drop_scratch_store`), else a SQLite file in `folder`. Its URL, and the schema (None: SQLite)."""
    if store != "postgres":
        return f"sqlite:///{folder}/ledger.sqlite3", None
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}", schema


def drop_scratch_store(schema: str | None) -> None:
    """Drop what `scratch_store` made on PostgreSQL (a SQLite file goes with its folder)."""
    if schema is not None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
