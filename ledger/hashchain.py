"""Tamper evidence: every event carries a hash chaining it to the one before it in its stream.

``chain = sha256(previous chain ␊ topic ␊ canonical JSON of the event without its chain)``,
with `GENESIS` before the first event. The canonical form is what survives the store's round
trip unchanged (UTF-8 JSON with sorted keys and fixed separators, datetimes in ISO form,
UUIDs and Decimals as strings), so `payledger verify` recomputes the same hash from the decoded event years later.
Editing, deleting or reordering a stored event breaks the chain at that point.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Self

import msgspec
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

__all__ = ["GENESIS", "ChainedAggregate", "canonical", "event_fields", "link"]

GENESIS = "0" * 64
_CHAIN = "chain"


def _unknown(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} has no canonical form")


# msgspec writes sorted keys with fixed separators, datetimes as RFC 3339 (an ISO 8601
# profile), UUIDs and Decimals as strings; much faster than the json module, and this is the
# hot path (docs/benchmarks.md, "Hash chain").
_ENCODER = msgspec.json.Encoder(order="sorted", decimal_format="string", enc_hook=_unknown)
_TOPICS: dict[type, bytes] = {}


def _topic(cls: type) -> bytes:
    topic = _TOPICS.get(cls)
    if topic is None:
        topic = _TOPICS[cls] = get_topic(cls).encode()
    return topic


def canonical(event_class: type, fields: dict[str, Any]) -> bytes:
    """The event's content as hashed: its topic, then every field but the chain."""
    return _topic(event_class) + b"\n" + _ENCODER.encode(fields)


def link(previous: str, event_class: type, fields: dict[str, Any]) -> str:
    """The chain hash of an event with these fields, following `previous`."""
    digest = hashlib.sha256(previous.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical(event_class, fields))
    return digest.hexdigest()


_DEFAULTS: dict[type, dict[str, Any]] = {}


def _defaults(event_class: type) -> dict[str, Any]:
    """The fields an event class fills in when not given (an optional field added later, such as an
    order's `sub_mchid`): the constructed event holds them, so its hash must cover them. Events
    stored before such a field existed lack it, and their hashes never covered it."""
    found = _DEFAULTS.get(event_class)
    if found is None:
        found = _DEFAULTS[event_class] = {
            f.name: f.default
            for f in dataclasses.fields(event_class)
            if f.default is not dataclasses.MISSING and f.name != _CHAIN
        }
    return found


def event_fields(event: Any) -> dict[str, Any]:
    """A decoded event's content without its chain, as `link` takes it."""
    return {k: v for k, v in vars(event).items() if k != _CHAIN}


class ChainedAggregate(Aggregate):
    """Aggregates whose events are hash-chained; decisions are untouched.

    The library re-bases every event class declared in a subclass onto that subclass's
    `Event`, so all of them get the `chain` field from here. Events stored before the chain
    existed decode with an empty chain, which `verify` reports.
    """

    if TYPE_CHECKING:  # set by every event's mutate(); a real annotation would make a dataclass field
        chain_head: str

    class Event(Aggregate.Event):
        chain: str = dataclasses.field(default="", kw_only=True)

        def mutate(self, aggregate: Any) -> Any:
            aggregate = super().mutate(aggregate)
            aggregate.chain_head = self.chain
            return aggregate

    class Created(Event, Aggregate.Created):
        pass

    @classmethod
    def _create(cls, event_class: type[Any], *, id: Any = None, **kwargs: Any) -> Self:
        # Every field the library would add is fixed here first, so the hash covers it.
        kwargs["timestamp"] = kwargs.get("timestamp") or event_class.create_timestamp()
        fields = {
            **_defaults(event_class),
            **kwargs,
            "originator_topic": get_topic(cls),
            "originator_id": id,
            "originator_version": cls.INITIAL_VERSION,
        }
        return super()._create(event_class, id=id, chain=link(GENESIS, event_class, fields), **kwargs)

    def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None:
        kwargs["timestamp"] = kwargs.get("timestamp") or event_class.create_timestamp()
        fields = {**_defaults(event_class), **kwargs, "originator_id": self.id, "originator_version": self.version + 1}
        super().trigger_event(event_class, chain=link(self.chain_head, event_class, fields), **kwargs)
