"""The view store: the only module of `projections` that talks to DynamoDB.

One account's events of a batch are applied with ONE conditional write of ONE item,
its balance item, which carries its own dedupe record (no marker items, no
transaction, so one write unit for the whole group while the item stays under 1 KB):

- `as_of_event_id` (W): the newest event applied; everything applied is at or below it.
- `floor` (F) and `recent` (R): every applied event with an id above the floor is
  in `recent`, a set of at most `window` ids (the newest applied ones). When a write
  would hold more, the oldest leave the set and the floor rises to the newest of them.
- `event_count` (N): how many events are applied.

So an event above the floor is applied exactly when its id is in `recent`: a
redelivery or replay of a recent event, and an event that arrives late by up to
`window` events (another region's, a credit leg recorded in another home), are
decided on the item alone. An event at or below the floor is decided by the log:
the account's events at or below the floor (a consistent query) are all applied
when there are as many of them as the view counts below its floor (N - |R|), since
everything applied is in the log; then the event is a duplicate. Otherwise the view
misses some of them, and the write sets the view, absolutely, to the fold of all of
them, the events of `recent` and the new ones, read from the log (a recount). What
the log showed applied is remembered, so a replay reads each account's log once.

Every write is conditioned on the version it was planned from, so nothing that
happened in between (another projector, `rebuild`, a redelivery in flight) is lost:
a refused write comes back with the item as it is now and is planned again. The
process keeps the items as it last wrote or read them, so a batch reads only the
items it does not know yet (one BatchGetItem).

Several accounts' writes travel together or apart (`Writes`): one conditional PutItem
each (one write unit on AWS; the batch's accounts spread over the projector's
concurrent workers), or one transaction of up to 100 (DynamoDB Local commits each
request to disk once: `ledger serve` uses this; on AWS it would cost two write units
per item).

Events recorded in another region (and credit legs recorded outside the account's
home) are added to the account's `available` by its home region, in the same
transaction as the balance write, so exactly once. `elsewhere` sums what the view
has handled of those, so that a recount settles exactly the newly counted part.

A home that holds a write lease (`serve --regions`) settles only while it holds it.
Fenced, it may have been failed over from by force: a settle then would write the
account item after the new home took it over, and that newest version would hand the
account back to the fenced region everywhere by last-writer-wins. So a fenced home
keeps the amount in the balance item (`unsettled`) and settles it with the account's
next write once its lease is back, or `settle_deferred` does; if the account moved
meanwhile, the new home counted it and the amount is dropped.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from ledger.events import Event
from ledger.fold import Totals
from ledger.ids import format_rfc3339
from ledger.store import batch_get_all, deserialize, event_from_item

from .balances import BalanceChange
from .schema import WATERMARK_KEY, ProjectionTables, balance_key

_CONTENTION_CODES = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
# Below every ULID: the floor of a view that has let no event go from `recent` yet.
NO_FLOOR = "0"
# One write unit covers an item of up to 1 KB (the larger of before and after).
ITEM_LIMIT_BYTES = 1024
MAX_WINDOW = 24
_ULID_CHARS = 26
_NUMBER_BYTES = 21  # 38 significant digits at most: 1 byte per two, plus one
_RFC3339_CHARS = 24
# Every attribute of a balance item but `recent`, its values at their largest (account ids up to 64).
_FIXED_ATTRIBUTES = {
    "pk": None,
    "account_id": None,
    "currency": 3,
    "updated_at": _RFC3339_CHARS,
    "as_of_event_id": _ULID_CHARS,
    "as_of_recorded_at": _RFC3339_CHARS,
    "floor": _ULID_CHARS,
}
_NUMBER_ATTRIBUTES = ("balance", "credits", "debits", "event_count", "version", "elsewhere")
_NAMES = {f"#{name}": name for name in (*_NUMBER_ATTRIBUTES, "currency", "floor", "recent")}
_PLAN_ATTEMPTS = 20
# TransactWriteItems takes at most 100 items.
ITEMS_PER_TRANSACTION = 100
# Writing one PutItem per account, a worker takes at most this many accounts of a batch at a time.
ACCOUNTS_PER_WORKER = 25
# How the conditional writes of several accounts travel (see `BalanceStore`).
Writes = Literal["transactions", "items"]
_CACHED_ACCOUNTS = 10_000
_KNOWN_IDS = 200_000


def window_for(account_id: str) -> int:
    """How many ids `recent` may hold for this account with the item at most 1 KB, whatever its figures."""
    fixed = 0
    for name, chars in _FIXED_ATTRIBUTES.items():
        value = len(balance_key(account_id).encode()) if name == "pk" else len(account_id.encode()) if chars is None else chars
        fixed += len(name) + value
    fixed += sum(len(name) + _NUMBER_BYTES for name in _NUMBER_ATTRIBUTES)
    fixed += len("recent") + 3  # the set's name and overhead
    return max(0, min(MAX_WINDOW, (ITEM_LIMIT_BYTES - fixed) // (_ULID_CHARS + 1)))


class AccountNotHereYet(Exception):
    """A credit to settle for an account whose item has not reached this region yet; retried later."""


class Contention(Exception):
    """Throttling or a concurrent write kept refusing; nothing was written, a retry may succeed."""


class ViewChanged(Exception):
    """The balance item changed since it was read (the projector moved on); nothing was written."""


class NotInLog(Exception):
    """A delivered event at or below the view's floor is not in the account's log (the log was altered)."""


class _Refused(Exception):
    """Conditions failed on these items of a write (index -> the item as it was, when returned)."""

    def __init__(self, items: dict[int, dict[str, Any] | None]) -> None:
        super().__init__(f"conditions failed on items {sorted(items)}")
        self.items = items

    @property
    def at(self) -> set[int]:
        return set(self.items)


@dataclass(frozen=True)
class Balance:
    """One account's view, as read."""

    account_id: str
    currency: str
    balance: int
    credits: int
    debits: int
    event_count: int
    as_of_event_id: str | None
    as_of_recorded_at: str | None
    updated_at: str | None
    version: int

    def matches(self, change: BalanceChange | None) -> bool:
        """True when the view holds exactly the figures of `change` (None: no events)."""
        if change is None:
            return (self.balance, self.credits, self.debits, self.event_count) == (0, 0, 0, 0)
        return (self.balance, self.credits, self.debits, self.event_count) == (
            change.balance,
            change.credits,
            change.debits,
            change.event_count,
        )


