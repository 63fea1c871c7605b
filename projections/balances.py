"""The pure fold from events to balances: no IO, shared by the projector and the auditor.

`BalanceChange.of(events)` is what a set of one account's events adds to its view;
the view after all events is the change of the whole log. The projector applies
changes with `ADD`, verification compares the view with the change of the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.events import Event


@dataclass(frozen=True)
class BalanceChange:
    """The summed effect of some events of one account."""

    account_id: str
    currency: str
    balance: int
    credits: int
    debits: int
    event_count: int
    newest_event_id: str
    newest_recorded_at: str

    @classmethod
    def of(cls, events: Iterable[Event]) -> BalanceChange:
        events = list(events)
        if not events:
            raise ValueError("a change needs at least one event")
        if len({e.entity_id for e in events}) != 1:
            raise ValueError("a change covers one account")
        newest = max(events, key=lambda e: e.event_id)
        credits = sum(e.signed_amount for e in events if e.signed_amount > 0)
        debits = -sum(e.signed_amount for e in events if e.signed_amount < 0)
        return cls(
            account_id=newest.entity_id,
            currency=newest.currency,
            balance=credits - debits,
            credits=credits,
            debits=debits,
            event_count=len(events),
            newest_event_id=newest.event_id,
            newest_recorded_at=newest.recorded_at,
        )


def fold_by_account(events: Iterable[Event]) -> dict[str, BalanceChange]:
    """The change of each account among `events` (duplicates by identity counted once)."""
    unique: dict[tuple[str, str], Event] = {}
    for event in events:
        unique.setdefault((event.entity_id, event.event_id), event)
    by_account: dict[str, list[Event]] = {}
    for event in unique.values():
        by_account.setdefault(event.entity_id, []).append(event)
    return {account: BalanceChange.of(group) for account, group in by_account.items()}
