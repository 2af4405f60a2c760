"""The reusable parts of `/openapi.json`: the shapes of orders, events, lists and errors."""

from __future__ import annotations

from typing import Any

from api.params import OUT_TRADE_NO as _OUT_TRADE_NO
from ledger.domain import ALL_EVENTS, FINAL_TRADE_STATES, OPEN_TRADE_STATES

__all__ = ["EVENT_NAMES", "OUT_TRADE_NO", "SCHEMAS", "TRADE_STATES", "ref"]

OUT_TRADE_NO = f"^{_OUT_TRADE_NO.pattern}$"
TRADE_STATES = sorted(OPEN_TRADE_STATES | FINAL_TRADE_STATES)
EVENT_NAMES = sorted(cls.__name__ for cls in ALL_EVENTS)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}
_NULLABLE_STR = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "A failure of our own API: a fixed code and a short message, never exception text.",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {
            "code": {
                "type": "string",
                "enum": ["INVALID_REQUEST", "UNAUTHORIZED", "NOT_FOUND", "CONFLICT", "METHOD_NOT_ALLOWED", "FAIL"],
            },
            "message": {"type": "string", "maxLength": 200},
        },
    },
    "NotifyFailure": {
        "type": "object",
        "description": "What WeChat Pay reads on a failed notification; it retries on any non-2xx.",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {"code": {"const": "FAIL"}, "message": {"type": "string", "maxLength": 200}},
    },
    "NotificationEnvelope": {
        "type": "object",
        "description": "WeChat Pay's notification envelope; signed as raw bytes, so sent exactly as WeChat sent it.",
        "required": ["id", "event_type", "resource"],
        "properties": {
            "id": {"type": "string"},
            "create_time": {"type": "string"},
            "event_type": {"type": "string"},
            "resource_type": {"type": "string"},
            "summary": {"type": "string"},
            "resource": {
                "type": "object",
                "required": ["algorithm", "ciphertext", "nonce"],
                "properties": {
                    "algorithm": {"const": "AEAD_AES_256_GCM"},
                    "ciphertext": {"type": "string"},
                    "nonce": {"type": "string"},
                    "associated_data": {"type": "string"},
                    "original_type": {"type": "string"},
                },
            },
        },
    },
    "RegisterOrder": {
        "type": "object",
        "required": ["out_trade_no", "amount_total"],
        "additionalProperties": False,
        "properties": {
            "out_trade_no": {"type": "string", "pattern": OUT_TRADE_NO},
            "amount_total": {"type": "integer", "minimum": 1, "description": "fen"},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "default": "CNY"},
            "mchid": {"type": "string", "description": "optional when one merchant is configured"},
            "description": {"type": "string", "maxLength": 127},
        },
    },
    "Refund": {
        "type": "object",
        "required": ["out_refund_no", "refund", "status"],
        "properties": {
            "out_refund_no": {"type": "string"},
            "refund_id": _NULLABLE_STR,
            "refund": {"type": "integer", "minimum": 0, "description": "fen"},
            "status": {"type": "string"},
            "success_time": _NULLABLE_STR,
        },
    },
    "Anomaly": {
        "type": "object",
        "required": ["kind", "detail"],
        "properties": {"kind": {"type": "string"}, "detail": {}, "evidence": {}},
    },
    "Order": {
        "type": "object",
        "required": [
            "out_trade_no",
            "mchid",
            "registered",
            "trade_state",
            "amount_total",
            "currency",
            "description",
            "transaction_id",
            "success_time",
            "paid_total",
            "payer_total",
            "refunded_total",
            "refunds",
            "anomalies",
            "deliveries",
            "version",
        ],
        "additionalProperties": False,
        "properties": {
            "out_trade_no": {"type": "string"},
            "mchid": {"type": "string"},
            "registered": {"type": "boolean"},
            "trade_state": {"type": "string", "enum": TRADE_STATES},
            "amount_total": {**_NULLABLE_INT, "description": "fen; null until registered or paid"},
            "currency": {"type": "string"},
            "description": {"type": "string"},
            "transaction_id": {**_NULLABLE_STR, "description": "WeChat's id, always a string"},
            "success_time": {**_NULLABLE_STR, "description": "WeChat's original time string"},
            "paid_total": _NULLABLE_INT,
            "payer_total": _NULLABLE_INT,
            "refunded_total": {"type": "integer", "minimum": 0},
            "refunds": {"type": "array", "items": ref("Refund")},
            "anomalies": {"type": "array", "items": ref("Anomaly")},
            "deliveries": {"type": "integer", "minimum": 0},
            "version": {"type": "integer", "minimum": 1},
        },
    },
    "OrderList": {
        "type": "object",
        "required": ["orders", "next_cursor", "view"],
        "additionalProperties": False,
        "properties": {
            "orders": {"type": "array", "items": ref("Order")},
            "next_cursor": _NULLABLE_STR,
            "view": {
                "type": "object",
                "required": ["position", "log_position", "behind"],
                "additionalProperties": False,
                "properties": {
                    "position": {"type": "integer", "minimum": 0},
                    "log_position": {"type": "integer", "minimum": 0},
                    "behind": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["version", "type", "recorded_at", "data", "chain"],
        "additionalProperties": False,
        "properties": {
            "version": {"type": "integer", "minimum": 1},
            "type": {"type": "string", "enum": EVENT_NAMES},
            "recorded_at": {"type": "string", "format": "date-time"},
            "data": {"type": "object"},
            "chain": {
                "type": ["string", "null"],
                "pattern": "^[0-9a-f]{64}$",
                "description": "hash linking the event to the one before it; null if written before chains",
            },
        },
    },
    "OrderEvents": {
        "type": "object",
        "required": ["out_trade_no", "mchid", "events"],
        "additionalProperties": False,
        "properties": {
            "out_trade_no": {"type": "string"},
            "mchid": {"type": "string"},
            "events": {"type": "array", "items": ref("Event")},
        },
    },
}
