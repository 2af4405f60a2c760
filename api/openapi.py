"""`GET /openapi.json`: the OpenAPI 3.1 description of the JSON API, written by hand.

Written out rather than derived from the handlers so that it states what the handlers promise
(required fields, integer fen, enums, every status code) and a test can hold them to it. It is
served without the admin token: it describes the API and holds no data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.notifications import EVENT_TYPE
from api.openapi_schemas import BILL_DATE, EVENT_NAMES, OUT_TRADE_NO, SCHEMAS, SUB_MCHID, TRADE_STATES, ref
from api.responses import LedgerJSONResponse

__all__ = ["OPENAPI_PATH", "openapi", "openapi_document"]

OPENAPI_PATH = "/openapi.json"
_JSON = "application/json"


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


def _notify_failure(description: str) -> dict[str, Any]:
    return _json(ref("NotifyFailure"), description)


_OPEN: list[dict[str, list[str]]] = []  # an operation that never needs the admin token
_UNAUTHORIZED = _error("LEDGER_ADMIN_TOKEN is set and the bearer token is missing or wrong")
_STORE = _error("the event store cannot be reached")
_MCHID_QUERY = {
    "name": "mchid",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "required when several merchants are configured",
}


def _filter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An optional query filter; given empty, it is not applied (as an HTML form sends it)."""
    return {"name": name, "in": "query", "schema": {"type": "string", "anyOf": [schema, {"maxLength": 0}]}}


# [protocol: Service providers] the sub-merchant of a service provider's order.
_SUB_MCHID_QUERY = {
    **_filter("sub_mchid", {"pattern": SUB_MCHID}),
    "description": "the sub-merchant: required when the merchant is a service provider (WECHATPAY_MODE=partner), "
    "refused (400) for a direct merchant",
}


def _version(name: str, minimum: int, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "schema": {"type": "integer", "minimum": minimum, "maximum": 999_999_999},
        "description": description,
    }


