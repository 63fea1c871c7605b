"""The event store: the only module of `ledger` that talks to DynamoDB.

Every write is one `TransactWriteItems` and every item in it carries a condition:
the idempotency record must be new (or expired), each event must be new, a new
account must be new, and each touched account must exist, be open, be in the
movement's currency, be homed in this region and, unless it allows overdraft, hold
enough `available` for a debit. The `ADD` on `available` runs inside the same
transaction, so concurrent debits serialise on the account item and cannot race
past the guard.

When DynamoDB cancels a transaction it says, item by item, why; `_explain` turns
that into one domain error. `ReturnValuesOnConditionCheckFailure=ALL_OLD` hands
back the item that failed, so an existing idempotency record or the reason an
account refused costs no second read.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from . import errors
from .accounts import Account
from .events import Event, parse_event
from .schema import (
    IDEMPOTENCY_TTL_ATTRIBUTE,
    STORAGE_ATTRIBUTES,
    TIME_INDEX,
    TIME_SHARD_ATTRIBUTE,
    TIME_SHARDS,
    TRANSACTION_INDEX,
    LedgerTables,
)

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONTENTION_CODES = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
_UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


# BatchGetItem answers what it could and hands back the rest as UnprocessedKeys (the
# table throttled, or the answer reached 16 MB). Ask again for those, backing off
# exponentially with full jitter as AWS advises; give up only after this many answers
# in a row brought nothing (under 0.8 s of waiting in all), so a throttled table is a
# fast, retryable refusal, never a hang.
BATCH_GET_ATTEMPTS = 6
_BATCH_GET_BACKOFF_SECONDS = 0.025


def batch_get_all(client: Any, request: dict[str, Any], sleep: Callable[[float], None] = time.sleep) -> Iterator[tuple[str, dict[str, Any]]]:
    """(table, item) for every item a BatchGetItem request finds, its unprocessed keys asked for again.

    Raises a `ProvisionedThroughputExceededException` ClientError, which every caller
    already takes as retryable (a 503, a batch retried), when DynamoDB keeps the keys.
    """
    idle = 0
    while request:
        response = client.batch_get_item(RequestItems=request)
        found = response.get("Responses", {})
        for table, items in found.items():
            for item in items:
                yield table, item
        request = response.get("UnprocessedKeys") or {}
        if not request:
            return
        idle = 0 if any(found.values()) else idle + 1
        if idle >= BATCH_GET_ATTEMPTS:
            left = sum(len(table["Keys"]) for table in request.values())
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": f"BatchGetItem left {left} key(s) unprocessed {idle} times in a row"}},
                "BatchGetItem",
            )
        sleep(random.uniform(0, _BATCH_GET_BACKOFF_SECONDS * 2 ** (idle - 1)))


@dataclass(frozen=True)
class IdempotencyRecord:
    """What a write recorded, keyed by caller scope and Idempotency-Key: enough to replay its answer.

    It names the write's events rather than copying its answer: a replay reads them back
    and renders the same bytes (`ledger.responses`), so the record's size depends neither
    on the events' metadata nor on the key's length beyond the key itself.
    """

    idempotency_id: str
    request_hash: str
    view: str  # how the answer is rendered from the events (`ledger.responses.View`): account, transaction or batch
    event_keys: tuple[tuple[str, str], ...]  # (entity_id, event_id) of each event, in the answer's order
    resource: str  # where the recorded thing is read: /accounts/<id> or /transactions/<id>
    recorded_at: str
    expires_at: int
    body: str | None = None  # the answer itself, on records written before answers were rendered


@dataclass(frozen=True)
class BalanceGuard:
    """One account a commit touches, by how much (negative for a debit), and the event that does it.

    The guard also orders the account's history: it commits only if `event_id` is
    greater than the account's `last_event_id`, and sets it.
    """

    account_id: str
    currency: str
    delta: int
    event_id: str
    epoch: int = 1  # the account's write epoch this region believes in; a guarded write checks it
    remote: bool = False  # a credit of an account homed elsewhere: checked (exists, open, currency), not written
    remote_ok: bool = False  # a credit that may be remote (a transfer's or reversal's credit leg)
    status_from: str = "open"  # the status the account must have (every movement: open)
    status_to: str | None = None  # an operator's freeze or unfreeze: the status it gets
    # Several events of one account in one commit (a batch) share one guard: the account's newest
    # committed event must be below the first of them, `event_id` is the last, and `needed` is what
    # `available` must hold so that no prefix of them takes it below zero (None: what a debit takes).
    first_event_id: str | None = None
    needed: int | None = None

    @property
    def requires(self) -> int:
        """What `available` must hold before the commit, unless the account allows overdraft."""
        return self.needed if self.needed is not None else max(0, -self.delta)


@dataclass(frozen=True)
class ReversalMarker:
    """The once-only record that `original` was reversed by `reversal`.

    It lives in the idempotency table (id `reversal#<original>`, no expiry): the
    table of records that make something happen once. Its put-if-absent commits with
    the reversal's events, so two reversals of one transaction cannot both land; the
    accounts' home-region guards in the same transaction keep other regions out.
    That holds while the accounts' home stays put: a marker written in the old home
    and not yet replicated when the home moves does not stop the new home.
    """

    original: str
    reversal: str
    recorded_at: str

    @property
    def record_id(self) -> str:
        return f"reversal#{self.original}"


@dataclass(frozen=True)
class Commit:
    """Everything one request writes; all of it lands or none of it does."""

    events: tuple[Event, ...]
    idempotency: IdempotencyRecord | None = None
    new_account: Account | None = None
    guards: tuple[BalanceGuard, ...] = ()
    reversal: ReversalMarker | None = None
    now_epoch: int = 0
    token: str | None = None


class KeyAlreadyUsed(Exception):
    """The commit's idempotency record exists already; `record` is it (None if unreadable)."""

    def __init__(self, record: IdempotencyRecord | None) -> None:
        super().__init__("idempotency record exists")
        self.record = record


