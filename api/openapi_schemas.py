"""The reusable parts of `/openapi.json`: the shapes of orders, events, lists, bill reports and errors."""

from __future__ import annotations

import copy
from typing import Any

from api.params import BILL_DATE as _BILL_DATE
from api.params import OUT_TRADE_NO as _OUT_TRADE_NO
from api.params import SUB_MCHID as _SUB_MCHID
from ledger.bill_matching import DiscrepancyKind
from ledger.domain import ALL_EVENTS, FINAL_TRADE_STATES, OPEN_TRADE_STATES
from projections.bills.reports import REPORT_STATUSES
from projections.read_model.notifications import LISTED_FIELDS

__all__ = ["BILL_DATE", "EVENT_NAMES", "OUT_TRADE_NO", "SCHEMAS", "SUB_MCHID", "TRADE_STATES", "ref"]

OUT_TRADE_NO = f"^{_OUT_TRADE_NO.pattern}$"
BILL_DATE = f"^{_BILL_DATE.pattern}$"
SUB_MCHID = f"^{_SUB_MCHID.pattern}$"
TRADE_STATES = sorted(OPEN_TRADE_STATES | FINAL_TRADE_STATES)
EVENT_NAMES = sorted(cls.__name__ for cls in ALL_EVENTS)
DISCREPANCY_KINDS = sorted(str(kind) for kind in DiscrepancyKind)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}
_NULLABLE_STR = {"type": ["string", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
# Fen with the bill's fee precision: a fee has 5 decimals of yuan, so 3 of fen ("0.600", "-18.000").
_FEN_TEXT = {"type": "string", "pattern": "^-?[0-9]+\\.[0-9]{3}$"}
_DISCREPANCY_KIND = {"type": "string", "enum": DISCREPANCY_KINDS}
# What a bill difference says, in an order's document and in the day's report alike.
_DIFFERENCE: dict[str, Any] = {
    "transaction_id": {"type": "string"},
    "out_refund_no": _NULLABLE_STR,
    "refund_id": _NULLABLE_STR,
    "bill_amount": {**_NULLABLE_INT, "description": "fen; null when the bill lacks it"},
    "ledger_amount": {**_NULLABLE_INT, "description": "fen; null when the ledger lacks it"},
}


def _strings(*names: str) -> dict[str, Any]:
    """Properties that are any string."""
    return {name: {"type": "string"} for name in names}


def _page(items: str, item: str, view_description: str | None = None) -> dict[str, Any]:
    """A page of a list from a read model: its `items`, the next page's cursor, how far the view is."""
    view: dict[str, Any] = {"type": "object"}
    if view_description is not None:
        view["description"] = view_description
    view |= {
        "required": ["position", "log_position", "behind"],
        "additionalProperties": False,
        "properties": {name: {"type": "integer", "minimum": 0} for name in ("position", "log_position", "behind")},
    }
    return {
        "type": "object",
        "required": [items, "next_cursor", "view"],
        "additionalProperties": False,
        "properties": {items: {"type": "array", "items": ref(item)}, "next_cursor": _NULLABLE_STR, "view": view},
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "A failure of our own API: a fixed code and a short message, never exception text.",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {
            "code": {
                "type": "string",
                "enum": [
                    "INVALID_REQUEST",
                    "UNAUTHORIZED",
                    "NOT_FOUND",
                    "CONFLICT",
                    "REFUSED",
                    "METHOD_NOT_ALLOWED",
                    "FAIL",
                ],
            },
            # Short, but room for a list of what is valid (the event types an unknown `type` names).
            "message": {"type": "string", "maxLength": 400},
        },
    },
    "NotifyFailure": {
        "type": "object",
        "description": "What WeChat Pay reads on a failed notification; it retries on any non-2xx.",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {"code": {"const": "FAIL"}, "message": {"type": "string", "maxLength": 200}},
    },
    "V2Answer": {
        "type": "string",
        "description": (
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>, "
            "or FAIL with a short fixed reason; WeChat Pay retries on anything but that exact success with 200."
        ),
    },
    "V2Notification": {
        "type": "string",
        "description": (
            "A flat <xml> of text elements, UTF-8, no DTD or entities: a payment (signed with `sign`) or a refund "
            "(`req_info`, AES-256-ECB); checked over the raw bytes, so sent exactly as WeChat sent it."
        ),
    },
    "NotificationEnvelope": {
        "type": "object",
        "description": "WeChat Pay's notification envelope; signed as raw bytes, so sent exactly as WeChat sent it.",
        "required": ["id", "event_type", "resource"],
        "properties": {
            **_strings("id", "create_time", "event_type", "resource_type", "summary"),
            "resource": {
                "type": "object",
                "required": ["algorithm", "ciphertext", "nonce"],
                "properties": {
                    "algorithm": {"const": "AEAD_AES_256_GCM"},
                    **_strings("ciphertext", "nonce", "associated_data", "original_type"),
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
            "sub_mchid": {
                "type": ["string", "null"],
                "pattern": SUB_MCHID,
                "description": "the sub-merchant: required when the merchant is a service provider "
                "(WECHATPAY_MODE=partner), one of its WECHATPAY_SUB_MCHIDS when those are listed; "
                "refused for a direct merchant",
            },
            "combine_out_trade_no": {
                "type": ["string", "null"],
                "pattern": OUT_TRADE_NO,
                "description": "the combined payment (合单) this order is a sub-order of",
            },
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
        "properties": {
            "kind": {"type": "string"},
            "key": {"type": "string"},
            "detail": {},
            "evidence": {},
            "acknowledged": {
                "description": "null while the anomaly is open; who acknowledged it, when, with which note",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {
                            "operator": {"type": "string"},
                            "note": {"type": "string"},
                            "at": {"type": "string"},
                        },
                    },
                ],
            },
        },
    },
    "Order": {
        "type": "object",
        "required": [
            "out_trade_no",
            "mchid",
            "sp_mchid",
            "sub_mchid",
            "combine_out_trade_no",
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
            "refund_requests",
            "refundable",
            "closed_at",
            "version",
        ],
        "additionalProperties": False,
        "properties": {
            "out_trade_no": {"type": "string"},
            "mchid": {"type": "string", "description": "the merchant served: a service provider's sp_mchid"},
            "sp_mchid": {**_NULLABLE_STR, "description": "a service provider's order: the provider; else null"},
            "sub_mchid": {**_NULLABLE_STR, "description": "a service provider's order: the payee sub-merchant"},
            "combine_out_trade_no": {**_NULLABLE_STR, "description": "a combined payment's sub-order: its combination"},
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
            "bill_discrepancies": {
                "type": "array",
                "items": ref("OrderBillDiscrepancy"),
                "description": "what WeChat's daily bills showed differently (one per bill and difference)",
            },
            "deliveries": {"type": "integer", "minimum": 0},
            "refund_requests": {
                "type": "array",
                "items": ref("RefundRequest"),
                "description": "the refunds asked through the ledger (POST /orders/{out_trade_no}/refunds)",
            },
            "refundable": {"type": "integer", "minimum": 0, "description": "fen that may still be refunded"},
            "closed_at": {**_NULLABLE_STR, "description": "when the ledger's close was accepted by WeChat Pay"},
            "open_anomalies": {"type": "integer", "minimum": 0, "description": "anomalies not yet acknowledged"},
            "operator_actions": {
                "type": "array",
                "description": "re-queries and resends operators asked for this order, oldest first",
                "items": {
                    "type": "object",
                    "properties": {
                        "action": {"type": "string", "enum": ["requery", "resend"]},
                        "operator": {"type": "string"},
                        "detail": {"type": "object"},
                        "at": {"type": "string"},
                    },
                },
            },
            "version": {"type": "integer", "minimum": 1},
        },
    },
    "AskRefund": {
        "type": "object",
        "required": ["out_refund_no", "amount"],
        "additionalProperties": False,
        "properties": {
            "out_refund_no": {
                "type": "string",
                "pattern": "^[0-9A-Za-z_\\-|*@]{1,64}$",
                "description": "your refund number: the same with the same amount and reason is idempotent",
            },
            "amount": {"type": "integer", "minimum": 1, "description": "fen; at most what is still refundable"},
            "reason": {"type": "string", "maxLength": 80, "description": "shown to the payer"},
            "mchid": {"type": "string", "description": "optional when one merchant is configured"},
            "sub_mchid": {"type": ["string", "null"], "pattern": SUB_MCHID, "description": "a provider's order"},
        },
    },
    "RefundRequest": {
        "type": "object",
        "required": [
            "out_refund_no",
            "refund",
            "reason",
            "requested_by",
            "requested_at",
            "outcome",
            "refund_id",
            "status",
            "code",
        ],
        "properties": {
            "out_refund_no": {"type": "string"},
            "refund": {"type": "integer", "minimum": 1, "description": "fen"},
            "reason": {"type": "string"},
            "requested_by": {"type": "string", "description": "api, cli, or the operator's name"},
            "requested_at": {"type": "string", "format": "date-time"},
            "outcome": {
                "type": "string",
                "enum": ["requested", "accepted", "unknown", "rejected"],
                "description": "WeChat's answer to the request: none yet, accepted, none to trust, refused",
            },
            "refund_id": _NULLABLE_STR,
            "status": {**_NULLABLE_STR, "description": "the refund's status in WeChat's answer (PROCESSING, ...)"},
            "code": {**_NULLABLE_STR, "description": "WeChat's code when it refused (NOT_ENOUGH, ...)"},
            "decided": {**_NULLABLE_STR, "description": "the refund's decided status (SUCCESS, CLOSED, ABNORMAL)"},
        },
    },
    "RefundAsked": {
        "type": "object",
        "required": ["refund", "order"],
        "properties": {
            "code": {"const": "FAIL"},
            "message": {"type": "string"},
            "wechat_code": {"type": "string"},
            "refund": ref("RefundRequest"),
            "order": ref("Order"),
        },
    },
    "OrderBillDiscrepancy": {
        "type": "object",
        "required": ["bill_date", "kind", "transaction_id", "bill_amount", "ledger_amount", "evidence"],
        "properties": {
            "bill_date": {"type": "string", "format": "date"},
            "kind": _DISCREPANCY_KIND,
            **_DIFFERENCE,
            "evidence": {"type": "string", "description": "the kept bill: bill:<kind>:<bill_date>:<sha1>"},
        },
    },
    "BillDiscrepancy": {
        "type": "object",
        "required": [
            "kind",
            "out_trade_no",
            "transaction_id",
            "out_refund_no",
            "refund_id",
            "bill_amount",
            "ledger_amount",
            "resolved",
        ],
        "additionalProperties": False,
        "properties": {
            "kind": _DISCREPANCY_KIND,
            "out_trade_no": {"type": "string"},
            "sub_mchid": {**_NULLABLE_STR, "description": "a service provider's order: its sub-merchant"},
            **_DIFFERENCE,
            "resolved": {"type": "boolean", "description": "a query since decided it as the bill says"},
        },
    },
    "BillReport": {
        "type": "object",
        "description": "One reconciliation of one merchant's Beijing day against WeChat's trade bill; amounts in fen.",
        "required": ["mchid", "bill_date", "status", "reason", "reconciled_at", "bill", "totals", "discrepancies"],
        "additionalProperties": False,
        "properties": {
            "mchid": {"type": "string"},
            "bill_date": {"type": "string", "format": "date"},
            "status": {"type": "string", "enum": list(REPORT_STATUSES)},
            "reason": {**_NULLABLE_STR, "description": "why the bill could not be had (not_ready, failed)"},
            "reconciled_at": {"type": "string", "format": "date-time"},
            "bill": {
                "type": "object",
                "required": ["rows", "payments", "refunds", "sha1"],
                "additionalProperties": False,
                "properties": {
                    "rows": _COUNT,
                    "payments": _COUNT,
                    "refunds": _COUNT,
                    "sha1": {"type": ["string", "null"], "pattern": "^[0-9a-f]{40}$"},
                },
            },
            "totals": {
                "type": "object",
                "description": "empty when no bill was ever had for the day",
                "additionalProperties": False,
                "properties": {
                    "payments": {**_COUNT, "description": "fen"},
                    "refunds": {**_COUNT, "description": "fen"},
                    "fees": {**_FEN_TEXT, "description": "fen, exactly (the bill writes fees to 1/1000 fen)"},
                    "net": {**_FEN_TEXT, "description": "payments - refunds - fees, fen"},
                    "fundflow": {
                        "type": "object",
                        "required": ["sha1", "rows", "income", "expense"],
                        "properties": {
                            "sha1": {"type": "string"},
                            "rows": _COUNT,
                            "income": {**_COUNT, "description": "fen"},
                            "expense": {**_COUNT, "description": "fen"},
                        },
                    },
                },
            },
            "discrepancies": {"type": "array", "items": ref("BillDiscrepancy")},
        },
    },
    "BillFailure": {
        "type": "object",
        "description": "A reconciliation that had no bill to match: the failure shape, and the report it saved.",
        "required": ["code", "message", "report"],
        "additionalProperties": False,
        "properties": {
            "code": {"const": "FAIL"},
            "message": {"type": "string", "maxLength": 200},
            "report": ref("BillReport"),
        },
    },
    "OrderList": _page("orders", "Order"),
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
    "UnroutedNotification": {
        "type": "object",
        "description": "A verified notification that names no order (a complaint, profit-sharing, a payout, a "
        "coupon…), recorded raw in a stream of its own and acknowledged; the facts of its first delivery.",
        "required": [*LISTED_FIELDS, "routed", "events_url"],
        "additionalProperties": False,
        "properties": {
            "mchid": {"type": "string", "description": "the merchant it was for (a service provider's sp_mchid)"},
            "notification_id": {"type": "string", "description": "WeChat's notification id"},
            "event_type": {"type": "string", "description": "e.g. COMPLAINT.CREATE, PROFITSHARING.SUCCESS"},
            "resource_type": {**_NULLABLE_STR, "description": "the envelope's resource_type"},
            "original_type": {**_NULLABLE_STR, "description": "the envelope's resource.original_type"},
            "summary": {**_NULLABLE_STR, "description": "the envelope's summary"},
            "received_at": {"type": "string", "format": "date-time", "description": "its first delivery"},
            "last_received_at": {"type": "string", "format": "date-time", "description": "its latest delivery"},
            "deliveries": {"type": "integer", "minimum": 1, "description": "deliveries recorded (WeChat's retries)"},
            "routed": {"const": False},
            "events_url": {"type": "string", "description": "its raw history: GET /notifications/{id}/events"},
        },
    },
    "NotificationList": _page(
        "notifications",
        "UnroutedNotification",
        "the view's position, the log position of the newest notification that names no order, and how many "
        "deliveries of such notifications the view has still to list",
    ),
    "NotificationEvents": {
        "type": "object",
        "required": ["mchid", "notification_id", "routed", "events"],
        "additionalProperties": False,
        "properties": {
            "mchid": {"type": "string"},
            "notification_id": {"type": "string"},
            "routed": {"const": False},
            "events": {"type": "array", "items": ref("Event")},
        },
    },
    "OrderEvents": {
        "type": "object",
        "required": ["out_trade_no", "mchid", "sp_mchid", "sub_mchid", "events"],
        "additionalProperties": False,
        "properties": {
            "out_trade_no": {"type": "string"},
            "mchid": {"type": "string"},
            "sp_mchid": _NULLABLE_STR,
            "sub_mchid": _NULLABLE_STR,
            "events": {"type": "array", "items": ref("Event")},
        },
    },
}


def _order_detail() -> dict[str, Any]:
    """`Order` and what the bills say of it: only `GET /orders/{out_trade_no}` reads the fees."""
    detail: dict[str, Any] = copy.deepcopy(SCHEMAS["Order"])
    detail["required"] = [*detail["required"], "fee_fen", "net_fen"]
    detail["properties"]["fee_fen"] = {
        "type": ["string", "null"],
        "pattern": _FEN_TEXT["pattern"],
        "description": "the fees (手续费) of the order's bill lines, fen exactly; null while never billed",
    }
    detail["properties"]["net_fen"] = {
        "type": ["string", "null"],
        "pattern": _FEN_TEXT["pattern"],
        "description": "paid_total - refunded_total - fee_fen, fen exactly; null while never billed",
    }
    return detail


SCHEMAS["OrderDetail"] = _order_detail()
