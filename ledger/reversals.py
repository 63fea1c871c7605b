"""Reversals, the pure part: what may be reversed, when its legs are all in, and their negation.

A correction never touches the log: it is a new transaction whose legs negate the
original's, one for one (a credit becomes a debit of the same amount on the same
account, and the reverse), each naming the original in `reverses`.

The legs of a transaction are found through the `by_transaction` index, and index
reads are eventually consistent: DynamoDB propagates a committed transaction to its
indexes item by item, so for a moment a transfer can show one leg without the other.
Reversing that view would negate half a transfer. `legs_complete` tells the caller
to read again instead; `reversal_legs` builds the new events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import errors
from .events import Credited, Debited, Event
from .ids import format_rfc3339, ulid_time

# How many legs a transaction of each kind has; openings and reversals cannot be reversed.
LEGS_BY_KIND = {"credit": 1, "debit": 1, "transfer": 2}


def check_reversible(transaction_id: str, legs: Sequence[Event]) -> None:
    """Refuse an account opening, a move or a reversal: none is undone by a reversal."""
    kind = legs[0].transaction_type
    if kind in ("open", "move"):
        what = "an account opening" if kind == "open" else "a move of an account's home"
        raise errors.NotReversible(f"transaction {transaction_id} is {what}", transaction_id=transaction_id)
    if kind == "reversal":
        raise errors.NotReversible(
            f"transaction {transaction_id} is a reversal (record a new transaction instead)",
            transaction_id=transaction_id,
            reverses=legs[0].reverses,
        )


def legs_complete(legs: Sequence[Event]) -> bool:
    """Whether every leg of the transaction is there (a transfer: its debit and its credit)."""
    expected = LEGS_BY_KIND.get(legs[0].transaction_type)
    if expected is None or len(legs) < expected:
        return False
    if legs[0].transaction_type == "transfer":
        return any(isinstance(leg, Debited) for leg in legs) and any(isinstance(leg, Credited) for leg in legs)
    return True


def reversal_legs(
    transaction_id: str,
    legs: Sequence[Event],
    *,
    reversal_id: str,
    new_event_id: Callable[[str], str],
    region: str,
    idempotency_key: str,
    caller: str | None,
    description: str | None,
    metadata: dict[str, str],
) -> tuple[Credited | Debited, ...]:
    """One leg per original leg, in the same order, in the opposite direction, under `reversal_id`."""
    reversed_legs: list[Credited | Debited] = []
    for leg in legs:
        if not isinstance(leg, (Credited, Debited)):
            raise errors.NotReversible(
                f"transaction {transaction_id} has a leg that moves no money", transaction_id=transaction_id
            )
        opposite = Debited if isinstance(leg, Credited) else Credited
        event_id = new_event_id(leg.entity_id)
        reversed_legs.append(
            opposite(
                entity_id=leg.entity_id,
                event_id=event_id,
                transaction_id=reversal_id,
                transaction_type="reversal",
                amount=leg.amount,
                currency=leg.currency,
                recorded_at=format_rfc3339(ulid_time(event_id)),
                region=region,
                idempotency_key=idempotency_key,
                caller=caller,
                description=description or f"reversal of {transaction_id}",
                metadata=metadata,
                reverses=transaction_id,
                counterparty=leg.counterparty,
            )
        )
    return tuple(reversed_legs)
