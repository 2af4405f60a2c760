"""The dispatchers' lease protocol on its own, on SQLite and PostgreSQL: who may send a message,
and what each way of settling it leaves behind."""

from __future__ import annotations

import datetime as dt

from projections.webhooks.outbox import Outbox
from projections.webhooks.records import Attempt, Message
from tests.support.constants import MCHID

T0 = 1_800_000_000.0
LEASE = 60.0


def decided(outbox: Outbox, *orders: int) -> list[str]:
    """One message per order for the one endpoint, created (and due) at T0 + n; their ids."""
    for n in orders:
        outbox.messages.enqueue(
            source_id=f"stream:{n}",
            event_type="PaymentSucceeded",
            mchid=MCHID,
            out_trade_no=f"ORDER-{n:04d}",
            stream_version=n,
            data={"out_trade_no": f"ORDER-{n:04d}"},
            occurred_at=dt.datetime.fromtimestamp(T0, dt.UTC),
            created_at=T0 + n,
        )
    return [m.id for m in sorted(outbox.messages.newest(limit=100), key=lambda m: m.stream_version)]


def ids(messages: list[Message]) -> list[str]:
    return [m.id for m in messages]


def failed(at: float, status: int = 503) -> Attempt:
    return Attempt(at, status, 12.5, f"answer {status}")


def test_a_due_message_is_leased_to_one_owner_until_released_or_its_lease_runs_out(outbox: Outbox) -> None:
    outbox.endpoints.add("http://127.0.0.1:9/hook")
    first, second = decided(outbox, 1, 2)
    now = T0 + 10

    assert ids(outbox.leases.claim_due("a", now, LEASE, 10)) == [first, second]  # oldest first
    assert outbox.leases.claim_due("b", now, LEASE, 10) == []
    outbox.leases.release("b", [first])  # not b's to give back
    assert outbox.leases.claim_due("b", now, LEASE, 10) == []
    outbox.leases.release("a", [first])
    assert ids(outbox.leases.claim_due("b", now, 2 * LEASE, 10)) == [first]
    assert ids(outbox.leases.claim_due("c", now + LEASE + 1, LEASE, 10)) == [second]  # a's lease ran out, b's not


def test_only_due_messages_of_enabled_endpoints_are_claimed_up_to_the_limit(outbox: Outbox) -> None:
    endpoint = outbox.endpoints.add("http://127.0.0.1:9/hook")
    first, second, third = decided(outbox, 1, 2, 3)

    assert outbox.leases.claim_due("a", T0, LEASE, 10) == []  # created at T0 + 1 and later
    assert ids(outbox.leases.claim_due("a", T0 + 2, LEASE, 10)) == [first, second]
    outbox.endpoints.disable(endpoint.id, "maintenance", at=T0 + 3)
    assert outbox.leases.claim_due("b", T0 + 3, LEASE, 10) == []
    outbox.endpoints.enable(endpoint.id, at=T0 + 3)
    assert ids(outbox.leases.claim_due("b", T0 + 3, LEASE, 1)) == [third]


def test_each_settlement_records_its_attempt_and_moves_the_message_on(outbox: Outbox) -> None:
    outbox.endpoints.add("http://127.0.0.1:9/hook")
    delivered, retried, dead = decided(outbox, 1, 2, 3)
    now = T0 + 10
    outbox.leases.claim_due("a", now, LEASE, 10)

    ok = Attempt(now, 204, 3.0)
    assert outbox.leases.mark_delivered("a", delivered, ok)
    assert outbox.leases.schedule_retry("a", retried, failed(now), now + 300)
    assert outbox.leases.mark_dead("a", dead, failed(now, 500))

    by_id = {m.id: m for m in outbox.messages.newest()}
    assert (by_id[delivered].state, by_id[delivered].delivered_at) == ("delivered", now)
    assert by_id[delivered].history == (ok,)
    assert (by_id[retried].state, by_id[retried].next_attempt_at) == ("failing", now + 300)
    assert by_id[retried].history == (failed(now),)
    assert (by_id[dead].state, by_id[dead].history) == ("dead", (failed(now, 500),))
    assert {m.attempts for m in by_id.values()} == {1}
    assert outbox.messages.counts() == {"pending": 0, "delivered": 1, "failing": 1, "dead": 1}

    # Settled messages are no longer leased: the retry is due again at its time, the others never.
    assert outbox.leases.claim_due("b", now + 299, LEASE, 10) == []
    assert ids(outbox.leases.claim_due("b", now + 300, LEASE, 10)) == [retried]


def test_a_lost_lease_keeps_the_attempt_but_leaves_the_state_to_the_new_owner(outbox: Outbox) -> None:
    outbox.endpoints.add("http://127.0.0.1:9/hook")
    [msg] = decided(outbox, 1)
    outbox.leases.claim_due("slow", T0 + 10, LEASE, 10)
    assert ids(outbox.leases.claim_due("fast", T0 + 10 + LEASE + 1, LEASE, 10)) == [msg]

    late = Attempt(T0 + 10 + LEASE + 2, 200, 61_000.0)
    assert not outbox.leases.mark_delivered("slow", msg, late)
    assert not outbox.leases.schedule_retry("slow", msg, late, T0 + 1000)
    assert not outbox.leases.mark_dead("slow", msg, late)
    waiting = outbox.messages.get(msg)
    assert (waiting.state, waiting.attempts, waiting.history) == ("pending", 0, (late, late, late))

    assert outbox.leases.mark_delivered("fast", msg, Attempt(T0 + 80, 200, 2.0))
    assert outbox.messages.get(msg).state == "delivered"


def test_a_delivery_ends_the_endpoints_failing_streak_and_a_failure_does_not(outbox: Outbox) -> None:
    endpoint = outbox.endpoints.add("http://127.0.0.1:9/hook")
    first, second = decided(outbox, 1, 2)
    outbox.leases.claim_due("a", T0 + 10, LEASE, 10)

    outbox.leases.schedule_retry("a", first, failed(T0 + 10), T0 + 20)
    assert outbox.endpoints.note_failure(endpoint.id, T0 + 10) == T0 + 10
    assert outbox.endpoints.note_failure(endpoint.id, T0 + 15) == T0 + 10  # failing since the first
    outbox.leases.mark_dead("a", second, failed(T0 + 11))
    assert outbox.endpoints.get(endpoint.id).failing_since == T0 + 10

    outbox.leases.claim_due("a", T0 + 20, LEASE, 10)
    outbox.leases.mark_delivered("a", first, Attempt(T0 + 20, 200, 1.0))
    assert outbox.endpoints.get(endpoint.id).failing_since is None


def test_an_attempt_recorded_alone_changes_no_message_and_keeps_a_bounded_body(outbox: Outbox) -> None:
    outbox.endpoints.add("http://127.0.0.1:9/hook")
    [msg] = decided(outbox, 1)
    outbox.leases.record_attempt(msg, Attempt(T0 + 5, 502, 4.0, "x" * 2000, None))
    [attempt] = outbox.messages.get(msg).history
    assert attempt == Attempt(T0 + 5, 502, 4.0, "x" * 500, None)
    assert (outbox.messages.get(msg).state, outbox.messages.get(msg).attempts) == ("pending", 0)
