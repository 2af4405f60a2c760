"""What the app holds between requests: the wired services, the group committer, thread limiters.

`create_app`'s lifespan stores one `AppState` at `app.state.app_state`; handlers read it through
`app_state(request)`, typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from prometheus_client import CollectorRegistry
from starlette.requests import Request

from api.bootstrap import MerchantServices, Services
from api.metrics import NotifyMetrics
from ledger.application import Ledger
from ledger.groupcommit import GroupCommitter
from ledger.settings import Settings
from projections.read_model.reader import LiveOrdersView
from projections.read_model.view import OrdersView

__all__ = ["AppState", "app_state"]


@dataclass
class AppState:
    services: Services
    committer: GroupCommitter
    limiter: anyio.CapacityLimiter
    views: LiveOrdersView | None = None
    notify_metrics: NotifyMetrics = field(default_factory=lambda: NotifyMetrics(CollectorRegistry()))
    # A bill reconciliation runs for seconds to a minute: one at a time per process, in a thread
    # of its own, so a burst of them neither takes the read API's threads nor fetches a bill twice.
    bills_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))

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


def app_state(request: Request) -> AppState:
    """What `create_app` stored for this app."""
    state: AppState = request.app.state.app_state
    return state
