"""The sandbox's own control endpoints under ``/sandbox/``: make orders, pay, refund, look.

These are not WeChat's: they need no Authorization, so a shell, a demo or a test in another
process can drive the fake WeChat Pay. Errors are ``{"code","message"}`` like WeChat's.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.wechatpay.sandbox.bills import parse_bill_date
from ledger.wechatpay.sandbox.orders import SandboxError

if TYPE_CHECKING:
    from ledger.wechatpay.sandbox.server import Sandbox

__all__ = ["control_routes"]

T = TypeVar("T")
Endpoint = Callable[[Request, dict[str, Any]], Any]


def _field(data: dict[str, Any], name: str, kind: type[T], default: T | None = None) -> T:
    value = data.get(name, default)
    # bool is an int: an amount of `true` is a mistake, not 1 fen.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SandboxError(400, "PARAM_ERROR", f"{name} must be a {kind.__name__}")
    return value


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise SandboxError(400, "PARAM_ERROR", "body is not JSON") from None
    if not isinstance(data, dict):
        raise SandboxError(400, "PARAM_ERROR", "body must be a JSON object")
    return data


def _endpoint(handler: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            status, payload = handler(request, await _body(request))
        except SandboxError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, exc.status)
        return JSONResponse(payload, status)

    return endpoint


def control_routes(sandbox: Sandbox) -> list[Route]:
    def create(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        notify_url = data.get("notify_url")
        order = sandbox.create_order(
            _field(data, "out_trade_no", str),
            _field(data, "amount_total", int),
            _field(data, "description", str, ""),
            notify_url=notify_url if isinstance(notify_url, str) else None,
        )
        return 201, sandbox.orders.transaction(order)

    def show(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        order = sandbox.orders.order(request.path_params["out_trade_no"])
        refunds = [sandbox.orders.refund_query(order, r) for r in order.refunds.values()]
        return 200, {"order": sandbox.orders.transaction(order), "refunds": refunds}

    def pay(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        transaction_id = sandbox.pay(
            request.path_params["out_trade_no"],
            notify=_field(data, "notify", bool, True),
            drop=_field(data, "drop", bool, False),
        )
        return 200, {"transaction_id": transaction_id}

    def refund(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        refund_id = sandbox.refund(
            request.path_params["out_trade_no"],
            _field(data, "out_refund_no", str),
            _field(data, "amount", int),
            status=_field(data, "status", str, "SUCCESS"),
            notify=_field(data, "notify", bool, True),
            drop=_field(data, "drop", bool, False),
        )
        return 200, {"refund_id": refund_id}

    def complete_refund(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        sandbox.complete_refund(
            request.path_params["out_refund_no"],
            _field(data, "status", str, "SUCCESS"),
            notify=_field(data, "notify", bool, True),
            drop=_field(data, "drop", bool, False),
        )
        return 200, {}

    def close(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        sandbox.close(request.path_params["out_trade_no"])
        return 200, {}

    def rotate(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        serial = sandbox.rotate_certificate(days_valid=_field(data, "days_valid", int, 365))
        return 200, {"serial_no": serial}

    def faults(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        failures = _field(data, "fail_next", int, 0)
        if failures:
            code, message = data.get("code"), data.get("message")
            sandbox.fail_next(
                failures,
                _field(data, "status", int, 500),
                code if isinstance(code, str) else None,
                message if isinstance(message, str) else None,
            )
        sandbox.probe_next_response(_field(data, "probe_next", int, 0))
        sandbox.tamper_next_response(_field(data, "tamper_next", int, 0))
        bill_faults = _field(data, "bill_faults", dict, {})
        for day, fault in bill_faults.items():
            if fault is not None and not isinstance(fault, str):
                raise SandboxError(400, "PARAM_ERROR", "a bill fault is a string or null")
            sandbox.set_bill_fault(parse_bill_date(day), fault)
        return 200, {"bill_faults": {day.isoformat(): f for day, f in sorted(sandbox.bill_faults.items())}}

    def deliveries(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"deliveries": [a.as_dict() for a in sandbox.deliveries]}

    def notifications(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"notifications": [n.as_dict() for n in sandbox.notifications]}

    return [
        Route("/sandbox/orders", _endpoint(create), methods=["POST"]),
        Route("/sandbox/orders/{out_trade_no}", _endpoint(show), methods=["GET"]),
        Route("/sandbox/orders/{out_trade_no}/pay", _endpoint(pay), methods=["POST"]),
        Route("/sandbox/orders/{out_trade_no}/refunds", _endpoint(refund), methods=["POST"]),
        Route("/sandbox/orders/{out_trade_no}/close", _endpoint(close), methods=["POST"]),
        Route("/sandbox/refunds/{out_refund_no}/complete", _endpoint(complete_refund), methods=["POST"]),
        Route("/sandbox/certificates/rotate", _endpoint(rotate), methods=["POST"]),
        Route("/sandbox/faults", _endpoint(faults), methods=["POST"]),
        Route("/sandbox/deliveries", _endpoint(deliveries), methods=["GET"]),
        Route("/sandbox/notifications", _endpoint(notifications), methods=["GET"]),
    ]
