"""The pure fold from events to balance changes (no IO): sums, newest event, refusals, order."""

from __future__ import annotations

import itertools

import pytest
from profiles import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import AccountOpened, Credited, Debited
from projections.balances import BalanceChange, fold_by_account

_numbers = itertools.count(1)


def make_event(kind: str, amount: int = 0, *, account: str = "alice", number: int | None = None):
    """One event of `account`; ids are ULID-shaped and grow with `number` (default: a fresh one)."""
    number = next(_numbers) if number is None else number
    event_id = f"01JD{number:022d}"
    common = {
        "entity_id": account,
        "event_id": event_id,
        "transaction_id": event_id,
        "currency": "EUR",
        "recorded_at": f"2026-11-22T10:00:{number % 60:02d}.{number % 1000:03d}Z",
        "region": "us-east-1",
        "idempotency_key": f"key-{number}",
    }
    if kind == "opened":
        return AccountOpened(**common, transaction_type="open", allow_overdraft=True)
    if kind == "credited":
        return Credited(**common, transaction_type="credit", amount=amount)
    return Debited(**common, transaction_type="debit", amount=amount)


def test_a_change_sums_credits_and_debits_and_counts_every_event():
    events = [
        make_event("opened"),
        make_event("credited", 500),
        make_event("debited", 120),
        make_event("credited", 30),
        make_event("debited", 400),
    ]

    change = BalanceChange.of(events)

    assert change.account_id == "alice"
    assert change.currency == "EUR"
    assert change.credits == 530
    assert change.debits == 520
    assert change.balance == 10
    assert change.event_count == 5


def test_a_change_of_only_debits_has_a_negative_balance_and_no_credits():
    change = BalanceChange.of([make_event("debited", 7), make_event("debited", 3)])

    assert (change.balance, change.credits, change.debits, change.event_count) == (-10, 0, 10, 2)


def test_an_opening_event_counts_but_moves_no_money():
    change = BalanceChange.of([make_event("opened")])

    assert (change.balance, change.credits, change.debits, change.event_count) == (0, 0, 0, 1)


def test_a_change_names_the_newest_event_whatever_the_order_it_was_given_in():
    oldest = make_event("credited", 1, number=10)
    middle = make_event("credited", 2, number=20)
    newest = make_event("debited", 3, number=30)

    change = BalanceChange.of([middle, newest, oldest])

    assert change.newest_event_id == newest.event_id
    assert change.newest_recorded_at == newest.recorded_at


def test_a_change_refuses_events_of_two_accounts():
    with pytest.raises(ValueError, match="one account"):
        BalanceChange.of([make_event("credited", 1, account="alice"), make_event("credited", 1, account="bob")])


def test_a_change_refuses_no_events():
    with pytest.raises(ValueError, match="at least one event"):
        BalanceChange.of([])


def test_a_change_accepts_any_iterable_once():
    change = BalanceChange.of(event for event in [make_event("credited", 4), make_event("credited", 6)])

    assert change.balance == 10 and change.event_count == 2


def test_fold_by_account_counts_a_duplicated_event_once():
    credit = make_event("credited", 100)
    debit = make_event("debited", 40)

    changes = fold_by_account([credit, debit, credit, credit.model_copy(), debit])

    assert changes["alice"] == BalanceChange.of([credit, debit])
    assert changes["alice"].event_count == 2


def test_fold_by_account_separates_accounts():
    alice = [make_event("credited", 5, account="alice"), make_event("debited", 2, account="alice")]
    bob = [make_event("credited", 9, account="bob")]

    changes = fold_by_account([alice[0], bob[0], alice[1]])

    assert set(changes) == {"alice", "bob"}
    assert changes["alice"] == BalanceChange.of(alice)
    assert changes["bob"] == BalanceChange.of(bob)


def test_fold_by_account_of_nothing_is_empty():
    assert fold_by_account([]) == {}


movements = st.lists(
    st.tuples(st.sampled_from(["opened", "credited", "debited"]), st.integers(min_value=1, max_value=2**53 - 1)),
    min_size=1,
    max_size=30,
)


def _events_of(drawn) -> list:
    base = next(_numbers) * 100
    return [make_event(kind, amount, number=base + i) for i, (kind, amount) in enumerate(drawn)]


@settings(max_examples=examples(200), deadline=None)
@given(data=st.data(), drawn=movements)
def test_the_order_of_events_does_not_change_the_change(data, drawn):
    events = _events_of(drawn)
    shuffled = data.draw(st.permutations(events), label="shuffled")

    assert BalanceChange.of(shuffled) == BalanceChange.of(events)


@settings(max_examples=examples(200), deadline=None)
@given(drawn=movements)
def test_the_change_agrees_with_a_plain_sum_of_the_movements(drawn):
    change = BalanceChange.of(_events_of(drawn))

    credits = sum(amount for kind, amount in drawn if kind == "credited")
    debits = sum(amount for kind, amount in drawn if kind == "debited")
    assert (change.balance, change.credits, change.debits, change.event_count) == (
        credits - debits,
        credits,
        debits,
        len(drawn),
    )
    assert change.credits >= 0 and change.debits >= 0


@settings(max_examples=examples(200), deadline=None)
@given(data=st.data(), drawn=movements)
def test_fold_by_account_ignores_order_and_duplicates(data, drawn):
    events = _events_of(drawn)
    duplicates = data.draw(st.lists(st.sampled_from(events), max_size=10), label="duplicates")
    delivered = data.draw(st.permutations(events + duplicates), label="delivered")

    assert fold_by_account(delivered) == {"alice": BalanceChange.of(events)}
