"""Reading a balance: the projected view in one GetItem, or a strong fold of the log.

The view answers in one request and says how fresh it is (`as_of`). A caller that
must see its own write asks for `consistency=strong`: the account's whole log is
read with a consistent query and folded, which costs one read unit per 4 KB of the
account's history, so it is for occasional checks, not hot paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ledger.service import Ledger, check_account_id

from .balances import BalanceChange
from .store import BalanceStore

Consistency = Literal["eventual", "strong"]


@dataclass(frozen=True)
class BalanceView:
    account_id: str
    currency: str
    balance: int
    credits: int
    debits: int
    event_count: int
    as_of: dict[str, str] | None
    consistency: Consistency


class BalanceQueries:
    def __init__(self, store: BalanceStore, ledger: Ledger) -> None:
        self._store = store
        self._ledger = ledger

    def balance(self, account_id: str, consistency: Consistency = "eventual") -> BalanceView:
        check_account_id(account_id)
        if consistency == "strong":
            return self._folded(account_id)
        view = self._store.get(account_id)
        if view is None:  # no event projected yet: the account must still exist
            account = self._ledger.get_account(account_id)
            return BalanceView(account_id, account.currency, 0, 0, 0, 0, None, consistency)
        as_of = None
        if view.as_of_event_id and view.as_of_recorded_at:
            as_of = {"event_id": view.as_of_event_id, "recorded_at": view.as_of_recorded_at}
        return BalanceView(
            account_id, view.currency, view.balance, view.credits, view.debits, view.event_count, as_of, consistency
        )

    def _folded(self, account_id: str) -> BalanceView:
        events = list(self._ledger.full_history(account_id))
        if not events:
            account = self._ledger.get_account(account_id)
            return BalanceView(account_id, account.currency, 0, 0, 0, 0, None, "strong")
        change = BalanceChange.of(events)
        as_of = {"event_id": change.newest_event_id, "recorded_at": change.newest_recorded_at}
        return BalanceView(
            account_id, change.currency, change.balance, change.credits, change.debits, change.event_count, as_of, "strong"
        )
