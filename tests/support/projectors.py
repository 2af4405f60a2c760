"""Run a projection over the whole log once and stop, so a test can read a caught-up view; or keep the
orders projector running in the background as `payledger project` does."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from eventsourcing.projection import BaseProjectionRunner

from ledger.application import Ledger
from projections.read_model.activity import activity_head, start_activity_projector
from projections.read_model.notifications import notifications_head, start_notifications_projector
from projections.read_model.runner import orders_head, run_orders_projector, start_orders_projector, wake
from projections.webhooks.projection import start_outbox_projector

__all__ = [
    "orders_projector_running",
    "project_until_caught_up",
    "run_activity",
    "run_notifications",
    "run_outbox",
]


def project_until_caught_up(database_url: str, ledger: Ledger) -> None:
    """The orders view, up to the newest order event of `ledger` (bill events are not tracked)."""
    _run_once(start_orders_projector(database_url), orders_head(ledger) or None)


def run_outbox(database_url: str, ledger: Ledger) -> None:
    """The outbox projection, up to the newest event of `ledger`."""
    _run_once(start_outbox_projector(database_url), ledger.recorder.max_notification_id())


def run_notifications(database_url: str, ledger: Ledger) -> None:
    """The unrouted notifications view, up to the newest delivery to an inbox in `ledger`."""
    _run_once(start_notifications_projector(database_url), notifications_head(ledger) or None)


def run_activity(database_url: str, ledger: Ledger) -> None:
    """The activity view, up to the newest event in `ledger` that names who acted."""
    _run_once(start_activity_projector(database_url), activity_head(ledger) or None)


def _run_once(started: tuple[BaseProjectionRunner[Ledger], Any, Ledger], head: int | None) -> None:
    """Let a started projector reach notification `head`, then stop it and close what it opened."""
    runner, view, loader = started
    with runner:
        runner.wait(head, timeout=20)
        runner.stop()
        wake(loader)
    loader.close()
    view.close()


@contextlib.contextmanager
def orders_projector_running(database_url: str, poll: float = 0.1) -> Iterator[threading.Thread]:
    """`payledger project` in a thread (`run_orders_projector`, asking every `poll` seconds), stopped on exit."""
    stop = threading.Event()
    projector = threading.Thread(target=run_orders_projector, args=(database_url, stop, poll))
    projector.start()
    try:
        yield projector
    finally:
        stop.set()
        projector.join(30)
