"""After a split has healed and replication drained: name what two writers did, and repair what can be.

Read from one replica (after a clean `regions compare` they all hold the same log
and items), per account:

- `overwritten_guard`: the account item no longer equals its log (last-writer-wins
  kept another region's version, or an older epoch's): its `available` differs from
  the fold, or its home and epoch are not those of the newest epoch the log records.
  Repair: recompute it from the log in that home (`failover.move.recompute_guard`).
- `stale_epoch`: an event recorded under a write epoch that had already ended (after
  the `account.home_moved` of a newer epoch), or in a region that was not that
  epoch's home. Events are never changed: repair records that it was reviewed.
- `duplicate_key`: one Idempotency-Key of one caller recorded as two transactions
  (one per region). Repair: a reversal of the later one, marked as such, in the home
  of the account it debits; the original events are never touched.
- `overdraft`: a no-overdraft account whose log is below zero (both sides spent).
  Repair records that it was reviewed: taking the money back is a business decision.

A finding is repaired once its repair is visible (a reversal, a guard equal to the
log, a review record), so a second run after replication finds nothing.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ledger import errors
from ledger.accounts import Account
from ledger.commands import ReversalRequest
from ledger.events import AccountOpened, Event, HomeMoved
from ledger.fold import Totals
from ledger.service import Caller

from .move import full_log, recompute_guard

if TYPE_CHECKING:
    from composition.root import Root

Kind = Literal["overwritten_guard", "stale_epoch", "duplicate_key", "overdraft"]
RECONCILER = "reconcile"


@dataclass(frozen=True)
class Finding:
    kind: Kind
    account_id: str
    key: str  # stable: what a review record or a reversal is keyed by
    detail: str
    home: str  # the region a repair runs in
    reviewed: bool = False


@dataclass
class _Account:
    item: Account
    log: list[Event]

    @property
    def home(self) -> str:
        """Where its newest epoch is homed, as the log says (the item may say otherwise: that is a finding)."""
        homes = self.homes()
        return homes[max(homes)] if homes else self.item.home_region

    @property
    def opened(self) -> AccountOpened | None:
        return next((e for e in self.log if isinstance(e, AccountOpened)), None)

    def homes(self) -> dict[int, str]:
        """Each write epoch's home, as the log records it: the opening's region, then each move's."""
        homes = {1: self.opened.region} if self.opened else {}
        for event in self.log:
            if isinstance(event, HomeMoved) and event.write_epoch is not None:
                homes[event.write_epoch] = event.region
        return homes


REPAIR_ORDER: tuple[Kind, ...] = ("overwritten_guard", "duplicate_key", "stale_epoch", "overdraft")


def find(root: Root) -> list[Finding]:
    """Every finding, from `root`'s replica, in the order to repair them (guards first: a reversal needs a right home)."""
    accounts = {a.account_id: _Account(a, full_log(root, a.account_id)) for a in root.event_store.accounts()}
    findings: list[Finding] = []
    for account in accounts.values():
        findings += _guard(account) + _stale(account) + _overdraft(account)
    findings += _duplicates(root, accounts)
    reviewed = root.event_store.records_present([f"reconciled#{f.key}" for f in findings])
    findings.sort(key=lambda f: (REPAIR_ORDER.index(f.kind), f.account_id, f.key))
    return [f if f"reconciled#{f.key}" not in reviewed else _with_review(f) for f in findings]


def _with_review(finding: Finding) -> Finding:
    return Finding(finding.kind, finding.account_id, finding.key, finding.detail, finding.home, reviewed=True)


def _guard(account: _Account) -> list[Finding]:
    homes, item = account.homes(), account.item
    epoch = max(homes, default=item.write_epoch)
    home = homes.get(epoch, item.home_region)
    balance = Totals.of(account.log).balance
    wrong = []
    if item.available != balance:
        wrong.append(f"available {item.available}, its log folds to {balance}")
    if (item.home_region, item.write_epoch) != (home, epoch):
        wrong.append(f"homed in {item.home_region} under epoch {item.write_epoch}; the log's newest epoch is {epoch}, in {home}")
    # The move's recompute appends the new epoch's `account.home_moved` with the item it writes: an item
    # still marked as moving next to that event is an older version that won last-writer-wins.
    finished = item.moving_from is not None and any(
        isinstance(e, HomeMoved) and e.write_epoch == item.write_epoch and e.region == item.home_region for e in account.log
    )
    if finished:
        wrong.append(f"still marked as moving from {item.moving_from}, though epoch {item.write_epoch}'s move is in its log")
    if not wrong or (item.moving_from is not None and not finished):
        return []  # right, or a move under way (it recomputes the guard itself)
    return [Finding("overwritten_guard", item.account_id, f"guard#{item.account_id}", "; ".join(wrong), account.home)]