def _balance_from_item(item: dict[str, Any]) -> Balance:
    data = deserialize(item)
    return Balance(
        account_id=data["account_id"],
        currency=data["currency"],
        balance=int(data.get("balance", 0)),
        credits=int(data.get("credits", 0)),
        debits=int(data.get("debits", 0)),
        event_count=int(data.get("event_count", 0)),
        as_of_event_id=data.get("as_of_event_id"),
        as_of_recorded_at=data.get("as_of_recorded_at"),
        updated_at=data.get("updated_at"),
        version=int(data.get("version", 0)),
    )


@dataclass(frozen=True)
class _View:
    """A balance item as far as deciding goes: what it has applied, and its figures."""

    version: int
    newest: str | None
    newest_at: str | None
    floor: str
    recent: frozenset[str]
    totals: Totals
    elsewhere: int
    unsettled: int  # settled into `available` once the home holds its lease again

    @classmethod
    def of(cls, item: dict[str, Any]) -> _View:
        def number(name: str) -> int:
            return int(item[name]["N"]) if name in item else 0

        newest = item["as_of_event_id"]["S"] if "as_of_event_id" in item else None
        # An item written before the window kept no `floor`: all it applied is at or below its newest.
        floor = item["floor"]["S"] if "floor" in item else (newest or NO_FLOOR)
        totals = Totals(
            currency=item["currency"]["S"] if "currency" in item else None,
            balance=number("balance"),
            credits=number("credits"),
            debits=number("debits"),
            event_count=number("event_count"),
            newest_event_id=newest,
            newest_recorded_at=item["as_of_recorded_at"]["S"] if "as_of_recorded_at" in item else None,
        )
        return cls(
            version=number("version"),
            newest=newest,
            newest_at=totals.newest_recorded_at,
            floor=floor,
            recent=frozenset(item.get("recent", {}).get("SS", [])),
            totals=totals,
            elsewhere=number("elsewhere"),
            unsettled=number("unsettled"),
        )


@dataclass
class Outcome:
    """What one `apply` did with each event of the group."""

    applied: list[Event] = field(default_factory=list)
    duplicates: list[Event] = field(default_factory=list)
    failed: dict[str, Exception] = field(default_factory=dict)  # event id -> why it is to be retried
    writes: int = 0  # write requests sent, refused ones included
    log_reads: int = 0  # reads of the account's log (events at or below the floor)


