"""`bootstrap(settings)`: the composition root, where every long-lived object of every process is built.

The HTTP app (`api.app.create_app`), the projectors, the webhook dispatcher, the reconciler,
the demo and every `payledger` command start from here, so a merchant's keys, its
certificate manager, its WeChat Pay client, the event store and the project's own tables are
built in one way everywhere and closed in one place. Objects a process may not need (the
outbox, the worklist, the group committer, …) are built on first use and closed by `close()`.

It sits with the HTTP app, above `projections/` and `ledger/`, because it builds both; the
command line (`cli/`) sits on top of it. Nothing below imports it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, TypeVar

import httpx

from api.actions import OperatorActions
from ledger.application import Ledger, build_ledger
from ledger.audit.integrity import Report, check_all, check_order
from ledger.domain import PaymentOrder
from ledger.errors import InvalidRequest, OrderNotFound
from ledger.groupcommit import LANES, GroupCommitter
from ledger.identity import OrderKey
from ledger.operators import Operators
from ledger.refunding import OrderRequester, RequestClient
from ledger.settings import MerchantSettings, Settings
from ledger.status_query import OrderQuery
from ledger.store.sql import Database
from ledger.wechatpay.certificates import CertificateManager
from ledger.wechatpay.client import WeChatPayClient
from ledger.wechatpay.keys import KeyStore
from ledger.wechatpay.notification import NotificationVerifier
from projections.bills.lines import BillLines
from projections.bills.reports import BillReports
from projections.bills.service import BillReconciler
from projections.read_model.activity import (
    ACTIVITY_VIEW,
    ActivityView,
    open_activity_view,
    rebuild_activity_view,
    run_activity_projector,
)
from projections.read_model.followed import Rebuilt
from projections.read_model.notifications import (
    NOTIFICATIONS_VIEW,
    NotificationsRebuild,
    NotificationsView,
    open_notifications_view,
    rebuild_notifications_view,
    run_notifications_projector,
)
from projections.read_model.reader import LiveOrdersView, LiveView
from projections.read_model.rebuild import RebuildSummary, rebuild_orders_view
from projections.read_model.runner import catch_up_orders_view, run_orders_projector
from projections.reconcile.reconciler import RECONCILER, Reconciler
from projections.reconcile.worklist import Worklist
from projections.webhooks.dispatcher import Dispatcher
from projections.webhooks.outbox import Outbox
from projections.webhooks.projection import OutboxView, open_outbox_view, run_outbox_projector, sync_endpoints
from projections.webhooks.schema import outbox_url

__all__ = ["MerchantServices", "Services", "bootstrap"]


class _Closes(Protocol):
    def close(self) -> None: ...


_Closeable = TypeVar("_Closeable", bound=_Closes)


@dataclass
class MerchantServices:
    settings: MerchantSettings
    keys: Callable[[], KeyStore]
    verifier: NotificationVerifier
    certificates: CertificateManager | None = None
    client: WeChatPayClient | None = field(default=None, repr=False)

    @property
    def mchid(self) -> str:
        return self.settings.mchid

    @property
    def appid(self) -> str | None:
        return self.settings.appid


@dataclass(frozen=True)
class AuditInputs:
    """What `payledger verify` checks stored evidence with, by mchid, as configured now."""

    keys: dict[str, KeyStore]
    apiv3: dict[str, bytes]
    appids: dict[str, str | None]
    v2_keys: dict[str, str] = field(repr=False)


@dataclass
class Services:
    """Everything a process runs on; built by `bootstrap`, closed by `close()`."""

    settings: Settings
    merchants: dict[str, MerchantServices]
    given_ledger: Ledger | None = field(default=None, repr=False)  # a test's; its owner closes it
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def database_url(self) -> str:
        return self.settings.database_url.value

    def _closing(self, built: _Closeable) -> _Closeable:
        """`built`, to be closed by `close()`."""
        self._closers.append(built.close)
        return built

    def _clients(self) -> dict[str, WeChatPayClient]:
        """The WeChat Pay client of each merchant that can call WeChat Pay (has its API key)."""
        return {mchid: m.client for mchid, m in self.merchants.items() if m.client is not None}

    # -- built on first use --------------------------------------------------------------------

    @cached_property
    def ledger(self) -> Ledger:
        """The event store and the commands on it."""
        if self.given_ledger is not None:
            return self.given_ledger
        return self._closing(build_ledger(self.database_url))

    @cached_property
    def query(self) -> OrderQuery:
        """Ask WeChat Pay about an order now and record the answer as evidence."""
        return OrderQuery(self.ledger, self._clients(), {mchid: m.appid for mchid, m in self.merchants.items()})

    def query_order(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> PaymentOrder:
        """`POST /orders/{no}/query`, the operator's re-query, `payledger query`: ask about the order as it
        was registered, a combined payment's sub-order through its combination (as the reconciler
        does); an order the ledger has never heard of by its number."""
        try:
            combine_out_trade_no = self.ledger.get_order(mchid, out_trade_no, sub_mchid).combine_out_trade_no
        except OrderNotFound:
            combine_out_trade_no = None
        return self.query(mchid, out_trade_no, sub_mchid=sub_mchid, combine_out_trade_no=combine_out_trade_no)

    @cached_property
    def requester(self) -> OrderRequester:
        """Refunds and closes asked through the ledger: decided, recorded write-ahead, sent once."""

        def client_for(mchid: str) -> RequestClient:
            merchant = self.merchants.get(mchid)
            if merchant is None or merchant.client is None:
                raise InvalidRequest(f"merchant {mchid} is not configured to call WeChat Pay (it needs its API key)")
            return merchant.client

        def combined(mchid: str, combine_out_trade_no: str) -> list[OrderKey]:
            catch_up_orders_view(self.database_url)  # a sub-order registered a moment ago is listed too
            rows = self.orders_view.current().combined(combine_out_trade_no)
            return [OrderKey(r["mchid"], r["out_trade_no"], r["sub_mchid"]) for r in rows if r["mchid"] == mchid]

        return OrderRequester(
            self.ledger,
            client_for,
            notify_url=self.settings.notify_url,
            combined=combined,
            appid=lambda mchid: merchant.settings.appid if (merchant := self.merchants.get(mchid)) else None,
        )

    @cached_property
    def operators(self) -> Operators:
        """The named operators of the console, with their roles and password hashes (beside the events)."""
        return Operators(self.database)

    @cached_property
    def actions(self) -> OperatorActions:
        """What operators do (re-query, acknowledge, resend, recover, endpoints), each recorded naming them."""
        return OperatorActions(self)

    @cached_property
    def database(self) -> Database:
        """The project's own tables (outbox, worklist, live-view pointers) on the ledger's store."""
        return self._closing(Database(self.database_url))

    @cached_property
    def committer(self) -> GroupCommitter:
        """The HTTP service's write path: notifications from many requests, one transaction."""
        return self._closing(GroupCommitter(self.ledger, lanes=LANES))

    @cached_property
    def orders_view(self) -> LiveOrdersView:
        """The orders read model as the API reads it: whichever version is live."""
        return self._closing(LiveOrdersView(self.database))

    @cached_property
    def notifications_view(self) -> LiveView[NotificationsView]:
        """The unrouted notifications (those that name no order) as the API reads them: the live version."""
        return self._closing(LiveView(self.database, NOTIFICATIONS_VIEW, open_notifications_view))

    @cached_property
    def activity_view(self) -> LiveView[ActivityView]:
        """What operators (and the ledger's automation) did, newest first: the live version."""
        return self._closing(LiveView(self.database, ACTIVITY_VIEW, open_activity_view))

    @cached_property
    def outbox_view(self) -> OutboxView:
        """The outbox projection's tracking position (for its lag in /readyz and /metrics)."""
        return self._closing(open_outbox_view(self.database_url))

    @cached_property
    def outbox(self) -> Outbox:
        """The outbound messages: beside the events on PostgreSQL, in a file of their own on SQLite."""
        url = outbox_url(self.database_url)
        if url == self.database_url:
            return Outbox(self.database)
        return Outbox(self._closing(Database(url)))

    @cached_property
    def worklist(self) -> Worklist:
        """Open orders whose callback may never come, derived from the log."""
        return Worklist(self.database)

    @cached_property
    def reconciler(self) -> Reconciler:
        settings = self.settings
        return Reconciler(
            self.ledger,
            self.worklist,
            self.query,
            confirm_refund=self.query.refund,
            schedule=settings.reconcile_schedule,
            expiry=settings.reconcile_expiry,
            rate=settings.reconcile_qps,
            close_after=settings.close_after,
            close=lambda key: self.requester.close(key, requested_by=RECONCILER)[0],
        )

    @cached_property
    def bill_reports(self) -> BillReports:
        """Each day's bill report (beside the events)."""
        return BillReports(self.database)

    @cached_property
    def bill_lines(self) -> BillLines:
        """Each kept trade bill's payment and refund lines, with their fees (beside the events)."""
        return BillLines(self.database)

    @cached_property
    def bills(self) -> BillReconciler:
        """Daily bills: fetched, kept as evidence, matched against the orders read model."""
        return BillReconciler(
            self.ledger,
            self.bill_reports,
            self._clients(),
            self.bill_lines,
            self.orders_view.current,
            catch_up=lambda: catch_up_orders_view(self.database_url),
            query=self.query,
        )

    @cached_property
    def dispatcher(self) -> Dispatcher:
        settings = self.settings
        return self._closing(
            Dispatcher(
                self.outbox,
                schedule=settings.webhook_retry_schedule,
                timeout=settings.webhook_timeout,
                disable_after=settings.webhook_disable_after,
            )
        )

    def sync_endpoints(self) -> None:
        """The `[[endpoints]]` of the configuration file into the outbox (an operator's disable stays)."""
        if self.settings.endpoints:
            sync_endpoints(self.outbox, self.settings.endpoints)

    def projector_threads(self, stop: threading.Event) -> list[threading.Thread]:
        """The projections (orders view, outbox, unrouted notifications, activity), each exclusive by its own lock,
        until `stop`."""
        runs = (
            ("orders-view", run_orders_projector),
            ("outbox", run_outbox_projector),
            ("notifications-view", run_notifications_projector),
            ("activity-view", run_activity_projector),
        )
        return [threading.Thread(target=run, args=(self.database_url, stop), name=name) for name, run in runs]

    def dispatcher_thread(self, stop: threading.Event) -> threading.Thread:
        """The dispatcher inside `serve --with-workers` (claims rows like a separate `payledger dispatch`)."""
        return threading.Thread(target=self.dispatcher.run_forever, args=(stop,), name="dispatcher")

    def rebuild_orders_view(self, progress: Callable[[int, int, float], None] | None = None) -> RebuildSummary:
        """`payledger rebuild`: the next version of the orders view from the log, then the switch."""
        return rebuild_orders_view(self.database_url, ledger=self.ledger, progress=progress)

    def rebuild_notifications_view(self) -> NotificationsRebuild:
        """`payledger rebuild notifications_view`: the next version from the log, then the switch."""
        return rebuild_notifications_view(self.database_url)

    def rebuild_activity_view(self) -> Rebuilt:
        """`payledger rebuild activity_view`: the next version from the log, then the switch."""
        return rebuild_activity_view(self.database_url)

    # -- audit ---------------------------------------------------------------------------------

    def audit_all(self, progress: Callable[[int, int], None] | None = None) -> Report:
        """`payledger verify --all`: every chain, every stored signature, every decision re-derived;
        `progress(position, head)` after each page of the log."""
        inputs = self._audit_inputs()
        return check_all(
            self.ledger,
            inputs.keys,
            apiv3=inputs.apiv3,
            appids=inputs.appids,
            sub_mchids=self._sub_mchids(),
            v2_keys=inputs.v2_keys,
            progress=progress,
        )

    def audit_order(self, mchid: str, out_trade_no: str, sub_mchid: str | None = None) -> Report:
        inputs = self._audit_inputs()
        return check_order(
            self.ledger,
            inputs.keys,
            mchid,
            out_trade_no,
            apiv3=inputs.apiv3,
            appids=inputs.appids,
            sub_mchid=sub_mchid,
            sub_mchids=self._sub_mchids(),
            v2_keys=inputs.v2_keys,
        )

    def _sub_mchids(self) -> dict[str, frozenset[str] | None]:
        return {m.mchid: m.sub_mchids for m in self.settings.merchants}

    def _audit_inputs(self) -> AuditInputs:
        """Each configured merchant's verification keys, APIv3 key, appid and (when set) APIv2 key."""
        merchants = self.settings.merchants
        return AuditInputs(
            {m.mchid: m.keys for m in merchants},
            {m.mchid: m.apiv3_key.value.encode() for m in merchants},
            {m.mchid: m.appid for m in merchants},
            {m.mchid: m.v2_key.value for m in merchants if m.v2_key is not None},
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start_background(self) -> None:
        """Periodic certificate refresh (never in a request path)."""
        for merchant in self.merchants.values():
            if merchant.certificates is not None and merchant.client is not None:
                merchant.certificates.start(self.settings.cert_refresh_interval)

    def close(self) -> None:
        """Stop the merchants' background work and clients, then close what was built, newest first."""
        for merchant in self.merchants.values():
            if merchant.certificates is not None:
                merchant.certificates.stop()
            if merchant.client is not None:
                merchant.client.close()
        while self._closers:
            self._closers.pop()()


def _merchant(
    merchant: MerchantSettings, clock: Callable[[], float], transport: httpx.BaseTransport | None
) -> MerchantServices:
    apiv3 = merchant.apiv3_key.value.encode()

    def client(serial: str | None, keys: Callable[[], KeyStore], **kwargs: object) -> WeChatPayClient:
        assert merchant.merchant_serial_no is not None and merchant.merchant_private_key is not None
        return WeChatPayClient(
            mchid=merchant.mchid,
            merchant_serial_no=merchant.merchant_serial_no,
            merchant_private_key=merchant.merchant_private_key,
            keys=keys,
            base_url=merchant.api_base_url,
            wechatpay_serial=serial,
            transport=transport,
            **kwargs,  # type: ignore[arg-type]
        )

    can_call = merchant.merchant_private_key is not None and merchant.merchant_serial_no is not None
    manager = None
    if merchant.platform_cert_dir is not None:
        manager = CertificateManager(
            folder=merchant.platform_cert_dir,
            apiv3_key=apiv3,
            public_keys=merchant.keys.public_keys,
            client_factory=client if can_call else None,
            clock=clock,
        )
        keys: Callable[[], KeyStore] = manager.keys
    else:
        fixed = merchant.keys
        keys = lambda: fixed  # noqa: E731
    query_client = None
    if can_call:
        # In public-key mode ask WeChat to sign answers with the public key we hold ([protocol: Which key signed it]).
        query_client = client(
            merchant.public_key_id,
            keys,
            on_unknown_serial=manager.request_refresh if manager is not None else None,
        )
    verifier = NotificationVerifier(keys, apiv3, clock=clock)
    return MerchantServices(merchant, keys, verifier, manager, query_client)


def bootstrap(
    settings: Settings,
    *,
    ledger: Ledger | None = None,
    clock: Callable[[], float] = time.time,
    transport: httpx.BaseTransport | None = None,
) -> Services:
    """Every long-lived object of a process, from `settings`; each is built when first used.

    `ledger`, `clock` and `transport` are the seams tests use (a shared ledger, a fake clock,
    an `httpx.MockTransport` standing in for WeChat Pay)."""
    merchants = {m.mchid: _merchant(m, clock, transport) for m in settings.merchants}
    return Services(settings, merchants, given_ledger=ledger)