class OutOfOrder(Exception):
    """The account committed an event newer than ours meanwhile: mint ids above `newest` and retry."""

    def __init__(self, account_id: str, newest: str) -> None:
        super().__init__(f"account {account_id!r} already holds {newest}")
        self.account_id = account_id
        self.newest = newest


class HomedElsewhere(Exception):
    """A credit leg's account is homed in another region: record it there as event-only, settled at home."""

    def __init__(self, account_id: str, home_region: str, epoch: int) -> None:
        super().__init__(f"account {account_id!r} is homed in {home_region}")
        self.account_id = account_id
        self.home_region = home_region
        self.epoch = epoch


class StaleEpoch(Exception):
    """The account's write epoch moved (a fail-over came back here): redraft under `epoch`."""

    def __init__(self, account_id: str, epoch: int) -> None:
        super().__init__(f"account {account_id!r} is at write epoch {epoch}")
        self.account_id = account_id
        self.epoch = epoch


class Contention(Exception):
    """A concurrent transaction cancelled ours (DynamoDB does not retry that); retrying may succeed."""

    def __init__(self, on_idempotency_record: bool) -> None:
        super().__init__("transaction conflict or throttling")
        self.on_idempotency_record = on_idempotency_record


@dataclass
class _Explainer:
    """Turns a failed condition on one item of a transaction into an exception."""

    on_condition_failed: Callable[[dict[str, Any] | None], Exception]
    is_idempotency_record: bool = False


@dataclass
class _Plan:
    items: list[dict[str, Any]] = field(default_factory=list)
    explainers: list[_Explainer] = field(default_factory=list)

    def add(self, item: dict[str, Any], explainer: _Explainer) -> None:
        self.items.append(item)
        self.explainers.append(explainer)


def serialize(data: dict[str, Any]) -> dict[str, Any]:
    return {key: _SERIALIZER.serialize(value) for key, value in data.items() if value is not None}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain(_DESERIALIZER.deserialize(value)) for key, value in item.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, set)):
        return [_plain(item) for item in value]
    return value


def time_shard(event_id: str) -> str:
    """`NN`: the event's shard of the time index, from the random end of its id."""
    return f"{_CROCKFORD.index(event_id[-1]) % TIME_SHARDS:02d}"


