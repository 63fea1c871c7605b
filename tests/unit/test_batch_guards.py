"""A batch's events of one account share one guard: summed, ordered, covering every prefix."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.batches import combined_guards
from ledger.schema import LedgerTables
from ledger.store import BalanceGuard, EventStore

TABLES = LedgerTables.for_stage("unit")


def guard(account: str, delta: int, event_id: str, **extra) -> BalanceGuard:
    return BalanceGuard(account, "EUR", delta, event_id, **extra)


def test_one_guard_per_account_with_the_sum_the_first_and_last_ids_and_the_deepest_prefix():
    guards = [guard("a", 100, "01A"), guard("b", 5, "01B"), guard("a", -150, "01C"), guard("a", 60, "01D")]

    a, b = combined_guards(guards)

    assert (a.account_id, a.delta, a.first_event_id, a.event_id, a.requires) == ("a", 10, "01A", "01D", 50)
    assert b == guards[1]  # alone: as it was


def test_the_update_asks_the_account_to_be_below_the_first_event_and_names_the_last():
    (combined,) = combined_guards([guard("a", 7, "01A"), guard("a", -3, "01B")])

    update = EventStore(None, TABLES, "us-east-1")._update_guard(combined)["Update"]

    assert "last_event_id < :first" in update["ConditionExpression"]
    values = update["ExpressionAttributeValues"]
    assert (values[":first"], values[":event"], values[":delta"]) == ({"S": "01A"}, {"S": "01B"}, {"N": "4"})
    assert update["UpdateExpression"].startswith("ADD available :delta SET last_event_id = :event")
    assert "available >= :needed" not in update["ConditionExpression"]  # no prefix goes below zero


@given(st.lists(st.integers(-1000, 1000).filter(bool), min_size=1, max_size=30))
def test_what_the_guard_requires_is_exactly_what_keeps_every_prefix_at_or_above_zero(deltas):
    guards = [guard("a", delta, f"01{n:03d}") for n, delta in enumerate(deltas)]
    (combined,) = combined_guards(guards)

    def never_below_zero(available: int) -> bool:
        running = available
        for delta in deltas:
            running += delta
            if running < 0:
                return False
        return True

    assert combined.delta == sum(deltas)
    assert never_below_zero(combined.requires)
    assert combined.requires == 0 or not never_below_zero(combined.requires - 1)