@dataclass
class _Plan:
    new: list[Event]  # above the floor, never applied: added to the view
    applied: list[Event]  # what this write counts (the new ones, and any recounted from the log)
    duplicates: list[Event]
    item: dict[str, Any] | None  # the balance item to put; None: nothing to write
    settle: int  # what the home adds to the account's `available`
    counted_below: set[str] = field(default_factory=set)  # log ids at or below the floor, applied once the put is


class _Stale(Exception):
    """The balance item was not what the write was planned from; the item as it is now is remembered."""


class BalanceStore:
    """Apply events to balances exactly once; read balances back."""

    def __init__(
        self,
        client: Any,
        tables: ProjectionTables,
        clock: Callable[[], float] = time.time,
        *,
        accounts_table: str | None = None,
        region: str | None = None,
        window: int | None = None,
        writes: Writes = "items",
        may_settle: Callable[[], bool] | None = None,
    ) -> None:
        self._client = client
        self._tables = tables
        self._clock = clock
        self._accounts_table = accounts_table  # where a home region settles credits recorded elsewhere
        self._region = region
        self._window = window  # at most this many ids in `recent` (None: as many as fit in 1 KB)
        # How several accounts' writes travel. "items": one conditional PutItem each (one write
        # unit each on AWS); "transactions": one TransactWriteItems of up to 100 (DynamoDB Local
        # commits each request to disk once, where 100 separate writes wait for 100 commits; on
        # AWS it would cost two write units per item).
        self._writes = writes
        # Whether this home may write `available` now (its write lease); None: no lease, always.
        self._may_settle = may_settle
        self._deferred: set[str] = set()  # accounts whose item holds an `unsettled` amount
        self._deferred_unknown = may_settle is not None  # a process before this one may have left some
        self._lock = threading.Lock()
        # The balance items as this process last wrote or read them, least recently used first.
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Per account, ids at or below its floor that its log showed applied (applied stays applied).
        self._known: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._known_ids = 0

    # -- writes -----------------------------------------------------------------

    def apply(self, events: Sequence[Event]) -> Outcome:
        """Apply the events of ONE account (distinct ids) exactly once; say which were new."""
        return self.apply_groups([events])[events[0].entity_id]

    def apply_groups(self, groups: Sequence[Sequence[Event]]) -> dict[str, Outcome]:
        """Apply groups of events, each of ONE account (distinct ids, one group per account), exactly once.

        One write per account: the items this process does not know are read in one
        request, then written one PutItem each, or `ITEMS_PER_TRANSACTION` to a transaction
        ("transactions"); an account whose write was refused (its item moved
        meanwhile) is planned again from the item as it is now. An event whose credit its
        home settles fails alone (`AccountNotHereYet`, retried later) while the account
        item has not reached this region; the others apply.
        """
        outcomes = {group[0].entity_id: Outcome() for group in groups}
        pending = {group[0].entity_id: list(group) for group in groups}
        for _ in range(_PLAN_ATTEMPTS):
            if not pending:
                return outcomes
            try:
                items = self._items_of(list(pending))
            except Exception as exc:  # noqa: BLE001 - every pending event is reported failed
                for account_id, events in pending.items():
                    outcomes[account_id].failed.update({e.event_id: exc for e in events})
                return outcomes
            plans: list[tuple[str, _Plan]] = []
            for account_id, events in list(pending.items()):
                try:
                    plan = self._plan(account_id, items.get(account_id), events, outcomes[account_id])
                except Exception as exc:  # noqa: BLE001 - reported per record
                    outcomes[account_id].failed.update({e.event_id: exc for e in events})
                    del pending[account_id]
                    continue
                if plan.item is None:
                    outcomes[account_id].duplicates.extend(plan.duplicates)
                    del pending[account_id]
                else:
                    plans.append((account_id, plan))
            results = self._put_all([(a, items.get(a), p) for a, p in plans], outcomes)
            for account_id, plan in plans:
                result = results[account_id]
                outcome = outcomes[account_id]
                if result is None:  # written
                    outcome.applied.extend(plan.applied)
                    outcome.duplicates.extend(plan.duplicates)
                    if plan.counted_below:
                        self._learn(account_id, plan.counted_below)  # applied now, by this write
                    del pending[account_id]
                elif isinstance(result, _Stale):
                    continue  # planned again from the item as it is now
                elif isinstance(result, AccountNotHereYet):
                    settling = [e for e in pending[account_id] if self._settles(e)]
                    outcome.failed.update({e.event_id: result for e in settling})
                    pending[account_id] = [e for e in pending[account_id] if not self._settles(e)]
                    if not pending[account_id] or len(settling) == 0:
                        outcome.failed.update({e.event_id: result for e in pending.pop(account_id)})
                else:
                    outcome.failed.update({e.event_id: result for e in pending.pop(account_id)})
        for account_id, events in pending.items():
            refused = Contention(f"the balance of {account_id!r} kept changing: {_PLAN_ATTEMPTS} writes refused")
            outcomes[account_id].failed.update({e.event_id: refused for e in events})
        return outcomes

    @property
    def request_size(self) -> int:
        """How many accounts' writes one worker takes at most: a transaction's, or a share of single puts."""
        return ITEMS_PER_TRANSACTION if self._writes == "transactions" else ACCOUNTS_PER_WORKER

    @property
    def spreads(self) -> bool:
        """Whether a batch's writes are better spread over concurrent requests (not when each request is a commit to disk)."""
        return self._writes != "transactions"

    def window(self, account_id: str) -> int:
        """How many ids the account's `recent` holds at most."""
        fits = window_for(account_id)
        return fits if self._window is None else min(self._window, fits)

    def _settles(self, event: Event) -> bool:
        """Whether this event's credit is one the account's home adds to `available` when it is projected."""
        return bool(self._region) and (bool(event.available_pending) or event.region != self._region)

    def _settle_amount(self, events: Sequence[Event]) -> int:
        return sum(e.signed_amount for e in events if self._settles(e))

    def _items_of(self, account_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """The balance items of these accounts: as this process knows them, the others read (consistently)."""
        with self._lock:
            known = {a: self._items[a] for a in account_ids if a in self._items}
        unknown = [a for a in account_ids if a not in known]
        found: dict[str, dict[str, Any] | None] = {a: None for a in unknown}
        for start in range(0, len(unknown), 100):
            keys = [{"pk": {"S": balance_key(a)}} for a in unknown[start : start + 100]]
            for _, item in batch_get_all(self._client, {self._tables.balances: {"Keys": keys, "ConsistentRead": True}}):
                found[item["account_id"]["S"]] = item
        for account_id, item in found.items():
            if item is not None:
                self._remember(account_id, item)
        return {**known, **found}

    def _plan(self, account_id: str, item: dict[str, Any] | None, events: list[Event], outcome: Outcome) -> _Plan:
        """Decide each event from the item (and, below the floor, from the log); compute the item to put."""
        view = _View.of(item) if item is not None else None
        recent = view.recent if view else frozenset()
        floor = view.floor if view else NO_FLOOR
        known = self._known_below(account_id)
        new: list[Event] = []
        duplicates: list[Event] = []
        below: list[Event] = []
        for event in events:
            if event.event_id in recent or event.event_id in known:
                duplicates.append(event)
            elif event.event_id > floor:
                new.append(event)  # above the floor and not in `recent`: never applied
            else:
                below.append(event)
        recounted: list[Event] | None = None
        if below:
            assert view is not None and view.newest is not None  # only a written item has a floor
            log = list(self._log(account_id, view.newest))
            outcome.log_reads += 1
            under = [e for e in log if e.event_id <= floor]
            ids_under = {e.event_id for e in under}
            missing = sorted(e.event_id for e in below if e.event_id not in ids_under)
            if missing:
                raise NotInLog(f"events {missing} of {account_id!r} are not in its log")
            if len(under) != view.totals.event_count - len(recent):
                # The view misses some of them: count everything at or below the floor from the log.
                by_id = {e.event_id: e for e in log}
                held = [by_id[i] for i in recent if i in by_id]
                if len(held) != len(recent):
                    raise NotInLog(f"events {sorted(recent - set(by_id))} that the view of {account_id!r} holds are not in its log")
                recounted = [*under, *held]
            else:
                self._learn(account_id, ids_under)  # all applied already
        if recounted is None:
            duplicates.extend(below)  # the log shows them applied
            if not new:
                return _Plan([], [], duplicates, None, 0)
        plan = self._next_item(account_id, view, new, duplicates, recounted)
        if recounted is not None:
            plan.applied.extend(below)  # counted by this write (some may have been before; the log cannot say which)
            plan.counted_below = {e.event_id for e in recounted if e.event_id <= (view.floor if view else NO_FLOOR)}
        return plan

    def _next_item(
        self, account_id: str, view: _View | None, new: list[Event], duplicates: list[Event], recounted: list[Event] | None
    ) -> _Plan:
        """The item after `new` is applied to `view` (to the `recounted` events instead of its figures, if given)."""
        if recounted is not None:
            totals = Totals.of([*recounted, *new])
            elsewhere = self._settle_amount([*recounted, *new])
        else:
            added = Totals.of(new)
            old = view.totals if view else Totals()
            totals = Totals(
                currency=old.currency or added.currency,
                balance=old.balance + added.balance,
                credits=old.credits + added.credits,
                debits=old.debits + added.debits,
                event_count=old.event_count + added.event_count,
            )
            elsewhere = (view.elsewhere if view else 0) + self._settle_amount(new)
        newest, newest_at = (view.newest, view.newest_at) if view else (None, None)
        for event in new:
            if newest is None or event.event_id > newest:
                newest, newest_at = event.event_id, event.recorded_at
        floor = view.floor if view else NO_FLOOR
        recent = sorted({*(view.recent if view else ()), *(e.event_id for e in new)})
        window = self.window(account_id)
        if len(recent) > window:  # the oldest leave `recent`; the floor rises to the newest of them
            floor = max(floor, recent[-window - 1])
            recent = recent[-window:] if window else []
        item: dict[str, Any] = {
            "pk": {"S": balance_key(account_id)},
            "account_id": {"S": account_id},
            "currency": {"S": totals.currency or ""},
            "balance": {"N": str(totals.balance)},
            "credits": {"N": str(totals.credits)},
            "debits": {"N": str(totals.debits)},
            "event_count": {"N": str(totals.event_count)},
            "version": {"N": str((view.version if view else 0) + 1)},
            "updated_at": {"S": format_rfc3339_epoch(self._clock())},
            "floor": {"S": floor},
        }
        if newest is not None:
            item["as_of_event_id"] = {"S": newest}
            item["as_of_recorded_at"] = {"S": newest_at or ""}
        if recent:
            item["recent"] = {"SS": recent}
        if elsewhere:
            item["elsewhere"] = {"N": str(elsewhere)}
        settle = elsewhere - (view.elsewhere if view else 0) + (view.unsettled if view else 0)
        return _Plan(new, list(new), duplicates, item, settle)

    def _put_all(self, writes: list[tuple[str, dict[str, Any] | None, _Plan]], outcomes: dict[str, Outcome]) -> dict[str, Exception | None]:
        """Write each planned item if its balance item is still the one planned from; per account: None (written),
        `_Stale` (refused: plan again), `AccountNotHereYet`, or the error."""
        results: dict[str, Exception | None] = {}
        single: list[tuple[str, dict[str, Any] | None, _Plan]] = []
        batched: list[tuple[str, dict[str, Any] | None, _Plan]] = []
        for write in writes:
            self._defer_if_fenced(write[0], write[2])
            settles = write[2].settle and self._region and self._accounts_table
            (single if settles or self._writes == "items" else batched).append(write)
        if len(batched) == 1:
            single.extend(batched)
            batched = []
        for start in range(0, len(batched), ITEMS_PER_TRANSACTION):
            chunk = batched[start : start + ITEMS_PER_TRANSACTION]
            try:
                results.update(self._transact_chunk(chunk, outcomes))
            except (ClientError, BotoCoreError) as exc:  # the request as a whole: written or not, read them again
                for account_id, _, _ in chunk:
                    self._forget(account_id)
                    results[account_id] = exc
        for account_id, before, plan in single:
            try:
                outcomes[account_id].writes += 1
                self._put(account_id, before, plan.item, plan.settle)  # type: ignore[arg-type]
                results[account_id] = None
            except Exception as exc:  # noqa: BLE001 - sorted by the caller
                results[account_id] = exc
        return results

    def _defer_if_fenced(self, account_id: str, plan: _Plan) -> None:
        """Without the lease, keep what the plan would settle in the balance item instead (see the module's doc)."""
        if not plan.settle or self._may_settle is None or not self._region or not self._accounts_table or self._may_settle():
            return
        assert plan.item is not None
        plan.item["unsettled"] = {"N": str(plan.settle)}
        plan.settle = 0
        with self._lock:
            self._deferred.add(account_id)

    def settle_deferred(self) -> int:
        """Settle what was kept while fenced, now that the lease is held: each amount once, at home; dropped
        for an account homed elsewhere now. Returns how many accounts were settled or dropped."""
        if self._may_settle is None or not self._may_settle():
            return 0
        if self._deferred_unknown:
            found = self._client.get_paginator("scan").paginate(
                TableName=self._tables.balances, ConsistentRead=True, ProjectionExpression="account_id",
                FilterExpression="attribute_exists(unsettled)",
            )  # fmt: skip
            with self._lock:
                self._deferred.update(item["account_id"]["S"] for page in found for item in page.get("Items", []))
                self._deferred_unknown = False
        with self._lock:
            accounts = sorted(self._deferred)
        done = 0
        for account_id, before in self._items_of(accounts).items() if accounts else ():
            view = _View.of(before) if before is not None else None
            if view is None or not view.unsettled:
                self._discard_deferred(account_id)
                continue
            item = {k: v for k, v in before.items() if k != "unsettled"}  # type: ignore[union-attr]
            item["version"] = {"N": str(view.version + 1)}
            item["updated_at"] = {"S": format_rfc3339_epoch(self._clock())}
            try:
                self._put(account_id, before, item, view.unsettled)
            except (_Stale, Contention, AccountNotHereYet):
                continue  # the item moved on, or the account is not here yet: the next call tries again
            self._discard_deferred(account_id)
            done += 1
        return done

    def _discard_deferred(self, account_id: str) -> None:
        with self._lock:
            self._deferred.discard(account_id)

    def _transact_chunk(self, chunk: list[tuple[str, dict[str, Any] | None, _Plan]], outcomes: dict[str, Outcome]) -> dict[str, Exception | None]:
        """The same conditional puts in one TransactWriteItems: all written, or none (those refused are planned
        again, the others sent again as they were)."""
        for account_id, _, _ in chunk:
            outcomes[account_id].writes += 1
        try:
            self._transact([{"Put": self._conditional_put(before, plan.item)} for _, before, plan in chunk])  # type: ignore[arg-type]
        except _Refused as refused:
            results: dict[str, Exception | None] = {}
            for index, (account_id, _, _) in enumerate(chunk):
                if index in refused.at:
                    self._remember(account_id, refused.items.get(index))  # the item as it is now, to plan from
                results[account_id] = _Stale()  # nothing was written: the others go again as planned
            return results
        except Contention as exc:
            return {account_id: exc for account_id, _, _ in chunk}
        for account_id, _, plan in chunk:
            self._remember(account_id, plan.item)
        return {account_id: None for account_id, _, _ in chunk}

    def _conditional_put(self, before: dict[str, Any] | None, item: dict[str, Any]) -> dict[str, Any]:
        """A put of `item` on the condition that the balance item is still `before` (the same version, or still absent)."""
        put: dict[str, Any] = {"TableName": self._tables.balances, "Item": item, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if before is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        elif "version" in before:
            put["ConditionExpression"] = "#version = :version"
            put["ExpressionAttributeNames"] = {"#version": "version"}
            put["ExpressionAttributeValues"] = {":version": before["version"]}
        else:
            put["ConditionExpression"] = "attribute_exists(pk) AND attribute_not_exists(#version)"
            put["ExpressionAttributeNames"] = {"#version": "version"}
        return put

    def _put(self, account_id: str, before: dict[str, Any] | None, item: dict[str, Any], settle: int) -> None:
        """Put `item` if the balance item is still `before` (the same version, or still absent); with the settle
        at home in the same transaction. Raises `_Stale` (the item as it is now remembered) if it is not."""
        put = self._conditional_put(before, item)
        if settle and self._region and self._accounts_table:
            try:
                self._transact([{"Put": put}, self._settle_at_home(account_id, settle)])
                self._remember(account_id, item)
                return
            except _Refused as refused:
                if 0 in refused.at:
                    self._remember(account_id, refused.items.get(0))
                    raise _Stale() from refused
                # Not this region's account to write: its home settles the credit. Commit without it.
                self._check_homed_elsewhere(account_id, refused.items.get(1))
        try:
            self._client.put_item(**put)
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            self._remember(account_id, exc.response.get("Item"))
            raise _Stale() from exc
        self._remember(account_id, item)

    def _settle_at_home(self, account_id: str, amount: int) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._accounts_table,
                "Key": {"account_id": {"S": account_id}},
                "UpdateExpression": "ADD available :amount",
                "ConditionExpression": "attribute_exists(account_id) AND home_region = :here",
                "ExpressionAttributeValues": {":amount": {"N": str(amount)}, ":here": {"S": self._region}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _check_homed_elsewhere(self, account_id: str, item: dict[str, Any] | None) -> None:
        """Raise `AccountNotHereYet` unless the account item is here, homed elsewhere: never drop a credit."""
        if item is None:  # not handed back with the refusal: read it
            item = self._client.get_item(
                TableName=self._accounts_table, Key={"account_id": {"S": account_id}}, ConsistentRead=True
            ).get("Item")
        if item is None or item.get("home_region", {}).get("S") == self._region:
            raise AccountNotHereYet(f"account {account_id!r} is not in {self._region} yet; its credit is retried")

    def _transact(self, items: list[dict[str, Any]]) -> None:
        """One TransactWriteItems; failed conditions are raised as `_Refused` naming the items, contention as `Contention`."""
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            code = _code(exc)
            reasons = exc.response.get("CancellationReasons") or []
            failed = {i: r.get("Item") for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"}
            if code == "TransactionCanceledException" and failed:
                raise _Refused(failed) from exc
            if code in ("TransactionCanceledException", "TransactionInProgressException", "ThrottlingException") and (
                not reasons or any(r.get("Code") in _CONTENTION_CODES for r in reasons)
            ):
                raise Contention() from exc
            raise

    def replace(self, account_id: str, events: Sequence[Event], currency: str, read_version: int | None) -> None:
        """Set the view to the fold of `events` (the account's log) if it is still at `read_version`.

        Used by rebuild. The floor rises to the newest event folded, so a stream record of
        any of them that comes later is checked against the log, found counted and skipped.
        """
        totals = Totals.of(events)
        item: dict[str, Any] = {
            "pk": {"S": balance_key(account_id)},
            "account_id": {"S": account_id},
            "currency": {"S": totals.currency or currency},
            "balance": {"N": str(totals.balance)},
            "credits": {"N": str(totals.credits)},
            "debits": {"N": str(totals.debits)},
            "event_count": {"N": str(totals.event_count)},
            "version": {"N": str((read_version or 0) + 1)},
            "updated_at": {"S": format_rfc3339_epoch(self._clock())},
            "floor": {"S": totals.newest_event_id or NO_FLOOR},
        }
        if totals.newest_event_id:
            item["as_of_event_id"] = {"S": totals.newest_event_id}
            item["as_of_recorded_at"] = {"S": totals.newest_recorded_at or ""}
        elsewhere = self._settle_amount(events)
        if elsewhere:
            item["elsewhere"] = {"N": str(elsewhere)}
        if read_version is not None:  # what a fenced home kept to settle is not the view's to drop
            kept = self._client.get_item(
                TableName=self._tables.balances, Key={"pk": {"S": balance_key(account_id)}}, ConsistentRead=True
            ).get("Item", {}).get("unsettled")
            if kept:
                item["unsettled"] = kept
        put: dict[str, Any] = {"TableName": self._tables.balances, "Item": item}
        if read_version is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "#version = :read_version"
            put["ExpressionAttributeNames"] = {"#version": "version"}
            put["ExpressionAttributeValues"] = {":read_version": {"N": str(read_version)}}
        try:
            self._client.put_item(**put)
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise ViewChanged() from exc
            raise
        finally:
            self._forget(account_id)

    def folded_exactly(self, account_id: str, event_count: int) -> dict[str, Any]:
        """For another store's transaction: on the condition that this region's view folded exactly `event_count`
        events, drop what it kept unsettled while fenced (a new version, so a put planned before is refused).

        A move of a home recomputes `available` from the log; committing that on this check
        ties it to the projector, which settles what it folds after the move and never what
        it folded before, nor what it kept: the recompute counted that.
        """
        self._forget(account_id)
        return {
            "Update": {
                "TableName": self._tables.balances,
                "Key": {"pk": {"S": balance_key(account_id)}},
                "ConditionExpression": "event_count = :n",
                "UpdateExpression": "SET version = if_not_exists(version, :zero) + :one REMOVE unsettled",
                "ExpressionAttributeValues": {":n": {"N": str(event_count)}, ":zero": {"N": "0"}, ":one": {"N": "1"}},
            }
        }

    # -- what this process remembers ----------------------------------------------

    def _remember(self, account_id: str, item: dict[str, Any] | None) -> None:
        with self._lock:
            if item is None:
                self._items.pop(account_id, None)
                return
            self._items[account_id] = item
            self._items.move_to_end(account_id)
            while len(self._items) > _CACHED_ACCOUNTS:
                self._items.popitem(last=False)

    def _forget(self, account_id: str) -> None:
        self._remember(account_id, None)

    def _known_below(self, account_id: str) -> frozenset[str]:
        with self._lock:
            return self._known.get(account_id, frozenset())

    def _learn(self, account_id: str, ids: set[str]) -> None:
        """Remember ids the log showed applied, for the next redelivery of any of them (a replay)."""
        with self._lock:
            old = self._known.pop(account_id, frozenset())
            self._known_ids -= len(old)
            if len(ids) > _KNOWN_IDS:
                return
            self._known[account_id] = frozenset(ids)
            self._known_ids += len(ids)
            while self._known_ids > _KNOWN_IDS:
                _, dropped = self._known.popitem(last=False)
                self._known_ids -= len(dropped)

    # -- reads ------------------------------------------------------------------

    def _log(self, account_id: str, up_to: str) -> Iterator[Event]:
        """The account's events with ids up to `up_to`, in id order, read consistently."""
        request: dict[str, Any] = {
            "TableName": self._tables.events,
            "KeyConditionExpression": "entity_id = :account AND event_id <= :up_to",
            "ExpressionAttributeValues": {":account": {"S": account_id}, ":up_to": {"S": up_to}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**request)
            for item in page.get("Items", []):
                yield event_from_item(item)
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get(self, account_id: str, *, consistent: bool = False) -> Balance | None:
        response = self._client.get_item(
            TableName=self._tables.balances, Key={"pk": {"S": balance_key(account_id)}}, ConsistentRead=consistent
        )
        item = response.get("Item")
        return _balance_from_item(item) if item else None

    def holds(self, account_id: str, event_id: str, item: dict[str, Any] | None) -> bool:
        """Whether the view (its balance item as read, `item`) includes the event `event_id`."""
        if item is None:
            return False
        view = _View.of(item)
        if view.newest is None or event_id > view.newest:
            return False
        if event_id in view.recent or event_id in self._known_below(account_id):
            return True
        if event_id > view.floor:
            return False
        under = {e.event_id for e in self._log(account_id, view.floor)}
        return event_id in under and len(under) == view.totals.event_count - len(view.recent)

    def freshness_read(self, account_id: str, event_id: str | None = None) -> dict[str, Any]:
        """In one request (BatchGetItem): the view, the account item, this region's replication
        watermark and, given `event_id`, whether the view holds that event (from the view's own
        dedupe record; an event below its floor costs a read of the log).

        Returns {"balance": Balance | None, "account": item | None, "watermark": str | None,
        "holds": bool | None}.
        """
        keys = [{"pk": {"S": balance_key(account_id)}}, {"pk": {"S": WATERMARK_KEY}}]
        request: dict[str, Any] = {self._tables.balances: {"Keys": keys}}
        if self._accounts_table:
            request[self._accounts_table] = {"Keys": [{"account_id": {"S": account_id}}]}
        found: dict[str, list[dict[str, Any]]] = {}
        for table, item in batch_get_all(self._client, request):
            found.setdefault(table, []).append(item)
        views = {item["pk"]["S"]: item for item in found.get(self._tables.balances, [])}
        accounts = found.get(self._accounts_table or "", [])
        watermark = views.get(WATERMARK_KEY)
        item = views.get(balance_key(account_id))
        return {
            "balance": _balance_from_item(item) if item else None,
            "account": accounts[0] if accounts else None,
            "watermark": watermark["until"]["S"] if watermark else None,
            "holds": None if event_id is None else self.holds(account_id, event_id, item),
        }

    def set_watermark(self, until: str) -> None:
        """Record that this region holds every other region's writes up to `until` (the replicator does)."""
        self._client.put_item(TableName=self._tables.balances, Item={"pk": {"S": WATERMARK_KEY}, "until": {"S": until}})

    def all_balances(self) -> Iterator[Balance]:
        """Every balance item (a scan: for operators, not for request paths)."""
        request: dict[str, Any] = {
            "TableName": self._tables.balances,
            "FilterExpression": "begins_with(pk, :prefix)",
            "ExpressionAttributeValues": {":prefix": {"S": "balance#"}},
        }
        while True:
            page = self._client.scan(**request)
            for item in page.get("Items", []):
                yield _balance_from_item(item)
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def format_rfc3339_epoch(seconds: float) -> str:
    return format_rfc3339(datetime.fromtimestamp(seconds, tz=timezone.utc))
