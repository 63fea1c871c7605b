"""Events: the fold to a balance and the discriminated parse (pure, no IO)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ledger.events import AccountOpened, Credited, Debited, parse_event
from ledger.fold import Totals

_next_id = iter(range(10**6))


def event_data(kind: str, amount: int | None = None, **fields) -> dict:
    """The stored form of one event of `alice`; `kind` is the type's last word."""
    number = next(_next_id)
    data = {
        "type": f"account.{kind}",
        "entity_id": "alice",
        "event_id": f"01ARZ3NDEKTSV4RRFFQ69{number:05d}",
        "transaction_id": f"01ARZ3NDEKTSV4RRFFQ69{number:05d}",
        "transaction_type": {"opened": "open", "credited": "credit", "debited": "debit"}[kind],
        "currency": "EUR",
        "recorded_at": "2026-11-22T10:00:00.000Z",
        "region": "us-east-1",
        "idempotency_key": f"key-{number}",
    }
    if kind == "opened":
        data["allow_overdraft"] = False
    else:
        data["amount"] = amount
    return {**data, **fields}


def test_the_balance_of_no_events_is_zero():
    assert Totals.of([]).balance == 0


def test_the_balance_is_credits_minus_debits_and_opening_adds_nothing():
    events = [
        parse_event(event_data("opened")),
        parse_event(event_data("credited", 1000)),
        parse_event(event_data("debited", 250)),
        parse_event(event_data("credited", 5)),
        parse_event(event_data("debited", 300)),
    ]

    assert Totals.of(events).balance == 455


def test_the_fold_does_not_depend_on_order():
    movements = [("credited", 7), ("debited", 9), ("credited", 1)]
    events = [parse_event(event_data(kind, amount)) for kind, amount in movements]

    assert Totals.of(events).balance == Totals.of(reversed(events)).balance == -1


def test_the_fold_may_go_below_zero():
    assert Totals.of([parse_event(event_data("debited", 40))]).balance == -40


@pytest.mark.parametrize(
    "kind, cls, signed",
    [("opened", AccountOpened, 0), ("credited", Credited, 70), ("debited", Debited, -70)],
)
def test_parse_event_builds_the_class_its_type_names(kind, cls, signed):
    event = parse_event(event_data(kind, None if kind == "opened" else 70))

    assert type(event) is cls
    assert event.signed_amount == signed


def test_a_transfer_leg_keeps_its_counterparty():
    event = parse_event(event_data("debited", 5, transaction_type="transfer", counterparty="bob"))

    assert (type(event), event.counterparty) == (Debited, "bob")


@pytest.mark.parametrize(
    "data",
    [
        {**event_data("credited", 5), "type": "account.refunded"},
        {key: value for key, value in event_data("credited", 5).items() if key != "type"},
        {**event_data("credited", 5), "unexpected": "field"},
        {**event_data("opened"), "type": "account.credited"},  # an opening has no amount
        event_data("credited", 0),
        event_data("credited", -5),
        event_data("debited", 1.5),
        {key: value for key, value in event_data("debited", 5).items() if key != "entity_id"},
    ],
    ids=["unknown type", "no type", "unknown field", "opened as credited", "zero", "negative", "float", "no entity"],
)
def test_parse_event_refuses_what_is_not_an_event(data):
    with pytest.raises(ValidationError):
        parse_event(data)


def test_an_event_round_trips_through_its_json_form():
    event = parse_event(event_data("credited", 12, description="rent", metadata={"ref": "x"}))

    assert parse_event(event.model_dump(mode="json")) == event


def test_events_are_immutable():
    event = parse_event(event_data("credited", 12))

    with pytest.raises(ValidationError):
        event.amount = 1_000_000  # type: ignore[misc]