def _path_param(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string", "minLength": 1}}


def _order_params(out_trade_no: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """An order's number in the path (any string unless `out_trade_no` says), its merchant and sub-merchant."""
    return [_path_param("out_trade_no", out_trade_no), _MCHID_QUERY, _SUB_MCHID_QUERY]


def _page_params(cursor: dict[str, Any]) -> list[dict[str, Any]]:
    """How long a page is and where it starts (`cursor`: the schema of a list's next_cursor)."""
    return [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        {
            "name": "cursor",
            "in": "query",
            "schema": cursor,
            "description": "the previous page's next_cursor (empty: the first page)",
        },
    ]


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    """An object of exactly these properties, all required."""
    return {"type": "object", "required": list(properties), "additionalProperties": False, "properties": properties}


def _signature_header(name: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema}


def _notification_post(
    operation_id: str,
    summary: str,
    *,
    by_mchid: bool,
    headers: list[dict[str, Any]],
    body: tuple[str, str],
    success: tuple[str, dict[str, Any]],
    answer: Callable[[str], dict[str, Any]],
    refusals: dict[str, str],
) -> dict[str, Any]:
    """A notification endpoint, APIv3 or APIv2: open, its `body` (media type, schema) checked, then answered
    `success` once stored; `answer` describes each refusal, `refusals` the reasons proper to the endpoint."""
    reasons = {
        **refusals,
        "404": "no such merchant is configured" if by_mchid else "no merchant is configured",
        "408": "the body did not arrive within LEDGER_BODY_READ_TIMEOUT",
        "413": "the body is above LEDGER_MAX_BODY_BYTES",
        "503": "the store is unavailable or did not commit within 4 s",
    }
    mchid = [_path_param("mchid", {"type": "string", "pattern": "^[0-9]{6,32}$"})] if by_mchid else []
    media_type, schema = body
    return {
        "post": {
            "operationId": f"{operation_id}Merchant" if by_mchid else operation_id,
            "summary": summary,
            "security": _OPEN,
            "parameters": [*mchid, *headers],
            "requestBody": {"required": True, "content": {media_type: {"schema": ref(schema)}}},
            "responses": {success[0]: success[1], **{status: answer(reasons[status]) for status in sorted(reasons)}},
        }
    }


def _notify_operation(by_mchid: bool) -> dict[str, Any]:
    return _notification_post(
        "notify",
        "A WeChat Pay notification, verified over its raw bytes, acknowledged only once stored",
        by_mchid=by_mchid,
        headers=[
            _signature_header("Wechatpay-Timestamp", {"type": "string", "pattern": "^[0-9]{1,12}$"}),
            _signature_header("Wechatpay-Nonce", {"type": "string", "minLength": 1}),
            _signature_header("Wechatpay-Signature", {"type": "string", "minLength": 1}),
            _signature_header("Wechatpay-Serial", {"type": "string", "minLength": 1}),
            _signature_header("Wechatpay-Signature-Type", {"const": "WECHATPAY2-SHA256-RSA2048"}, required=False),
        ],
        body=(_JSON, "NotificationEnvelope"),
        success=("204", {"description": "verified and committed (or a byte-identical replay of a committed one)"}),
        answer=_notify_failure,
        refusals={
            "400": "verified, but the envelope is not what WeChat sends; or the client left",
            "401": "verification failed: headers, timestamp window, serial, signature, probe",
            "500": "signed correctly but does not decrypt: our APIv3 key is wrong",
        },
    )


def _xml(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/xml": {"schema": ref("V2Answer")}}}


def _notify_v2_operation(by_mchid: bool) -> dict[str, Any]:
    """[protocol: Legacy APIv2 XML]: every answer is XML, with the statuses of the APIv3 endpoint."""
    return _notification_post(
        "notifyV2",
        "A legacy APIv2 XML notification: sign or req_info checked, answered only once stored",
        by_mchid=by_mchid,
        headers=[],
        body=("text/xml", "V2Notification"),
        success=("200", _xml("stored (or a replay of a stored one): exactly the SUCCESS answer")),
        answer=_xml,
        refusals={
            "400": "not the flat UTF-8 <xml> WeChat sends (a DTD or an entity: refused), or return_code FAIL",
            "401": "the sign does not verify, or the merchant has no WECHATPAY_V2_KEY",
            "500": "a refund's req_info does not decrypt: our APIv2 key is wrong",
        },
    )


def _admin(
    operation_id: str,
    summary: str,
    parameters: list[dict[str, Any]] | None,
    responses: dict[str, Any],
    *statuses: str,
    body: str | None = None,
) -> dict[str, Any]:
    """An admin operation (its request `body` a JSON schema's name): 401 without the token, 503 when the store
    is down, plus the common answers of `statuses`."""
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {_JSON: {"schema": ref(body)}}}
    if parameters is not None:
        operation["parameters"] = parameters
    answers = {
        "400": _error("invalid parameters or body"),
        "404": _error("no such order"),
        "409": _error("the order is registered with different details"),
    }
    operation["responses"] = {**responses, **{status: answers[status] for status in statuses}, "401": _UNAUTHORIZED}
    operation["responses"].setdefault("503", _STORE)
    return operation


def _order_read(
    operation_id: str, summary: str, parameters: list[dict[str, Any]], found: dict[str, Any]
) -> dict[str, Any]:
    """A read of one order (by number, merchant and sub-merchant, and `parameters`): `found`, or 400, 404."""
    return _admin(operation_id, summary, [*_order_params(), *parameters], {"200": found}, "400", "404")


def openapi_document() -> dict[str, Any]:
    """The description, built fresh (callers may keep it)."""
    bill_date = {
        **_path_param("bill_date", {"type": "string", "pattern": BILL_DATE}),
        "description": "a Beijing day, YYYY-MM-DD",
    }
    paths: dict[str, Any] = {
        "/wechatpay/notify": _notify_operation(by_mchid=False),
        "/wechatpay/notify/{mchid}": _notify_operation(by_mchid=True),
        "/wechatpay/v2/notify": _notify_v2_operation(by_mchid=False),
        "/wechatpay/v2/notify/{mchid}": _notify_v2_operation(by_mchid=True),
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive",
                "security": _OPEN,
                "responses": {
                    "200": _json(_closed({"status": {"const": "ok"}}), "alive"),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The event store answers (for load-balancer probes; says nothing else)",
                "security": _OPEN,
                "responses": {
                    "200": _json(_closed({"status": {"const": "ready"}}), "ready"),
                    "503": _json(
                        _closed({"code": {"const": "NOT_READY"}, "message": {"type": "string"}}),
                        "the event store does not answer",
                    ),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "security": _OPEN,
                "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text format",
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/orders": {
            "post": _admin(
                "registerOrder",
                "Register an expected order",
                None,
                {
                    "201": _json(ref("Order"), "registered"),
                    "200": _json(ref("Order"), "already registered with the same details"),
                },
                "400",
                "409",
                body="RegisterOrder",
            ),
            "get": _admin(
                "listOrders",
                "Orders from the read model, oldest change first",
                [
                    _filter("trade_state", {"type": "string", "enum": TRADE_STATES}),
                    {"name": "mchid", "in": "query", "schema": {"type": "string"}},
                    {
                        **_filter("sub_mchid", {"pattern": SUB_MCHID}),
                        "description": "a service provider's orders of this sub-merchant only",
                    },
                    _filter("since", {"type": "string", "format": "date-time"}),
                    _filter("until", {"type": "string", "format": "date-time"}),
                    *_page_params({"type": "string"}),
                ],
                {
                    "200": _json(ref("OrderList"), "a page of orders"),
                    "503": _error(
                        "the event store cannot be reached, or the orders view has the table layout of an "
                        "earlier version and must be rebuilt (payledger rebuild)"
                    ),
                },
                "400",
            ),
        },
        "/orders/{out_trade_no}": {
            "get": _order_read(
                "getOrder",
                "An order's current state (read-your-writes), or its state as of an event",
                [_version("as_of_version", 1, "replay the stream up to this event (404 beyond the last)")],
                _json(ref("OrderDetail"), "the order, with its bill fee and net amount"),
            )
        },
        "/orders/{out_trade_no}/events": {
            "get": _order_read(
                "orderEvents",
                "The order's stream, raw deliveries included, for audit",
                [
                    {
                        "name": "type",
                        "in": "query",
                        "style": "form",
                        "explode": False,
                        "schema": {"type": "array", "minItems": 1, "items": {"enum": EVENT_NAMES}},
                        "description": "keep only these event types (comma-separated)",
                    },
                    _version("since_version", 0, "keep only events after this version"),
                ],
                _json(ref("OrderEvents"), "the events in stream order"),
            )
        },
        "/orders/{out_trade_no}/query": {
            "post": _admin(
                "queryOrder",
                "Ask WeChat Pay now and record its verified answer",
                _order_params({"type": "string", "pattern": OUT_TRADE_NO}),
                {
                    "200": _json(ref("Order"), "the order after the recorded answer"),
                    "502": _error("WeChat Pay's answer failed or could not be trusted; nothing was recorded"),
                },
                "400",
            )
        },
        "/orders/{out_trade_no}/refunds": {
            "post": _admin(
                "refundOrder",
                "Refund a paid order: decided against its events, recorded before it is sent, sent once",
                _order_params({"type": "string", "pattern": OUT_TRADE_NO}),
                {
                    "201": _json(ref("RefundAsked"), "WeChat Pay accepted it (or accepted it before: nothing sent)"),
                    "202": _json(ref("RefundAsked"), "recorded, the outcome unknown: reconciliation asks WeChat"),
                    "409": _error(
                        "refused before any call (REFUSED), or the number asked with another body (CONFLICT)"
                    ),
                    "502": _json(ref("RefundAsked"), "WeChat Pay refused it (wechat_code): recorded as RefundRejected"),
                },
                "400",
                "404",
                body="AskRefund",
            )
        },
        "/orders/{out_trade_no}/close": {
            "post": _admin(
                "closeOrder",
                "Close an unpaid order at WeChat Pay (a combined payment's sub-order: its whole combination)",
                _order_params({"type": "string", "pattern": OUT_TRADE_NO}),
                {
                    "200": _json(ref("Order"), "closed (now, or by the ledger before: nothing sent)"),
                    "409": _error(
                        "the order (or another sub-order of its combined payment) is paid: refund it instead"
                    ),
                    "502": _error("WeChat Pay refused the close or its answer failed"),
                },
                "400",
                "404",
            )
        },
        "/notifications": {
            "get": _admin(
                "listUnroutedNotifications",
                "Verified notifications that name no order (complaints, profit-sharing, payouts, coupons…), as "
                "they first came, oldest first",
                [
                    {
                        "name": "routed",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["false", "true", ""]},
                        "description": "false (the default): the notifications that name no order. true is refused "
                        "(400): a notification that names an order is in that order's history",
                    },
                    {**_MCHID_QUERY, "description": "only this merchant's"},
                    {
                        **_filter("event_type", {"pattern": f"^{EVENT_TYPE.pattern}$"}),
                        "description": "only this event type, e.g. COMPLAINT.CREATE",
                    },
                    *_page_params({"type": "string", "pattern": "^[0-9]{0,18}$"}),
                ],
                {
                    "200": _json(ref("NotificationList"), "a page of unrouted notifications"),
                    "400": _error("invalid parameters, or routed=true"),
                },
            ),
        },
        "/notifications/{notification_id}/events": {
            "get": _admin(
                "notificationEvents",
                "An unrouted notification's stream: every delivery, raw body and signature headers",
                [_path_param("notification_id"), _MCHID_QUERY],
                {
                    "200": _json(ref("NotificationEvents"), "the events in stream order"),
                    "400": _error("invalid or unknown mchid"),
                    "404": _error("that merchant has no unrouted notification of this id"),
                },
            )
        },
        "/bills/{bill_date}": {
            "get": _admin(
                "getBillReport",
                "The report of the day's last bill reconciliation",
                [bill_date, _MCHID_QUERY],
                {
                    "200": _json(ref("BillReport"), "the report"),
                    "404": _error("that day was never reconciled for this merchant"),
                },
                "400",
            )
        },
        "/bills/{bill_date}/reconcile": {
            "post": _admin(
                "reconcileBill",
                "Reconcile the day now: fetch WeChat's bill if not kept, match, record each difference",
                [bill_date, _MCHID_QUERY],
                {
                    "200": _json(ref("BillReport"), "the bill was had: agreed, discrepancies or empty"),
                    "400": _error(
                        "invalid bill_date or mchid, a day in the future (Beijing time), or a merchant "
                        "without the API key that bills need"
                    ),
                    "502": _json(ref("BillFailure"), "the bill could not be had (not ready, or failed)"),
                },
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wechatpay-ledger",
            "version": "1",
            "description": "Event-sourced ledger of WeChat Pay notifications. With LEDGER_ADMIN_TOKEN set, "
            "every operation not marked open needs `Authorization: Bearer <token>`.",
        },
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: Request) -> Response:
    return LedgerJSONResponse(openapi_document())