def event_item(event: Event) -> dict[str, Any]:
    """The stored form of an event: its fields plus the index attributes.

    Empty metadata is left out (the model defaults it): DynamoDB Local renders an
    empty map in stream images as `{}` without its type, which no decoder reads.
    """
    data = event.model_dump(exclude_none=True)
    if not data.get("metadata"):
        data.pop("metadata", None)
    return serialize({**data, TIME_SHARD_ATTRIBUTE: time_shard(event.event_id)})


def record_data(item: dict[str, Any]) -> dict[str, Any]:
    """A stored item's own fields: index keys and replication stamps left out."""
    data = deserialize(item)
    for name in STORAGE_ATTRIBUTES:
        data.pop(name, None)
    return data


def event_from_item(item: dict[str, Any]) -> Event:
    return parse_event(record_data(item))


def account_from_item(item: dict[str, Any]) -> Account:
    return Account.model_validate(record_data(item))


def _record_from_item(item: dict[str, Any]) -> IdempotencyRecord:
    data = record_data(item)
    return IdempotencyRecord(
        idempotency_id=data["idempotency_id"],
        request_hash=data["request_hash"],
        view=data.get("view", ""),
        event_keys=tuple(_event_key(key) for key in data.get("events", [])),
        resource=data.get("resource") or data.get("headers", {}).get("Location", ""),  # records before `resource`
        recorded_at=data["recorded_at"],
        expires_at=int(data[IDEMPOTENCY_TTL_ATTRIBUTE]),
        body=data.get("body"),
    )


def _event_key(stored: str) -> tuple[str, str]:
    """An event's key as a record stores it: `<entity_id> <event_id>` (account ids hold no space)."""
    entity_id, _, event_id = stored.rpartition(" ")
    return entity_id, event_id


