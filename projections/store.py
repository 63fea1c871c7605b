"""The view store: the only module of `projections` that talks to DynamoDB.

`apply` commits one account's events in one transaction: each window's seen-set
must not hold any of the events (`NOT contains`), gets them added, and the balance
item gets one `ADD` of their summed change. If any event was applied before, the
whole transaction is cancelled and `AlreadyApplied` tells the projector to go one
event at a time. The dedupe record and the balance change therefore always commit
together, whatever crashes in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from ledger.events import Event
from ledger.ids import format_rfc3339
from ledger.store import deserialize

from .balances import BalanceChange
from .schema import MARKER_TTL_SECONDS, TTL_ATTRIBUTE, WATERMARK_KEY, ProjectionTables, balance_key, seen_key

_CONTENTION_CODES = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
# Balance item attributes, named through placeholders so no reserved word can bite.
_NAMES = {f"#{name}": name for name in ("balance", "credits", "debits", "event_count", "version", "currency")}


class AlreadyApplied(Exception):
    """At least one of the events is in a seen-set already; nothing was written."""


class _Refused(Exception):
    """Conditions failed on these items of a transaction (index -> the item as it was, when returned)."""

    def __init__(self, items: dict[int, dict[str, Any] | None]) -> None:
        super().__init__(f"conditions failed on items {sorted(items)}")
        self.items = items

    @property
    def at(self) -> set[int]:
        return set(self.items)


class AccountNotHereYet(Exception):
    """A credit to settle for an account whose item has not reached this region yet; retried later."""


class Contention(Exception):
    """Throttling or a concurrent transaction; nothing was written, a retry may succeed."""


class ViewChanged(Exception):
    """The balance item changed since it was read (the projector moved on); nothing was written."""


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
    ) -> None:
        self._client = client
        self._tables = tables
        self._clock = clock
        self._accounts_table = accounts_table  # where a home region settles credits recorded elsewhere
        self._region = region

    # -- writes -----------------------------------------------------------------

    def apply(self, events: Sequence[Event]) -> None:
        """Apply events of ONE account, distinct by id, atomically; raise AlreadyApplied if any was.

        `as_of` only moves forward: the balance update is guarded on the view's newest
        event being older than ours. Events arrive out of ULID order only across shards
        or regions, so the rare refusal is answered by committing the same change once
        more without touching `as_of`.

        Events recorded in another region are added to the account's `available` here, in
        the same transaction as their marks, if this region is the account's home: exactly
        once, by the one region that writes that account item. They are the credit legs of
        transfers between homes (`available_pending`) and, after a fail-over, the old home's
        writes that reach the new home late. (A move sets `available` from the log, checking
        that this projector folded exactly that log: what was added before is overwritten,
        what comes after is added here.) Elsewhere the condition fails and the change is
        committed without it.
        """
        change = BalanceChange.of(events)
        seen = self._seen_updates(events, guarded=True)
        pending = sum(e.signed_amount for e in events if e.available_pending or (self._region and e.region != self._region))
        settle = [self._settle_at_home(change.account_id, pending)] if pending and self._region else []
        advance_as_of = True
        while True:
            items = [*seen, *settle, self._add_change(change, advance_as_of=advance_as_of)]
            try:
                self._transact(items)
                return
            except _Refused as refused:
                if any(index < len(seen) for index in refused.at):
                    raise AlreadyApplied() from refused  # an event is in a seen-set: go one at a time
                if settle and len(seen) in refused.at:
                    self._check_homed_elsewhere(change.account_id, refused.items.get(len(seen)))
                    settle = []  # not this region's account to write: its home settles the credit
                if len(items) - 1 in refused.at:
                    if not advance_as_of:
                        raise
                    advance_as_of = False  # an older event arrived late: count it, keep the newer as_of

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

    def replace(self, account_id: str, change: BalanceChange | None, currency: str, read_version: int | None, recent: Sequence[Event]) -> None:
        """Set the view to `change` if it is still at `read_version`, marking `recent` events as seen.

        Used by rebuild: the marks make the projector skip those events if their stream
        records are still to come. Marks that do not fit in the final transaction go
        first, each batch guarded by the same version check.
        """
        marks = self._seen_updates(recent, guarded=False)
        guard = self._version_guard(account_id, read_version)
        while len(marks) > 98:
            chunk, marks = marks[:98], marks[98:]
            self._transact_guarded([*chunk, {"ConditionCheck": guard}])
        now = self._clock()
        item = {
            "pk": {"S": balance_key(account_id)},
            "account_id": {"S": account_id},
            "currency": {"S": change.currency if change else currency},
            "balance": {"N": str(change.balance if change else 0)},
            "credits": {"N": str(change.credits if change else 0)},
            "debits": {"N": str(change.debits if change else 0)},
            "event_count": {"N": str(change.event_count if change else 0)},
            "version": {"N": str((read_version or 0) + 1)},
            "updated_at": {"S": format_rfc3339_epoch(now)},
        }
        if change:
            item["as_of_event_id"] = {"S": change.newest_event_id}
            item["as_of_recorded_at"] = {"S": change.newest_recorded_at}
        put = {"TableName": self._tables.balances, "Item": item, **_without_key(guard)}
        self._transact_guarded([*marks, {"Put": put}])

    def _transact_guarded(self, items: list[dict[str, Any]]) -> None:
        try:
            self._transact(items)
        except _Refused as refused:
            raise ViewChanged() from refused

    def _version_guard(self, account_id: str, read_version: int | None) -> dict[str, Any]:
        guard: dict[str, Any] = {"TableName": self._tables.balances, "Key": {"pk": {"S": balance_key(account_id)}}}
        if read_version is None:
            guard["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            guard["ConditionExpression"] = "#version = :read_version"
            guard["ExpressionAttributeNames"] = {"#version": "version"}
            guard["ExpressionAttributeValues"] = {":read_version": {"N": str(read_version)}}
        return guard

    def _seen_updates(self, events: Sequence[Event], *, guarded: bool) -> list[dict[str, Any]]:
        windows: dict[str, list[str]] = {}
        for event in events:
            windows.setdefault(seen_key(event.entity_id, event.event_id), []).append(event.event_id)
        expires = {"N": str(int(self._clock()) + MARKER_TTL_SECONDS)}
        updates = []
        for key, ids in windows.items():
            update: dict[str, Any] = {
                "TableName": self._tables.balances,
                "Key": {"pk": {"S": key}},
                "UpdateExpression": "ADD ids :ids SET #expires = :expires",
                "ExpressionAttributeNames": {"#expires": TTL_ATTRIBUTE},
                "ExpressionAttributeValues": {":ids": {"SS": ids}, ":expires": expires},
            }
            if guarded:
                update["ConditionExpression"] = " AND ".join(f"NOT contains(ids, :e{i})" for i in range(len(ids)))
                update["ExpressionAttributeValues"].update({f":e{i}": {"S": id_} for i, id_ in enumerate(ids)})
            updates.append({"Update": update})
        return updates

    def _add_change(self, change: BalanceChange, *, advance_as_of: bool) -> dict[str, Any]:
        update = {
            "TableName": self._tables.balances,
            "Key": {"pk": {"S": balance_key(change.account_id)}},
            "UpdateExpression": (
                "ADD #balance :balance, #credits :credits, #debits :debits, #event_count :count, #version :one "
                "SET account_id = :account, #currency = :currency, updated_at = :now"
            ),
            "ExpressionAttributeNames": dict(_NAMES),
            "ExpressionAttributeValues": {
                ":balance": {"N": str(change.balance)},
                ":credits": {"N": str(change.credits)},
                ":debits": {"N": str(change.debits)},
                ":count": {"N": str(change.event_count)},
                ":one": {"N": "1"},
                ":account": {"S": change.account_id},
                ":currency": {"S": change.currency},
                ":now": {"S": format_rfc3339_epoch(self._clock())},
            },
        }
        if advance_as_of:
            update["UpdateExpression"] += ", as_of_event_id = :newest, as_of_recorded_at = :newest_at"
            update["ConditionExpression"] = "attribute_not_exists(as_of_event_id) OR as_of_event_id < :newest"
            update["ExpressionAttributeValues"].update(
                {":newest": {"S": change.newest_event_id}, ":newest_at": {"S": change.newest_recorded_at}}
            )
        return {"Update": update}

    def _transact(self, items: list[dict[str, Any]]) -> None:
        """One TransactWriteItems; failed conditions are raised as `_Refused` naming the items, contention as `Contention`."""
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reasons = exc.response.get("CancellationReasons") or []
            failed = {i: r.get("Item") for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"}
            if code == "TransactionCanceledException" and failed:
                raise _Refused(failed) from exc
            if code in ("TransactionCanceledException", "TransactionInProgressException", "ThrottlingException") and (
                not reasons or any(r.get("Code") in _CONTENTION_CODES for r in reasons)
            ):
                raise Contention() from exc
            raise

    def folded_exactly(self, account_id: str, event_count: int) -> dict[str, Any]:
        """A condition check, for another store's transaction: this region's view folded exactly `event_count` events.

        A move of a home recomputes `available` from the log; committing that on this check
        ties it to the projector, which settles what it folds after the move and never what
        it folded before.
        """
        return {
            "ConditionCheck": {
                "TableName": self._tables.balances,
                "Key": {"pk": {"S": balance_key(account_id)}},
                "ConditionExpression": "event_count = :n",
                "ExpressionAttributeValues": {":n": {"N": str(event_count)}},
            }
        }

    # -- reads ------------------------------------------------------------------

    def get(self, account_id: str, *, consistent: bool = False) -> Balance | None:
        response = self._client.get_item(
            TableName=self._tables.balances, Key={"pk": {"S": balance_key(account_id)}}, ConsistentRead=consistent
        )
        item = response.get("Item")
        return _balance_from_item(item) if item else None

    def freshness_read(self, account_id: str, event_id: str | None = None) -> dict[str, Any]:
        """In one request (BatchGetItem): the view, the account item, this region's replication
        watermark and, given `event_id`, whether the view holds that event.

        Returns {"balance": Balance | None, "account": item | None, "watermark": str | None,
        "holds": bool | None}.
        """
        keys = [{"pk": {"S": balance_key(account_id)}}, {"pk": {"S": WATERMARK_KEY}}]
        if event_id is not None:
            keys.append({"pk": {"S": seen_key(account_id, event_id)}})
        request: dict[str, Any] = {self._tables.balances: {"Keys": keys}}
        if self._accounts_table:
            request[self._accounts_table] = {"Keys": [{"account_id": {"S": account_id}}]}
        found: dict[str, list[dict[str, Any]]] = {}
        while request:
            response = self._client.batch_get_item(RequestItems=request)
            for table, items in response.get("Responses", {}).items():
                found.setdefault(table, []).extend(items)
            request = response.get("UnprocessedKeys") or {}
        views = {item["pk"]["S"]: item for item in found.get(self._tables.balances, [])}
        accounts = found.get(self._accounts_table or "", [])
        seen = views.get(seen_key(account_id, event_id)) if event_id is not None else None
        watermark = views.get(WATERMARK_KEY)
        return {
            "balance": _balance_from_item(views[balance_key(account_id)]) if balance_key(account_id) in views else None,
            "account": accounts[0] if accounts else None,
            "watermark": watermark["until"]["S"] if watermark else None,
            "holds": None if event_id is None else bool(seen and event_id in seen.get("ids", {}).get("SS", [])),
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


def _without_key(guard: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in guard.items() if k not in ("TableName", "Key")}


def format_rfc3339_epoch(seconds: float) -> str:
    return format_rfc3339(datetime.fromtimestamp(seconds, tz=timezone.utc))
