"""Many threads doing one thing at the same moment: the races the tests provoke on purpose."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["all_at_once"]

T = TypeVar("T")


def all_at_once(work: Callable[[T], object], items: Iterable[T], timeout: float = 60) -> list[BaseException]:
    """`work(item)` for every item, each in a thread of its own, all let go together (a barrier); what
    they raised, once every thread has finished or `timeout` seconds have passed for each."""
    items = list(items)
    start = threading.Barrier(len(items))
    errors: list[BaseException] = []

    def run(item: T) -> None:
        start.wait()
        try:
            work(item)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return errors
