"""Moving accounts' homes from one region to another: planned (fence, wait, recompute, open) or forced.

A condition sees only its own replica, so the one-writer-per-item rule is kept by
order, not by a fence in the new home:

- *Planned* (both regions reachable). `fence` writes, in the old home, the new home,
  the next write epoch and `moving_from`: from that write on the old home refuses the
  accounts' guarded writes (421 naming the new home). `replicated` then waits until
  the new home holds the fence and every event and live idempotency record the old
  home holds for the account (a marker item proves nothing: cross-item order is not
  kept). `open` recomputes `available` from the new home's log and clears
  `moving_from`, with an `account.home_moved` event, in one transaction that also
  checks that the region's projector has folded exactly the events counted: what it
  folds later it settles itself (`projections.store`), what it folded before it never
  adds, so nothing is counted twice or missed.
- *Forced* (the old home unreachable). `take_over` writes the move in the new home
  alone, from the log it has. The old home's last writes that had not left it arrive
  after it heals, and the new home's projector adds them then. Whether both sides
  could write meanwhile is the lease's business (`failover.lease`).

Every step can run again: a command that died half-way is run again as it was.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from audit.canonical import digest_of
from ledger.accounts import Account
from ledger.events import Event, HomeMoved
from ledger.fold import Totals
from ledger.ids import format_rfc3339, new_ulid_after, ulid_time
from ledger.service import Caller

if TYPE_CHECKING:
    from composition.root import Root

OPERATOR_CALLER = "operator"
LOWEST, HIGHEST = "0" * 26, "Z" * 26


def full_log(root: Root, account_id: str) -> list[Event]:
    """The account's every event in this region's replica, in id order (strongly consistent)."""
    events: list[Event] = []
    after: str | None = None
    while True:
        page, more = root.event_store.account_events(account_id, LOWEST, HIGHEST, limit=1000, after=after)
        events.extend(page)
        if not more or not page:
            return events
        after = page[-1].event_id


@dataclass
class Move:
    """Moving the homes of `source`'s accounts (those matching `pattern`) to `target`."""

    source: Root
    target: Root
    pattern: str | None = None
    record_ttl_seconds: float = 86_400.0
    epochs: dict[str, int] = field(default_factory=dict)  # account -> the epoch it moves under

    @property
    def source_name(self) -> str:
        return self.source.settings.region

    @property
    def target_name(self) -> str:
        return self.target.settings.region

    def _matches(self, account_id: str) -> bool:
        return self.pattern is None or fnmatch.fnmatchcase(account_id, self.pattern)

    # -- planned -------------------------------------------------------------------------

    def select(self, accounts: Iterable[Account]) -> list[Account]:
        """Accounts homed in the source, and those a fence already sends to the target (a resumed move)."""
        chosen = []
        for account in accounts:
            if not self._matches(account.account_id):
                continue
            homed_here = account.home_region == self.source_name and account.moving_from is None
            fenced_before = account.home_region == self.target_name and account.moving_from == self.source_name
            if homed_here or fenced_before:
                chosen.append(account)
        return chosen

    def fence(self, account: Account) -> bool:
        """In the source: hand the account to the target under the next epoch. False if it moved meanwhile."""
        if account.moving_from == self.source_name:
            self.epochs[account.account_id] = account.write_epoch  # fenced by an earlier run
            return True
        epoch = account.write_epoch + 1
        done = self.source.event_store.rewrite_account(
            account.account_id,
            expect={"home_region": self.source_name, "write_epoch": account.write_epoch, "moving_from": None},
            changes={"home_region": self.target_name, "write_epoch": epoch, "moving_from": self.source_name},
        )
        if done:
            self.epochs[account.account_id] = epoch
        return done

    def replicated(self, account_id: str, now: float) -> bool:
        """Whether the target holds the fence and everything the source holds for the account."""
        epoch = self.epochs[account_id]
        there = self.target.event_store.get_account(account_id)
        if there is None or there.write_epoch != epoch or there.moving_from != self.source_name:
            # Opened already (a resumed move, or a forced one that finished it), or moved on since.
            return there is not None and (there.write_epoch > epoch or (there.home_region == self.target_name and there.moving_from is None))
        source_log = full_log(self.source, account_id)
        target_by_id = {e.event_id: e for e in full_log(self.target, account_id)}
        common = [target_by_id.get(e.event_id) for e in source_log]
        if None in common or digest_of(source_log) != digest_of(common):  # type: ignore[arg-type]
            return False
        live = [
            Caller(e.caller, e.idempotency_key).record_id()
            for e in source_log
            if e.caller is not None and e.region == self.source_name and ulid_time(e.event_id).timestamp() > now - self.record_ttl_seconds
        ]
        held_by_source = self.source.event_store.records_present(live)
        return held_by_source <= self.target.event_store.records_present(sorted(held_by_source))

    def open(self, account_id: str) -> bool:
        """In the target: recompute `available` from its log and take writes. False until its projector caught up."""
        epoch = self.epochs[account_id]
        there = self.target.event_store.get_account(account_id)
        if there is None or there.moving_from is None:
            return there is not None and there.home_region == self.target_name and there.write_epoch >= epoch
        return self._recompute(
            there,
            expect={"home_region": self.target_name, "write_epoch": epoch, "moving_from": self.source_name},
            changes={},
            epoch=epoch,
            forced=False,
        )

    # -- forced ---------------------------------------------------------------------------

    def take_over(self, account: Account) -> bool:
        """In the target alone: make it the account's home under the next epoch, from the log it holds."""
        if account.home_region == self.target_name and account.moving_from == self.source_name:
            self.epochs[account.account_id] = account.write_epoch
            return self.open(account.account_id)  # the fence got here before the source went away
        epoch = account.write_epoch + 1
        self.epochs[account.account_id] = epoch
        return self._recompute(
            account,
            expect={"home_region": self.source_name, "write_epoch": account.write_epoch, "moving_from": None},
            changes={"home_region": self.target_name, "write_epoch": epoch},
            epoch=epoch,
            forced=True,
        )

    def _recompute(self, account: Account, *, expect: dict, changes: dict, epoch: int, forced: bool) -> bool:
        moved = lambda event_id: HomeMoved(  # noqa: E731 - the event the recompute appends
            entity_id=account.account_id,
            event_id=event_id,
            transaction_id=event_id,
            transaction_type="move",
            currency=account.currency,
            recorded_at=format_rfc3339(ulid_time(event_id)),
            region=self.target_name,
            idempotency_key=f"move#{epoch}",
            caller=OPERATOR_CALLER,
            write_epoch=epoch,
            from_region=self.source_name,
            forced=forced,
        )
        return recompute_guard(self.target, account, expect=expect, changes=changes, event=moved)


def recompute_guard(root: Root, account: Account, *, expect: dict, changes: dict, event=None) -> bool:
    """In `root`'s region: set the account's `available` to the fold of its log there (with `changes`).

    Only on a log that region's projector has folded exactly (checked in the same
    transaction), so what it folds later it settles itself and nothing is counted twice.
    `event(event_id)` builds an event to append with it, newest in the account's history.
    False if the projector is behind or the item moved on from `expect`.
    """
    log = full_log(root, account.account_id)
    totals = Totals.of(log)
    view = root.balance_store.get(account.account_id, consistent=True)
    if view is None or view.event_count != totals.event_count:
        return False  # the projector has not folded the whole log yet
    newest = max(filter(None, [account.last_event_id, totals.newest_event_id]))
    events = []
    if event is not None:
        newest = new_ulid_after(newest)
        events.append(event(newest))
    return root.event_store.rewrite_account(
        account.account_id,
        expect=expect,
        changes={**changes, "available": totals.balance, "last_event_id": newest, "moving_from": None},
        events=events,
        also=[root.balance_store.folded_exactly(account.account_id, totals.event_count)],
    )
