"""What a set of one account's events adds to its view: the domain's fold (`ledger.fold`), per account.

`BalanceChange.of(events)` is what a set of one account's events adds to its view;
the view after all events is the change of the whole log. The projector applies
changes with `ADD`, verification compares the view with the change of the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.events import Event
from ledger.fold import Totals


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
        totals = Totals.of(events)
        return cls(
            account_id=events[0].entity_id,
            currency=totals.currency or "",
            balance=totals.balance,
            credits=totals.credits,
            debits=totals.debits,
            event_count=totals.event_count,
            newest_event_id=totals.newest_event_id or "",
            newest_recorded_at=totals.newest_recorded_at or "",
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