class EventStore:
    """Append events with their guards and idempotency record; read them back."""

    def __init__(self, client: Any, tables: LedgerTables, region: str) -> None:
        self._client = client
        self._tables = tables
        self._region = region

    @property
    def client(self) -> Any:
        return self._client

    @property
    def tables(self) -> LedgerTables:
        return self._tables

    # -- writes -----------------------------------------------------------------

    def commit(self, commit: Commit) -> None:
        """Write the commit atomically, or raise the reason it was refused."""
        plan = self._plan(commit)
        request: dict[str, Any] = {"TransactItems": plan.items}
        if commit.token:
            request["ClientRequestToken"] = commit.token
        try:
            self._client.transact_write_items(**request)
        except ClientError as exc:
            raise self._explain(exc, plan) from exc

    def _plan(self, commit: Commit) -> _Plan:
        plan = _Plan()
        if commit.idempotency is not None:
            plan.add(self._put_idempotency(commit.idempotency, commit.now_epoch), _Explainer(self._key_used, True))
        if commit.reversal is not None:
            # Before the guards: "already reversed" explains a refusal better than the
            # overdraft the first reversal's debits caused.
            plan.add(self._put_reversal(commit.reversal), _Explainer(lambda old, m=commit.reversal: self._reversed(m, old)))
        if commit.new_account is not None:
            account = commit.new_account
            plan.add(
                self._put_new(self._tables.accounts, account.model_dump(), "account_id"),
                _Explainer(lambda _old, a=account: errors.AccountAlreadyExists(f"account {a.account_id!r} exists")),
            )
        for event in commit.events:
            plan.add(
                {
                    "Put": {
                        "TableName": self._tables.events,
                        "Item": event_item(event),
                        "ConditionExpression": "attribute_not_exists(event_id)",
                    }
                },
                _Explainer(
                    lambda _old, e=event: errors.DuplicateEvent(
                        f"event {e.event_id} of {e.entity_id!r} exists", entity_id=e.entity_id, event_id=e.event_id
                    )
                ),
            )
        for guard in commit.guards:
            plan.add(self._update_guard(guard), _Explainer(lambda old, g=guard: self._guard_refused(g, old)))
        return plan

    def _put_reversal(self, marker: ReversalMarker) -> dict[str, Any]:
        put = self._put_new(
            self._tables.idempotency,
            {"idempotency_id": marker.record_id, "reversal_transaction_id": marker.reversal, "recorded_at": marker.recorded_at},
            "idempotency_id",
        )
        put["Put"]["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return put

    def _reversed(self, marker: ReversalMarker, old: dict[str, Any] | None) -> Exception:
        by = deserialize(old).get("reversal_transaction_id") if old else self.reversal_of(marker.original)
        return errors.AlreadyReversed(
            f"transaction {marker.original} was reversed by {by}", transaction_id=marker.original, reversed_by=by
        )

    def _put_new(self, table: str, data: dict[str, Any], key: str) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": table,
                "Item": serialize(data),
                "ConditionExpression": "attribute_not_exists(#key)",
                "ExpressionAttributeNames": {"#key": key},
            }
        }

    def _put_idempotency(self, record: IdempotencyRecord, now_epoch: int) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._tables.idempotency,
                "Item": serialize(
                    {
                        "idempotency_id": record.idempotency_id,
                        "request_hash": record.request_hash,
                        "view": record.view,
                        "events": [f"{entity_id} {event_id}" for entity_id, event_id in record.event_keys],
                        "resource": record.resource,
                        "recorded_at": record.recorded_at,
                        IDEMPOTENCY_TTL_ATTRIBUTE: record.expires_at,
                    }
                ),
                # An expired record may linger until TTL deletes it; it no longer binds the key.
                "ConditionExpression": "attribute_not_exists(idempotency_id) OR #expires < :now",
                "ExpressionAttributeNames": {"#expires": IDEMPOTENCY_TTL_ATTRIBUTE},
                "ExpressionAttributeValues": {":now": {"N": str(now_epoch)}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _update_guard(self, guard: BalanceGuard) -> dict[str, Any]:
        if guard.remote:
            # Not this region's item to write (one writer per item: its home). Checked only;
            # the account's home adds the credit to `available` when the event reaches it.
            return {
                "ConditionCheck": {
                    "TableName": self._tables.accounts,
                    "Key": {"account_id": {"S": guard.account_id}},
                    # Still homed elsewhere: a home that moved here must be written, in commit order.
                    "ConditionExpression": (
                        "attribute_exists(account_id) AND #status = :open AND currency = :currency"
                        " AND home_region <> :region"
                    ),
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":open": {"S": "open"},
                        ":currency": {"S": guard.currency},
                        ":region": {"S": self._region},
                    },
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        # Its events come after the account's newest: `:event` (the only one), or `:first` of several.
        above = ":first" if guard.first_event_id and guard.first_event_id != guard.event_id else ":event"
        condition = (
            "attribute_exists(account_id) AND #status = :status AND currency = :currency AND home_region = :region"
            " AND write_epoch = :epoch AND attribute_not_exists(moving_from)"
            f" AND (attribute_not_exists(last_event_id) OR last_event_id < {above})"
        )
        values: dict[str, Any] = {
            ":delta": {"N": str(guard.delta)},
            ":status": {"S": guard.status_from},
            ":currency": {"S": guard.currency},
            ":region": {"S": self._region},
            ":epoch": {"N": str(guard.epoch)},
            ":event": {"S": guard.event_id},
        }
        if above == ":first":
            values[":first"] = {"S": guard.first_event_id}
        if guard.status_to:
            values[":to"] = {"S": guard.status_to}
        if guard.requires > 0:
            condition += " AND (allow_overdraft = :true OR available >= :needed)"
            values[":true"] = {"BOOL": True}
            values[":needed"] = {"N": str(guard.requires)}
        return {
            "Update": {
                "TableName": self._tables.accounts,
                "Key": {"account_id": {"S": guard.account_id}},
                "UpdateExpression": "ADD available :delta SET last_event_id = :event" + (", #status = :to" if guard.status_to else ""),  # noqa: E501
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _key_used(self, old: dict[str, Any] | None) -> Exception:
        return KeyAlreadyUsed(_record_from_item(old) if old else None)

    def _guard_refused(self, guard: BalanceGuard, old: dict[str, Any] | None) -> Exception:
        account = account_from_item(old) if old else self.get_account(guard.account_id)
        name = guard.account_id
        if account is None:
            return errors.AccountNotFound(f"account {name!r} does not exist", account_id=name)
        if account.status != guard.status_from:
            if guard.status_from == "frozen":
                return errors.AccountNotFrozen(f"account {name!r} is {account.status}", account_id=name)
            return errors.AccountNotOpen(f"account {name!r} is {account.status}", account_id=name)
        if account.currency != guard.currency:
            return errors.CurrencyMismatch(
                f"account {name!r} holds {account.currency}, not {guard.currency}",
                account_id=name,
                account_currency=account.currency,
            )
        if guard.remote:
            if account.home_region == self._region:
                return StaleEpoch(name, account.write_epoch)  # its home moved here: write it as home
            return Contention(on_idempotency_record=False)  # it was open in its currency: it moved since
        if account.home_region != self._region:
            if guard.remote_ok:
                return HomedElsewhere(name, account.home_region, account.write_epoch)
            if account.moving_from is not None:
                return self._moving(account)  # the new home may not even hold the account yet
            return errors.WrongRegion(
                f"account {name!r} is written in {account.home_region}, not {self._region}",
                account_id=name,
                home_region=account.home_region,
            )
        if account.write_epoch != guard.epoch:
            return StaleEpoch(name, account.write_epoch)
        if account.moving_from is not None:
            return self._moving(account)
        if guard.requires > 0 and not account.allow_overdraft and account.available < guard.requires:
            return errors.InsufficientFunds(
                f"account {name!r} does not allow overdraft and holds too little for {guard.requires}",
                account_id=name,
            )
        if account.last_event_id is not None and account.last_event_id >= (guard.first_event_id or guard.event_id):
            return OutOfOrder(name, account.last_event_id)
        return Contention(on_idempotency_record=False)  # the item moved on since: try again

    def _moving(self, account: Account) -> Exception:
        return errors.AccountMoving(
            f"account {account.account_id!r} is moving from {account.moving_from} to {account.home_region}; "
            "retry shortly (its new home takes writes once the move is done, and the old one then answers 421)",
            account_id=account.account_id,
            home_region=account.home_region,
        )

    def _explain(self, exc: ClientError, plan: _Plan) -> Exception:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _UNAVAILABLE_CODES:
            # botocore has retried these already; one retry layer is enough, so the
            # caller hears at once that the store is unavailable.
            return errors.StoreUnavailable(f"DynamoDB answered {code}; retry with the same Idempotency-Key")
        if code != "TransactionCanceledException":
            return exc
        reasons = exc.response.get("CancellationReasons") or []
        failed = [
            (explainer, reason)
            for explainer, reason in zip(plan.explainers, reasons)
            if reason.get("Code") == "ConditionalCheckFailed"
        ]
        # The idempotency record outranks every other refusal: a retry must replay.
        failed.sort(key=lambda pair: not pair[0].is_idempotency_record)
        if failed:
            explainer, reason = failed[0]
            return explainer.on_condition_failed(reason.get("Item"))
        contended = [
            explainer
            for explainer, reason in zip(plan.explainers, reasons)
            if reason.get("Code") in _CONTENTION_CODES
        ]
        if contended or not reasons:
            return Contention(on_idempotency_record=any(e.is_idempotency_record for e in contended))
        return exc

    # -- reads ------------------------------------------------------------------

    def get_idempotency_record(self, idempotency_id: str) -> IdempotencyRecord | None:
        response = self._client.get_item(
            TableName=self._tables.idempotency,
            Key={"idempotency_id": {"S": idempotency_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return _record_from_item(item) if item else None

    def reversal_of(self, transaction_id: str) -> str | None:
        """The id of the transaction that reversed `transaction_id`, if any."""
        response = self._client.get_item(
            TableName=self._tables.idempotency,
            Key={"idempotency_id": {"S": f"reversal#{transaction_id}"}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return item["reversal_transaction_id"]["S"] if item else None

    def get_account(self, account_id: str) -> Account | None:
        response = self._client.get_item(
            TableName=self._tables.accounts, Key={"account_id": {"S": account_id}}, ConsistentRead=True
        )
        item = response.get("Item")
        return account_from_item(item) if item else None

    def accounts(self) -> Iterator[Account]:
        """Every account item of this replica (a scan: operators' commands, never a request path)."""
        request: dict[str, Any] = {"TableName": self._tables.accounts, "ConsistentRead": True}
        while True:
            page = self._client.scan(**request)
            for item in page.get("Items", []):
                yield account_from_item(item)
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def rewrite_account(
        self,
        account_id: str,
        *,
        expect: dict[str, Any],
        changes: dict[str, Any],
        events: Sequence[Event] = (),
        also: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Set attributes of an account item (None removes one) if it still holds `expect`; False if not.

        For the operators' moves and repairs of homes, not for money: `expect` names the
        attributes the decision was read from (None: absent), so a write that slipped in
        between refuses the rewrite. `events` are appended in the same transaction (the
        record of a move); `also` are condition checks on other tables that must hold in it.
        """
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        conditions = ["attribute_exists(account_id)"]
        for n, (attribute, value) in enumerate(expect.items()):
            names[f"#e{n}"] = attribute
            if value is None:
                conditions.append(f"attribute_not_exists(#e{n})")
            else:
                values[f":e{n}"] = _SERIALIZER.serialize(value)
                conditions.append(f"#e{n} = :e{n}")
        sets, removes = [], []
        for n, (attribute, value) in enumerate(changes.items()):
            names[f"#c{n}"] = attribute
            if value is None:
                removes.append(f"#c{n}")
            else:
                values[f":c{n}"] = _SERIALIZER.serialize(value)
                sets.append(f"#c{n} = :c{n}")
        expression = (f"SET {', '.join(sets)} " if sets else "") + (f"REMOVE {', '.join(removes)}" if removes else "")
        update = {
            "TableName": self._tables.accounts,
            "Key": {"account_id": {"S": account_id}},
            "UpdateExpression": expression.strip(),
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            **({"ExpressionAttributeValues": values} if values else {}),
        }
        try:
            puts = [
                {"Put": {"TableName": self._tables.events, "Item": event_item(e), "ConditionExpression": "attribute_not_exists(event_id)"}}
                for e in events
            ]
            self._client.transact_write_items(TransactItems=[{"Update": update}, *puts, *also])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return False
            raise
        return True

    def record_review(self, record_id: str, kind: str, detail: str, recorded_at: str) -> None:
        """Record, once, that an operator's reconciliation reviewed a finding (kept beside the idempotency records)."""
        try:
            self._client.put_item(**self._put_new(
                self._tables.idempotency,
                {"idempotency_id": record_id, "review_of": kind, "detail": detail, "recorded_at": recorded_at},
                "idempotency_id",
            )["Put"])  # fmt: skip
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    def idempotency_records(self, record_ids: Sequence[str]) -> list[IdempotencyRecord]:
        """Those of these idempotency records that exist (strongly consistent), in no particular order."""
        keys = [{"idempotency_id": {"S": i}} for i in dict.fromkeys(record_ids)]
        return [_record_from_item(item) for item in self._batch_get(self._tables.idempotency, keys)]

    def records_present(self, record_ids: Sequence[str]) -> set[str]:
        """Which of these idempotency records this replica holds (strongly consistent)."""
        keys = [{"idempotency_id": {"S": i}} for i in dict.fromkeys(record_ids)]
        return {item["idempotency_id"]["S"] for item in self._batch_get(self._tables.idempotency, keys, "idempotency_id")}

    def _batch_get(self, table: str, keys: list[dict[str, Any]], projection: str | None = None) -> Iterator[dict[str, Any]]:
        """The items of these (distinct) keys that exist, read consistently, 100 keys to a request."""
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            if projection:
                request[table]["ProjectionExpression"] = projection
            yield from (item for _, item in batch_get_all(self._client, request))

    def account_ids(self) -> Iterator[str]:
        request: dict[str, Any] = {"TableName": self._tables.accounts, "ProjectionExpression": "account_id"}
        while True:
            page = self._client.scan(**request)
            for item in page.get("Items", []):
                yield item["account_id"]["S"]
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def account_events(
        self,
        account_id: str,
        low: str,
        high: str,
        *,
        ascending: bool = True,
        limit: int = 100,
        after: str | None = None,
    ) -> tuple[list[Event], bool]:
        """Up to `limit` events of the account with ids in [low, high], after `after`; and whether more remain."""
        request: dict[str, Any] = {
            "TableName": self._tables.events,
            "KeyConditionExpression": "entity_id = :account AND event_id BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":account": {"S": account_id},
                ":low": {"S": low},
                ":high": {"S": high},
            },
            "ScanIndexForward": ascending,
            "ConsistentRead": True,
        }
        if after:
            # DynamoDB refuses a start key outside the key condition's range (ValidationException):
            # past the end there is nothing to read; before the start, read from the start.
            if (after >= high) if ascending else (after <= low):
                return [], False
            if low <= after <= high:
                request["ExclusiveStartKey"] = {"entity_id": {"S": account_id}, "event_id": {"S": after}}
        found: list[Event] = []
        for item in self._query(request, want=limit + 1):
            found.append(event_from_item(item))
        return found[:limit], len(found) > limit

    def time_shard_positions(
        self, shard: str, low: str, high: str, limit: int, after: tuple[str, str] | None = None
    ) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
        """Up to `limit` positions of events of one time shard with ids in [low, high], after `after`, in id order.

        Positions are (event_id, entity_id); the index projects keys only, and the
        events of the positions a reader keeps are read with `events_at`. Returns the
        positions and the position to resume from (None: the shard holds no more in range).
        Index reads are eventually consistent: the newest events may not be there yet.
        """
        request: dict[str, Any] = {
            "TableName": self._tables.events,
            "IndexName": TIME_INDEX,
            "KeyConditionExpression": "#shard = :shard AND event_id BETWEEN :low AND :high",
            "ExpressionAttributeNames": {"#shard": TIME_SHARD_ATTRIBUTE},
            "ExpressionAttributeValues": {":shard": {"S": shard}, ":low": {"S": low}, ":high": {"S": high}},
            "ProjectionExpression": "event_id, entity_id",
            "Limit": limit,
        }
        if after is not None:
            request["ExclusiveStartKey"] = {
                TIME_SHARD_ATTRIBUTE: {"S": shard},
                "event_id": {"S": after[0]},
                "entity_id": {"S": after[1]},
            }
        page = self._client.query(**request)
        positions = [(item["event_id"]["S"], item["entity_id"]["S"]) for item in page.get("Items", [])]
        last = page.get("LastEvaluatedKey")
        return positions, ((last["event_id"]["S"], last["entity_id"]["S"]) if last else None)

    def events_at(self, positions: Sequence[tuple[str, str]]) -> list[Event]:
        """The events at these (event_id, entity_id) positions, in their order (read consistently from the table)."""
        return self.events_by_keys([(entity_id, event_id) for event_id, entity_id in positions])

    def transaction_events(self, transaction_id: str) -> list[Event]:
        """Every leg of a transaction, in event id order: found through the transaction index (keys only), read
        from the table."""
        request = {
            "TableName": self._tables.events,
            "IndexName": TRANSACTION_INDEX,
            "KeyConditionExpression": "transaction_id = :transaction",
            "ExpressionAttributeValues": {":transaction": {"S": transaction_id}},
            "ProjectionExpression": "entity_id, event_id",
        }
        legs = sorted((item["event_id"]["S"], item["entity_id"]["S"]) for item in self._query(request))
        return self.events_at(legs)

    def events_by_keys(self, keys: Sequence[tuple[str, str]]) -> list[Event]:
        """The events with these (entity_id, event_id) keys, read consistently, in the keys' order; absent ones left out."""
        wanted = [{"entity_id": {"S": entity}, "event_id": {"S": event}} for entity, event in dict.fromkeys(keys)]
        found = {(e.entity_id, e.event_id): e for e in map(event_from_item, self._batch_get(self._tables.events, wanted))}
        return [found[key] for key in keys if key in found]

    def _query(self, request: dict[str, Any], want: int | None = None) -> Iterator[dict[str, Any]]:
        request = dict(request)
        seen = 0
        while True:
            if want is not None:
                request["Limit"] = want - seen
            page = self._client.query(**request)
            for item in page.get("Items", []):
                seen += 1
                yield item
            last = page.get("LastEvaluatedKey")
            if not last or (want is not None and seen >= want):
                return
            request["ExclusiveStartKey"] = last
