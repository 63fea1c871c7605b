"""Reading a balance: the projected view in one GetItem, or a strong fold of the log.

The view answers in one request and says how fresh it is (`as_of`). A caller that
must see its own write asks for `consistency=strong`: the account's whole log is
read with a consistent query and folded, which costs one read unit per 4 KB of the
account's history, so it is for occasional checks, not hot paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ledger import errors
from ledger.ids import is_ulid
from ledger.service import Ledger, check_account_id
from ledger.store import account_from_item

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
    region: str = ""
    available: int | None = None  # what a no-overdraft debit may take here (the account item's guard)
    replication_watermark: str | None = None  # this region holds every other region's writes up to it

    @property
    def in_flight(self) -> int:
        """Credits counted in the balance but not yet available (recorded in another home, not settled yet)."""
        return max(0, self.balance - self.available) if self.available is not None else 0


class BalanceQueries:
    """A balance in one request, saying how fresh it is; read-your-writes across regions on demand."""

    def __init__(self, store: BalanceStore, ledger: Ledger, region: str = "") -> None:
        self._store = store
        self._ledger = ledger
        self._region = region

    def balance(self, account_id: str, consistency: Consistency = "eventual", min_as_of: str | None = None) -> BalanceView:
        check_account_id(account_id)
        if min_as_of is not None and not is_ulid(min_as_of):
            raise errors.InvalidQuery("min_as_of is the id of an event (a 26-character ULID)")
        if consistency == "strong":
            return self._folded(account_id, min_as_of)
        read = self._store.freshness_read(account_id, min_as_of)
        if read["account"] is None:
            raise errors.AccountNotFound(f"account {account_id!r} does not exist", account_id=account_id)
        if read["holds"] is False:
            raise errors.NotYetReplicated(
                f"event {min_as_of} is not in this region's view of {account_id!r} yet; retry shortly",
                account_id=account_id, region=self._region, min_as_of=min_as_of,
            )  # fmt: skip
        account = account_from_item(read["account"])
        view = read["balance"]
        if view is None:  # no event projected yet
            return BalanceView(account_id, account.currency, 0, 0, 0, 0, None, consistency, self._region,
                               account.available, read["watermark"])  # fmt: skip
        as_of = None
        if view.as_of_event_id and view.as_of_recorded_at:
            as_of = {"event_id": view.as_of_event_id, "recorded_at": view.as_of_recorded_at}
        return BalanceView(
            account_id, view.currency, view.balance, view.credits, view.debits, view.event_count, as_of, consistency,
            self._region, account.available, read["watermark"],
        )  # fmt: skip

    def _folded(self, account_id: str, min_as_of: str | None) -> BalanceView:
        events = list(self._ledger.full_history(account_id))
        account = self._ledger.get_account(account_id)
        if min_as_of is not None and all(event.event_id != min_as_of for event in events):
            raise errors.NotYetReplicated(
                f"event {min_as_of} is not in this region's log of {account_id!r} yet; retry shortly",
                account_id=account_id, region=self._region, min_as_of=min_as_of,
            )  # fmt: skip
        if not events:
            return BalanceView(account_id, account.currency, 0, 0, 0, 0, None, "strong", self._region, account.available)
        change = BalanceChange.of(events)
        as_of = {"event_id": change.newest_event_id, "recorded_at": change.newest_recorded_at}
        return BalanceView(
            account_id, change.currency, change.balance, change.credits, change.debits, change.event_count, as_of, "strong",
            self._region, account.available,
        )  # fmt: skip
