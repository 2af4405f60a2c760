"""What the sandbox tells the merchant, built and handed to the notifier: APIv3 payment, refund and
combined-payment notifications (encrypted with the APIv3 key, signed at each delivery), APIv2 payment
and refund notifications (XML with the APIv2 key), and the other verified notification types ([next: Other
notification types])."""

from __future__ import annotations

import random
import threading
import uuid
from typing import TYPE_CHECKING, Any

from ledger.wechatpay.sandbox import legacy, views
from ledger.wechatpay.sandbox.delivery import COMPLAINT_RETRY_SCHEDULE, RETRY_SCHEDULE, Notification, Notifier
from ledger.wechatpay.sandbox.orders import Order, Refund
from ledger.wechatpay.v2 import MD5

if TYPE_CHECKING:
    from ledger.wechatpay.sandbox.server import Sandbox

__all__ = ["APIS", "Notices"]

APIS = ("v3", "v2")


class Notices:
    """Reads the sandbox's settings (URLs, keys, drop rate) at each notification: they may change."""

    def __init__(self, sandbox: Sandbox, notifier: Notifier, rng: random.Random, lock: threading.RLock) -> None:
        self._sandbox = sandbox
        self._notifier = notifier
        self._rng = rng
        self._lock = lock

    def _draw(self, drop: bool) -> tuple[str, int, bool]:
        """A new notification's id, its delivery seed, and whether it is lost: the seeded choices."""
        with self._lock:
            notification_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            seed = self._rng.getrandbits(64)
            dropped = self._rng.random() < self._sandbox.drop_rate or drop
        return notification_id, seed, dropped

    def _url(self, api: str, order: Order | None) -> str | None:
        if api == "v2":
            return self._sandbox.v2_notify_url
        return (order.notify_url if order is not None else None) or self._sandbox.notify_url

    @staticmethod
    def _check_api(api: str) -> None:
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}")

    def payment(self, order: Order, *, drop: bool = False, api: str = "v3", sign_type: str = MD5) -> str:
        """TRANSACTION.SUCCESS for a paid order, as APIv3 JSON or (api "v2") APIv2 XML signed with `sign_type`."""
        self._check_api(api)
        sandbox = self._sandbox
        merchant = sandbox.orders.merchant
        notification_id, seed, dropped = self._draw(drop)
        if api == "v3":
            body = sandbox.factory.envelope(views.transaction(merchant, order), notification_id=notification_id)
        else:
            assert order.transaction_id is not None and order.success_time is not None
            fields = views.v2_payment_fields(merchant, order, sign_type)
            body = legacy.signed_xml(fields, sandbox.v2_key)
        self._schedule(
            Notification(notification_id, "TRANSACTION.SUCCESS", body, self._url(api, order), seed, dropped),
            api=api,
            order=order,
        )
        return notification_id

    def refund(self, order: Order, refund: Refund, *, drop: bool = False, api: str = "v3", source: str = "API") -> str:
        """REFUND.{status}, as APIv3 JSON or (api "v2") APIv2 XML with an encrypted `req_info`."""
        self._check_api(api)
        sandbox = self._sandbox
        merchant = sandbox.orders.merchant
        event_type = f"REFUND.{refund.status}"
        notification_id, seed, dropped = self._draw(drop)
        if api == "v3":
            resource = views.refund_resource(merchant, order, refund)
            body = sandbox.factory.envelope(resource, event_type, notification_id=notification_id)
        else:
            fields = views.v2_refund_fields(order, refund, source)
            plaintext = legacy.req_info_plaintext(fields)
            body = legacy.refund_xml(merchant.party(order), plaintext, sandbox.v2_key, nonce=legacy.nonce_str())
        # [protocol: Creating a refund]: a notify_url given with the refund request wins for its notifications.
        url = refund.notify_url if api == "v3" and refund.notify_url else self._url(api, order)
        notification = Notification(notification_id, event_type, body, url, seed, dropped)
        notification.out_refund_no = refund.out_refund_no
        self._schedule(notification, api=api, order=order)
        return notification_id

    def combined(self, orders: list[Order], *, drop: bool = False) -> str:
        """One TRANSACTION.SUCCESS for every sub-order of a combined order ([next: Combined payment notification])."""
        sandbox = self._sandbox
        notification_id, seed, dropped = self._draw(drop)
        resource = views.combined_transaction(sandbox.orders.merchant, orders)
        body = sandbox.factory.envelope(resource, notification_id=notification_id)
        notification = Notification(
            notification_id, "TRANSACTION.SUCCESS", body, self._url("v3", orders[0]), seed, dropped
        )
        notification.combine_out_trade_no = orders[0].combine_out_trade_no
        self._schedule(notification)
        return notification_id

    def other(
        self,
        event_type: str,
        resource: dict[str, Any],
        *,
        original_type: str | None = None,
        summary: str | None = None,
        url: str | None = None,
        drop: bool = False,
    ) -> str:
        """`Sandbox.notify_other`: a verified APIv3 notification of any type ([next: Other notification types]:
        complaints, profit-sharing, payouts…) with `resource` encrypted; `url` defaults to the sandbox's
        `notify_url`, complaints are retried on their own schedule. Returns the notification id."""
        sandbox = self._sandbox
        notification_id, seed, dropped = self._draw(drop)
        body = sandbox.factory.envelope(
            resource, event_type, notification_id=notification_id, original_type=original_type, summary=summary
        )
        notification = Notification(notification_id, event_type, body, url or sandbox.notify_url, seed, dropped)
        if event_type.startswith("COMPLAINT."):
            notification.schedule = COMPLAINT_RETRY_SCHEDULE
        self._schedule(notification)
        return notification_id

    def _schedule(self, notification: Notification, *, api: str = "v3", order: Order | None = None) -> None:
        notification.api = api
        if order is not None:
            notification.out_trade_no = order.out_trade_no
            notification.sub_mchid = order.sub_mchid
        if api == "v2":
            notification.schedule = RETRY_SCHEDULE  # [protocol: Answering in XML]: the same schedule as APIv3
        self._notifier.schedule(notification)
