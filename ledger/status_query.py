"""Active status queries: ask WeChat Pay, verify the answer, append it to the order's stream.

A query that fails (network, 5xx, 429) or cannot be trusted (bad or probe signature, tampered
body, an answer about another order) is not an event: it is counted, logged, and raised.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Protocol

from ledger.application import Ledger
from ledger.domain import PaymentOrder, QueryEvidence
from ledger.errors import ResponseUntrusted, WeChatPayError, WeChatPayRejected
from ledger.identity import OrderKey, orders_named
from ledger.wechatpay.client import WeChatPayResponse

__all__ = ["OrderQuery", "QueryClient", "evidence_from_response"]

log = logging.getLogger("ledger.queries")


class QueryClient(Protocol):
    def query_by_out_trade_no(self, out_trade_no: str, *, sub_mchid: str | None = None) -> WeChatPayResponse: ...

    def query_combined(self, combine_out_trade_no: str) -> WeChatPayResponse: ...

    def query_refund(self, out_refund_no: str, *, sub_mchid: str | None = None) -> WeChatPayResponse: ...


def evidence_from_response(response: WeChatPayResponse, query: str) -> QueryEvidence:
    return QueryEvidence(
        query=query,
        status_code=response.status_code,
        raw_body=response.body.decode("utf-8"),
        response_headers=dict(response.headers),
        key_serial=response.key_serial,
        request_id=response.request_id or "",
        transaction=dict(response.data or {}),
        queried_at=response.received_at,
    )


class OrderQuery:
    """Query one order by `out_trade_no` and record the verified answer; thread-safe."""

    def __init__(self, ledger: Ledger, clients: Mapping[str, QueryClient], appids: Mapping[str, str | None]) -> None:
        self._ledger = ledger
        self._clients = clients
        self._appids = appids
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()

    def counts(self) -> dict[str, int]:
        """A snapshot of `outcomes` (``"rejected:<WeChat code>"`` for 4xx answers)."""
        with self._lock:
            return dict(self.outcomes)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _client(self, mchid: str) -> QueryClient:
        client = self._clients.get(mchid)
        if client is None:
            self._count("not_configured")
            raise WeChatPayError(
                f"merchant {mchid} has no WECHATPAY_MERCHANT_SERIAL_NO / WECHATPAY_MERCHANT_PRIVATE_KEY_FILE",
                reason="queries not configured for this merchant",
            )
        return client

    def _failed(self, exc: WeChatPayError, what: str, mchid: str) -> None:
        """Count and log a query that failed or could not be trusted (it is not an event)."""
        if isinstance(exc, WeChatPayRejected):
            self._count(f"rejected:{exc.code}")
            log.warning("query %s mchid=%s rejected: %s %s", what, mchid, exc.status, exc.code)
            return
        kind = "untrusted" if isinstance(exc, ResponseUntrusted) else "unavailable"
        self._count(kind)
        log.warning("query %s mchid=%s failed (%s): %s", what, mchid, kind, exc)

    def __call__(
        self, mchid: str, out_trade_no: str, *, sub_mchid: str | None = None, combine_out_trade_no: str | None = None
    ) -> PaymentOrder:
        """Ask about order (mchid, [sub_mchid,] out_trade_no), through its combined payment when it is a
        sub-order of one, and record the verified answer in its stream."""
        client = self._client(mchid)
        key = OrderKey(mchid, out_trade_no, sub_mchid)
        try:
            if combine_out_trade_no is not None:
                query = "combine_out_trade_no"
                response = client.query_combined(combine_out_trade_no)
                data = response.data or {}
                about = data.get("combine_out_trade_no") == combine_out_trade_no and key in orders_named(mchid, data)
            else:
                query = "out_trade_no"
                response = client.query_by_out_trade_no(out_trade_no, sub_mchid=sub_mchid)
                data = response.data or {}
                about = data.get("out_trade_no") == out_trade_no and orders_named(mchid, data) == [key]
                if sub_mchid is None:
                    about = about and data.get("mchid") == mchid
                else:
                    about = about and (data.get("sp_mchid"), data.get("sub_mchid")) == (mchid, sub_mchid)
            if not about:
                raise ResponseUntrusted("answer is about another order or merchant")
        except WeChatPayError as exc:
            self._failed(exc, out_trade_no, mchid)
            raise
        order = self._ledger.record_query(
            mchid,
            out_trade_no,
            evidence_from_response(response, query),
            expected_appid=self._appids.get(mchid),
            sub_mchid=sub_mchid,
        )
        self._count("recorded")
        log.info("query %s mchid=%s -> %s (version %d)", out_trade_no, mchid, order.trade_state, order.version)
        return order

    def refund(
        self, mchid: str, out_trade_no: str, out_refund_no: str, *, sub_mchid: str | None = None
    ) -> PaymentOrder:
        """Ask about refund `out_refund_no` of order (mchid, [sub_mchid,] out_trade_no) ([protocol: Querying a
        refund]) and record the verified answer in the order's stream (`query` "refund"), from which the
        order decides that refund: how a refund told by an APIv2 `req_info`, which nothing authenticates,
        is confirmed. The answer must name that refund of that order."""
        client = self._client(mchid)
        try:
            response = client.query_refund(out_refund_no, sub_mchid=sub_mchid)
            data = response.data or {}
            if (data.get("out_refund_no"), data.get("out_trade_no")) != (out_refund_no, out_trade_no):
                raise ResponseUntrusted("answer is about another refund or order")
            if sub_mchid is not None and data.get("sub_mchid", sub_mchid) != sub_mchid:
                raise ResponseUntrusted("answer is about another sub-merchant")
        except WeChatPayError as exc:
            self._failed(exc, f"refund {out_refund_no} of {out_trade_no}", mchid)
            raise
        order = self._ledger.record_query(
            mchid, out_trade_no, evidence_from_response(response, "refund"), sub_mchid=sub_mchid
        )
        self._count("recorded")
        status = order.refunds.get(out_refund_no, {}).get("status")
        log.info(
            "query refund %s of %s mchid=%s -> %s", out_refund_no, out_trade_no, mchid, status or data.get("status")
        )
        return order
