"""What the app holds between requests: the wired services, the group committer, a thread limiter."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import anyio
from prometheus_client import CollectorRegistry

from api.metrics import NotifyMetrics
from ledger.application import Ledger
from ledger.bootstrap import MerchantServices, Services
from ledger.groupcommit import GroupCommitter
from ledger.settings import Settings
from projections.read_model.live import live_view
from projections.read_model.runner import open_orders_view
from projections.read_model.view import NAME, OrdersView

__all__ = ["AppState", "LiveView"]


class LiveView:
    """The live version of the orders view, re-checked at most once a second (a rebuild may switch it)."""

    def __init__(self, database_url: str, interval: float = 1.0) -> None:
        self._url = database_url
        self._interval = interval
        self._lock = threading.Lock()
        self._name = live_view(database_url, NAME)
        self._view = open_orders_view(database_url, self._name)
        self._checked = time.monotonic()

    def current(self) -> OrdersView:
        with self._lock:
            if time.monotonic() - self._checked >= self._interval:
                self._checked = time.monotonic()
                name = live_view(self._url, NAME)
                if name != self._name:
                    old, self._view, self._name = self._view, open_orders_view(self._url, name), name
                    old.close()
            return self._view

    def close(self) -> None:
        self._view.close()


@dataclass
class AppState:
    services: Services
    committer: GroupCommitter
    limiter: anyio.CapacityLimiter
    views: LiveView | None = None
    notify_metrics: NotifyMetrics = field(default_factory=lambda: NotifyMetrics(CollectorRegistry()))

    @property
    def orders_view(self) -> OrdersView | None:
        return self.views.current() if self.views is not None else None

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger

    @property
    def merchants(self) -> dict[str, MerchantServices]:
        return self.services.merchants

    @property
    def default_mchid(self) -> str | None:
        merchant = self.settings.default_merchant
        return merchant.mchid if merchant else None

    @property
    def max_body_bytes(self) -> int:
        return self.settings.max_body_bytes