def _stale(account: _Account) -> list[Finding]:
    homes = account.homes()
    moves = [e for e in account.log if isinstance(e, HomeMoved)]
    found = []
    for event in account.log:
        if event.write_epoch is None or event.available_pending or event.transaction_type in ("open", "move"):
            continue
        ended = next((m for m in moves if (m.write_epoch or 0) > event.write_epoch and m.event_id < event.event_id), None)
        elsewhere = homes.get(event.write_epoch) not in (None, event.region)
        if ended or elsewhere:
            why = (
                f"after epoch {ended.write_epoch} began in {ended.region} ({ended.event_id})"
                if ended
                else f"in {event.region}, not epoch {event.write_epoch}'s home {homes[event.write_epoch]}"
            )
            found.append(
                Finding("stale_epoch", event.entity_id, f"stale_epoch#{event.event_id}",
                        f"{event.type} {event.event_id} of {event.signed_amount} recorded under epoch {event.write_epoch} {why}",
                        account.home)
            )  # fmt: skip
    return found


def _overdraft(account: _Account) -> list[Finding]:
    """One finding per dip below zero of a no-overdraft account's history, keyed by the event that began it."""
    opened = account.opened
    if opened is None or opened.allow_overdraft:
        return []
    found, running, dip = [], 0, None
    for event in account.log:
        running += event.signed_amount
        if running < 0 and dip is None:
            dip = event
            found.append(
                Finding("overdraft", event.entity_id, f"overdraft#{event.entity_id}#{event.event_id}",
                        f"no overdraft allowed, and its history goes to {running} at {event.event_id}", account.home)
            )  # fmt: skip
        elif running >= 0:
            dip = None
    return found


def _duplicates(root: Root, accounts: dict[str, _Account]) -> list[Finding]:
    # One write per (caller, key), or per operation of a batch under the key: a second transaction is a duplicate.
    transactions: dict[tuple[str, str, int | None], dict[str, list[Event]]] = defaultdict(lambda: defaultdict(list))
    for account in accounts.values():
        for event in account.log:
            if event.caller is not None and event.transaction_type not in ("open", "move"):
                transactions[(event.caller, event.idempotency_key, event.batch_operation)][event.transaction_id].append(event)
    found = []
    for (caller, key, _), recorded in transactions.items():
        if len(recorded) < 2:
            continue
        first, *later = sorted(recorded, key=lambda tx: min(e.event_id for e in recorded[tx]))
        for transaction_id in later:
            if root.event_store.reversal_of(transaction_id) is not None:
                continue  # reversed (by a repair, or by anyone): repaired
            legs = recorded[transaction_id]
            debited = next((leg for leg in legs if leg.signed_amount > 0), legs[0])  # its reversal debits this one
            home = accounts[debited.entity_id].home if debited.entity_id in accounts else debited.region
            found.append(
                Finding("duplicate_key", debited.entity_id, f"duplicate_key#{transaction_id}",
                        f"caller {caller!r} key {key!r} recorded as {first} and again as {transaction_id} "
                        f"(in {legs[0].region})", home)
            )  # fmt: skip
    return found


def repair(finding: Finding, roots: dict[str, Root], now: str, wait=lambda: time.sleep(0.1)) -> str:
    """Repair one finding; what was done."""
    root = roots[finding.home]
    if finding.kind == "overwritten_guard":
        return _repair_guard(finding, roots, wait)
    if finding.kind == "duplicate_key":
        transaction_id = finding.key.split("#", 1)[1]
        request = ReversalRequest(
            description=f"reconciliation: {finding.detail}"[:200],
            metadata={"reconciliation": "duplicate_idempotency_key"},
        )
        for _ in range(len(roots)):
            try:
                root.ledger.reverse(Caller(RECONCILER, f"reconcile#{transaction_id}"), transaction_id, request)
                return f"reversed {transaction_id} in {root.settings.region}"
            except errors.WrongRegion as elsewhere:
                root = roots[elsewhere.extra["home_region"]]
            except errors.AlreadyReversed:
                return f"{transaction_id} was reversed already"
        raise errors.WrongRegion(f"no region took the reversal of {transaction_id}")
    root.event_store.record_review(f"reconciled#{finding.key}", finding.kind, finding.detail, now)
    return f"recorded as reviewed in {root.settings.region}"


def _repair_guard(finding: Finding, roots: dict[str, Root], wait=lambda: time.sleep(0.1)) -> str:
    root = roots[finding.home]
    for _ in range(100):
        account = root.event_store.get_account(finding.account_id)
        if account is None:
            break
        homes = _Account(account, full_log(root, account.account_id)).homes()
        epoch = max(homes, default=account.write_epoch)
        expect = {
            "home_region": account.home_region,
            "write_epoch": account.write_epoch,
            "available": account.available,
            "last_event_id": account.last_event_id,
        }
        changes = {"home_region": homes.get(epoch, account.home_region), "write_epoch": max(epoch, account.write_epoch)}
        if recompute_guard(root, account, expect=expect, changes=changes):
            return f"recomputed from the log in {finding.home}"
        wait()  # its projector is behind, or the item moved on: read again
    raise errors.StoreUnavailable(f"could not recompute {finding.account_id}'s guard: its projector kept moving")
