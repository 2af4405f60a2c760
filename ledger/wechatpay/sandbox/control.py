"""The sandbox's own control endpoints under ``/sandbox/``: make orders (combined ones too), pay (a closed
order too: `after_close`), refund, send other notifications, inject faults, look (what refund requests
WeChat received).

These are not WeChat's: they need no Authorization, so a shell, a demo or a test in another
process can drive the fake WeChat Pay. A provider's orders take `sub_mchid` (in the body or the
query string). Errors are ``{"code","message"}`` like WeChat's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.wechatpay.sandbox import views
from ledger.wechatpay.sandbox.api_partner import json_object
from ledger.wechatpay.sandbox.bills import parse_bill_date
from ledger.wechatpay.sandbox.orders import SandboxError, SubOrder
from ledger.wechatpay.sandbox.refunds import REFUND_FAULTS

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
    return json_object(raw, messages=("body is not JSON", "body must be a JSON object")) if raw.strip() else {}


def _endpoint(handler: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            status, payload = handler(request, await _body(request))
        except SandboxError as exc:
            return JSONResponse({"code": exc.code, "message": exc.message}, exc.status)
        return JSONResponse(payload, status)

    return endpoint


def _optional(data: dict[str, Any], name: str, kind: type[T]) -> T | None:
    return None if data.get(name) is None else _field(data, name, kind)


def _sub_mchid(request: Request, data: dict[str, Any]) -> str | None:
    """A provider's orders are named by sub-merchant too: in the body, or the query string."""
    return _optional(data, "sub_mchid", str) or request.query_params.get("sub_mchid")


def _asked(data: dict[str, Any], sub_mchid: str | None) -> SubOrder:
    """An order asked for, alone or as a sub-order, by `sub_mchid` in partner mode."""
    return SubOrder(
        _field(data, "out_trade_no", str),
        _field(data, "amount_total", int),
        sub_mchid=sub_mchid,
        sub_appid=_optional(data, "sub_appid", str),
        description=_field(data, "description", str, ""),
        attach=_field(data, "attach", str, ""),
    )


def _sub_orders(data: dict[str, Any]) -> list[SubOrder]:
    items = _field(data, "sub_orders", list)
    if not all(isinstance(item, dict) for item in items):
        raise SandboxError(400, "PARAM_ERROR", "sub_orders must be a list of objects")
    return [_asked(item, _optional(item, "sub_mchid", str)) for item in items]


