"""Things a test builds as it goes and a fixture closes afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["making"]

T = TypeVar("T")


def making(build: Callable[..., T], close: Callable[[T], object]) -> Iterator[Callable[..., T]]:
    """A fixture's body: yields `build` (called with whatever the test passes), then `close`s every
    thing it built, in the order they were built."""
    made: list[T] = []

    def make(*args: Any, **kwargs: Any) -> T:
        made.append(build(*args, **kwargs))
        return made[-1]

    yield make
    for thing in made:
        close(thing)
