"""Run a projection over the whole log once and stop, so a test can read a caught-up view."""

from __future__ import annotations

from ledger.application import Ledger
from projections.read_model.runner import start_orders_projector, wake
from projections.webhooks.projection import start_outbox_projector

__all__ = ["project_until_caught_up", "run_outbox"]


def project_until_caught_up(database_url: str, ledger: Ledger) -> None:
    """The orders view, up to the newest event of `ledger`."""
    runner, view, loader = start_orders_projector(database_url)
    with runner:
        runner.wait(ledger.recorder.max_notification_id(), timeout=20)
        runner.stop()
        wake(loader)
    loader.close()
    view.close()


def run_outbox(database_url: str, ledger: Ledger) -> None:
    """The outbox projection, up to the newest event of `ledger`."""
    runner, view, loader = start_outbox_projector(database_url)
    with runner:
        runner.wait(ledger.recorder.max_notification_id(), timeout=20)
        runner.stop()
        wake(loader)
    loader.close()
    view.close()
