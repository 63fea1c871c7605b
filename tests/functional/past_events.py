"""Events recorded in the past: the API mints ids at the current time, audits need history.

Each event gets a ULID of the chosen instant and is appended through the event
store's own commit, exactly as the service appends (guarded, append-only).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import ulid

from ledger.accounts import Account
from ledger.events import AccountOpened, Credited, Debited, Event
from ledger.ids import format_rfc3339
from ledger.service import Ledger
from ledger.store import Commit

EPOCH = datetime(2026, 3, 1, tzinfo=timezone.utc)


def past_event(account: str, when: datetime, amount: int = 0, *, currency: str = "EUR") -> Event:
    """An opening (amount 0), a credit (amount > 0) or a debit (amount < 0) of `account` at `when`."""
    event_id = ulid.from_timestamp(when.timestamp()).str
    common = {
        "entity_id": account,
        "event_id": event_id,
        "transaction_id": event_id,
        "currency": currency,
        "recorded_at": format_rfc3339(when),
        "region": "us-east-1",
        "idempotency_key": f"past-{event_id}",
    }
    if amount == 0:
        return AccountOpened(**common, transaction_type="open", allow_overdraft=True)
    if amount > 0:
        return Credited(**common, transaction_type="credit", amount=amount)
    return Debited(**common, transaction_type="debit", amount=-amount)


def append(ledger: Ledger, events: list[Event]) -> None:
    """Append each event; an opening also creates its account, as the service does."""
    for event in events:
        account = None
        if isinstance(event, AccountOpened):
            account = Account(
                account_id=event.entity_id,
                currency=event.currency,
                allow_overdraft=True,
                home_region=event.region,
                opened_at=event.recorded_at,
                opened_event_id=event.event_id,
            )
        ledger.store.commit(Commit(events=(event,), new_account=account))


def at(seconds: float) -> datetime:
    """EPOCH plus `seconds`, to the millisecond."""
    return EPOCH + timedelta(milliseconds=round(seconds * 1000))
