"""The service-provider endpoints ([next: Partner queries]) and the combined-payment endpoints ([next:
Combined query and close]), served with the same Authorization check and answer signing as `api.py`.

A provider queries and closes with both `sp_mchid` and `sub_mchid`; a merchant that is not a provider is
refused them (403 NO_AUTH). A combined order is queried and closed only as a whole, by its initiator (the
Authorization's mchid), with no query string; its sub-orders are unknown to the ordinary order paths.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ledger.wechatpay.sandbox import views
from ledger.wechatpay.sandbox.orders import Order, SandboxError

if TYPE_CHECKING:
    from ledger.wechatpay.sandbox.server import Sandbox

__all__ = ["PartnerEndpoints", "json_object", "not_combined"]


WECHAT_BODY_ERRORS = ("请求体不是合法的JSON", "请求体不是JSON对象")


def json_object(body: bytes, *, messages: tuple[str, str] = WECHAT_BODY_ERRORS) -> dict[str, Any]:
    """A request body that must be a JSON object; else PARAM_ERROR with `messages` (not JSON, not an object),
    WeChat's own by default."""
    try:
        data = json.loads(body)
    except ValueError:
        raise SandboxError(400, "PARAM_ERROR", messages[0]) from None
    if not isinstance(data, dict):
        raise SandboxError(400, "PARAM_ERROR", messages[1])
    return data


def not_combined(order: Order) -> Order:
    """[next: Combined query and close]: the ordinary order paths answer ORDER_NOT_EXIST for a combined
    order's sub-orders."""
    if order.combine_out_trade_no is not None:
        raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")
    return order


class PartnerEndpoints:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def paths(self) -> list[tuple[str, Any, str]]:
        return [
            ("/v3/pay/partner/transactions/out-trade-no/{out_trade_no}", self.query_out_trade_no, "GET"),
            ("/v3/pay/partner/transactions/id/{transaction_id}", self.query_transaction_id, "GET"),
            ("/v3/pay/partner/transactions/out-trade-no/{out_trade_no}/close", self.close, "POST"),
            ("/v3/combine-transactions/out-trade-no/{combine_out_trade_no}", self.query_combined, "GET"),
            ("/v3/combine-transactions/out-trade-no/{combine_out_trade_no}/close", self.close_combined, "POST"),
        ]

    # -- service providers ([next: Partner queries]) ---------------------------------------------

    def _sub_mchid(self, sp_mchid: object, sub_mchid: object) -> str:
        """Both parameters present, the provider's own sp_mchid; the sub_mchid, whatever it is."""
        sandbox = self._sandbox
        if not sandbox.partner:
            raise SandboxError(403, "NO_AUTH", "非服务商商户号不能调用服务商接口")
        if not isinstance(sp_mchid, str) or not sp_mchid:
            raise SandboxError(400, "PARAM_ERROR", "sp_mchid 为必填项")
        if not isinstance(sub_mchid, str) or not sub_mchid:
            raise SandboxError(400, "PARAM_ERROR", "sub_mchid 为必填项")
        if sp_mchid != sandbox.mchid:
            raise SandboxError(404, "ORDER_NOT_EXIST", "订单不存在")
        return sub_mchid

    def query_out_trade_no(self, request: Request, body: bytes) -> tuple[int, Any]:
        query = request.query_params
        sub_mchid = self._sub_mchid(query.get("sp_mchid"), query.get("sub_mchid"))
        order = not_combined(self._sandbox.orders.order(request.path_params["out_trade_no"], sub_mchid))
        return 200, views.transaction(self._sandbox.merchant, order)

    def query_transaction_id(self, request: Request, body: bytes) -> tuple[int, Any]:
        query = request.query_params
        sub_mchid = self._sub_mchid(query.get("sp_mchid"), query.get("sub_mchid"))
        order = self._sandbox.orders.by_transaction_id(request.path_params["transaction_id"], sub_mchid)
        return 200, views.transaction(self._sandbox.merchant, not_combined(order))

    def close(self, request: Request, body: bytes) -> tuple[int, Any]:
        data = json_object(body)
        sub_mchid = self._sub_mchid(data.get("sp_mchid"), data.get("sub_mchid"))
        orders = self._sandbox.orders
        not_combined(orders.order(request.path_params["out_trade_no"], sub_mchid))
        orders.close(request.path_params["out_trade_no"], sub_mchid=sub_mchid)
        return 204, None

    # -- combined payments ([next: Combined query and close]) ------------------------------------

    def query_combined(self, request: Request, body: bytes) -> tuple[int, Any]:
        sandbox = self._sandbox
        orders = sandbox.orders.combined(request.path_params["combine_out_trade_no"])
        return 200, views.combined_transaction(sandbox.merchant, orders)

    def close_combined(self, request: Request, body: bytes) -> tuple[int, Any]:
        """The whole order, named exactly: the same sub-orders (mchid, out_trade_no, sub_mchid), no fewer."""
        sandbox = self._sandbox
        combine_out_trade_no = request.path_params["combine_out_trade_no"]
        data = json_object(body)
        orders = sandbox.orders.combined(combine_out_trade_no)
        if data.get("combine_appid") != sandbox.appid:
            raise SandboxError(400, "PARAM_ERROR", "combine_appid 与合单不一致")
        named = data.get("sub_orders")
        if not isinstance(named, list) or not all(isinstance(s, dict) for s in named):
            raise SandboxError(400, "PARAM_ERROR", "sub_orders 为必填项")
        expected = sorted((sandbox.mchid, o.out_trade_no, o.sub_mchid or "") for o in orders)
        given = sorted((str(s.get("mchid")), str(s.get("out_trade_no")), str(s.get("sub_mchid") or "")) for s in named)
        if given != expected:
            raise SandboxError(400, "PARAM_ERROR", "子单信息与原合单不一致")
        sandbox.orders.close_combined(combine_out_trade_no)
        return 204, None