def control_routes(sandbox: Sandbox) -> list[Route]:
    def create(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        order = sandbox.orders.create(_asked(data, _sub_mchid(request, data)), _optional(data, "notify_url", str))
        return 201, views.transaction(sandbox.merchant, order)

    def show(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        order = sandbox.orders.order(request.path_params["out_trade_no"], _sub_mchid(request, data))
        refunds = [views.refund_query(order, r) for r in order.refunds.values()]
        return 200, {"order": views.transaction(sandbox.merchant, order), "refunds": refunds}

    def pay(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        transaction_id = sandbox.pay(
            request.path_params["out_trade_no"],
            notify=_field(data, "notify", bool, True),
            drop=_field(data, "drop", bool, False),
            sub_mchid=_sub_mchid(request, data),
            discount=_field(data, "discount", int, 0),
            coupon_type=_field(data, "coupon_type", str, "CASH"),
            api=_field(data, "api", str, "v3"),
            sign_type=_field(data, "sign_type", str, "MD5"),
            after_close=_field(data, "after_close", bool, False),
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
            sub_mchid=_sub_mchid(request, data),
            api=_field(data, "api", str, "v3"),
            source=_field(data, "source", str, "API"),
        )
        return 200, {"refund_id": refund_id}

    def complete_refund(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        sandbox.complete_refund(
            request.path_params["out_refund_no"],
            _field(data, "status", str, "SUCCESS"),
            notify=_field(data, "notify", bool, True),
            drop=_field(data, "drop", bool, False),
            sub_mchid=_sub_mchid(request, data),
            api=_field(data, "api", str, "v3"),
        )
        return 200, {}

    def close(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        sandbox.close(request.path_params["out_trade_no"], sub_mchid=_sub_mchid(request, data))
        return 200, {}

    def create_combined(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        combine_out_trade_no = _field(data, "combine_out_trade_no", str)
        sandbox.create_combined_order(
            combine_out_trade_no, _sub_orders(data), notify_url=_optional(data, "notify_url", str)
        )
        return 201, views.combined_transaction(sandbox.merchant, sandbox.orders.combined(combine_out_trade_no))

    def show_combined(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        orders = sandbox.orders.combined(request.path_params["combine_out_trade_no"])
        return 200, views.combined_transaction(sandbox.merchant, orders)

    def pay_combined(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        transaction_ids = sandbox.pay_combined_order(
            request.path_params["combine_out_trade_no"],
            notify=_field(data, "notify", bool, True),
            drop=_field(data, "drop", bool, False),
            after_close=_field(data, "after_close", bool, False),
        )
        return 200, {"transaction_ids": transaction_ids}

    def close_combined(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        sandbox.close_combined_order(request.path_params["combine_out_trade_no"])
        return 200, {}

    def notify_other(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        """[next: Other notification types]: any event type with the resource given; a complaint needs none."""
        event_type = _field(data, "event_type", str)
        drop = _field(data, "drop", bool, False)
        resource = _optional(data, "resource", dict)
        if resource is None and event_type.startswith("COMPLAINT."):
            action = "CREATE_COMPLAINT" if event_type == "COMPLAINT.CREATE" else "USER_RESPONSE"
            complaint_id = sandbox.complain(_field(data, "action_type", str, action), drop=drop)
            return 200, {"complaint_id": complaint_id}
        if resource is None:
            raise SandboxError(400, "PARAM_ERROR", "resource must be a dict")
        notification_id = sandbox.notify_other(
            event_type,
            resource,
            original_type=_optional(data, "original_type", str),
            summary=_optional(data, "summary", str),
            url=_optional(data, "notify_url", str),
            drop=drop,
        )
        return 200, {"id": notification_id}

    def rotate(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        serial = sandbox.rotate_certificate(days_valid=_field(data, "days_valid", int, 365))
        return 200, {"serial_no": serial}

    def faults(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        apply_refund_settings = _refund_settings(data)  # checked before anything changes
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
        apply_refund_settings()
        return 200, {
            "bill_faults": {day.isoformat(): f for day, f in sorted(sandbox.bill_faults.items())},
            "refund_faults": sandbox.refund_faults,
            "refund_delay": sandbox.refund_delay,
            "refund_hold": sandbox.refund_hold,
        }

    def _refund_settings(data: dict[str, Any]) -> Callable[[], None]:
        """[protocol: Creating a refund]: the coming refund requests' faults, in order; how long an accepted
        refund stays PROCESSING (null: until completed by hand); how long a held answer is held. Checked
        now, applied by the function returned."""
        refund_faults = _field(data, "refund_faults", list, [])
        if not all(isinstance(fault, str) and fault in REFUND_FAULTS for fault in refund_faults):
            raise SandboxError(400, "PARAM_ERROR", f"a refund fault is one of {', '.join(REFUND_FAULTS)}")
        delay = data.get("refund_delay", sandbox.refund_delay)
        hold = data.get("refund_hold", sandbox.refund_hold)
        for name, value in (("refund_delay", delay), ("refund_hold", hold)):
            if value is None and name == "refund_delay":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise SandboxError(400, "PARAM_ERROR", f"{name} must be a number of seconds")

        def apply() -> None:
            for fault in refund_faults:
                sandbox.fail_next_refund(fault)
            sandbox.refund_delay, sandbox.refund_hold = delay, hold

        return apply

    def refund_requests(request: Request, data: dict[str, Any]) -> tuple[int, Any]:
        out_refund_no = request.path_params["out_refund_no"]
        sub_mchid = _sub_mchid(request, data)
        bodies = sandbox.refund_requests(out_refund_no, sub_mchid=sub_mchid)
        return 200, {
            "out_refund_no": out_refund_no,
            "sub_mchid": sub_mchid,
            "count": len(bodies),
            "distinct_bodies": len(set(bodies)),
            "bodies": [body.decode("utf-8", "replace") for body in bodies],
        }

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
        Route("/sandbox/refunds/{out_refund_no}/requests", _endpoint(refund_requests), methods=["GET"]),
        Route("/sandbox/combined-orders", _endpoint(create_combined), methods=["POST"]),
        Route("/sandbox/combined-orders/{combine_out_trade_no}", _endpoint(show_combined), methods=["GET"]),
        Route("/sandbox/combined-orders/{combine_out_trade_no}/pay", _endpoint(pay_combined), methods=["POST"]),
        Route("/sandbox/combined-orders/{combine_out_trade_no}/close", _endpoint(close_combined), methods=["POST"]),
        Route("/sandbox/certificates/rotate", _endpoint(rotate), methods=["POST"]),
        Route("/sandbox/faults", _endpoint(faults), methods=["POST"]),
        Route("/sandbox/deliveries", _endpoint(deliveries), methods=["GET"]),
        Route("/sandbox/notifications", _endpoint(notifications), methods=["GET"]),
        Route("/sandbox/notifications", _endpoint(notify_other), methods=["POST"]),
    ]
