"""The one fold from events to balances, shared by the projector, the strong read and the auditor.

A balance is the fold of `signed_amount` over an account's events; `credits` and
`debits` are the two sides of it, `event_count` counts every event (openings too),
and the newest event (by id) says how far the fold has got. Addition commutes, so
the order of `add` calls does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .events import Event


@dataclass
class Totals:
    currency: str | None = None
    balance: int = 0
    credits: int = 0
    debits: int = 0
    event_count: int = 0
    newest_event_id: str | None = None
    newest_recorded_at: str | None = None

    def add(self, event: Event) -> None:
        amount = event.signed_amount
        self.currency = self.currency or event.currency
        self.balance += amount
        self.credits += max(amount, 0)
        self.debits += max(-amount, 0)
        self.event_count += 1
        if self.newest_event_id is None or event.event_id > self.newest_event_id:
            self.newest_event_id, self.newest_recorded_at = event.event_id, event.recorded_at

    @classmethod
    def of(cls, events: Iterable[Event]) -> Totals:
        totals = cls()
        for event in events:
            totals.add(event)
        return totals
