"""How the event store reads a cancelled transaction, and what it sends (a fake client, no IO).

DynamoDB answers a refused `TransactWriteItems` with one cancellation reason per
item, in the order the items were sent, and (with ALL_OLD) the item whose
condition failed. `EventStore._explain` turns that into one domain error.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from ledger import errors
from ledger.accounts import Account
from ledger.events import Credited, Debited
from ledger.schema import LedgerTables
from ledger.store import (
    BalanceGuard,
    Commit,
    Contention,
    EventStore,
    IdempotencyRecord,
    KeyAlreadyUsed,
    OutOfOrder,
    serialize,
)

TABLES = LedgerTables.for_stage("unit")
REGION = "us-east-1"
OK = {"Code": "None"}


class FakeClient:
    """Just enough of a DynamoDB client: accounts to read back, and a scripted transact answer."""

    def __init__(self, accounts: dict[str, dict[str, Any]] | None = None, refusal: ClientError | None = None) -> None:
        self.accounts = accounts or {}
        self.refusal = refusal
        self.transactions: list[dict[str, Any]] = []
        self.reads: list[str] = []

    def get_item(self, TableName: str, Key: dict[str, Any], ConsistentRead: bool) -> dict[str, Any]:
        assert TableName == TABLES.accounts and ConsistentRead
        account_id = Key["account_id"]["S"]
        self.reads.append(account_id)
        item = self.accounts.get(account_id)
        return {"Item": item} if item else {}

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        self.transactions.append(request)
        if self.refusal is not None:
            raise self.refusal
        return {}


def account(account_id: str = "alice", **changes: Any) -> Account:
    fields = {
        "account_id": account_id,
        "currency": "EUR",
        "allow_overdraft": False,
        "home_region": REGION,
        "opened_at": "2026-11-22T10:00:00.000Z",
        "opened_event_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "available": 50,
    }
    return Account(**{**fields, **changes})


def account_item(account_id: str = "alice", **changes: Any) -> dict[str, Any]:
    """An account as DynamoDB stores it (and hands back with ALL_OLD)."""
    return serialize(account(account_id, **changes).model_dump())


def leg(cls, account_id: str, amount: int, event_id: str) -> Any:
    return cls(
        entity_id=account_id,
        event_id=event_id,
        transaction_id="01ARZ3NDEKTSV4RRFFQ69G5F00",
        transaction_type="transfer",
        amount=amount,
        currency="EUR",
        recorded_at="2026-11-22T10:00:00.000Z",
        region=REGION,
        idempotency_key="k",
    )


RECORD = IdempotencyRecord(
    idempotency_id="key#anonymous#k",
    request_hash="f" * 64,
    view="transaction",
    event_keys=(("alice", "01ARZ3NDEKTSV4RRFFQ69G5F01"), ("bob", "01ARZ3NDEKTSV4RRFFQ69G5F02")),
    resource="/transactions/01ARZ3NDEKTSV4RRFFQ69G5F00",
    recorded_at="2026-11-22T10:00:00.000Z",
    expires_at=1_795_000_000,
)

# A transfer of 100 from alice to bob: items are [idempotency, debit event, credit event, alice guard, bob guard].
TRANSFER = Commit(
    events=(
        leg(Debited, "alice", 100, "01ARZ3NDEKTSV4RRFFQ69G5F01"),
        leg(Credited, "bob", 100, "01ARZ3NDEKTSV4RRFFQ69G5F02"),
    ),
    idempotency=RECORD,
    guards=(
        BalanceGuard("alice", "EUR", -100, "01ARZ3NDEKTSV4RRFFQ69G5F01"),
        BalanceGuard("bob", "EUR", 100, "01ARZ3NDEKTSV4RRFFQ69G5F02"),
    ),
    now_epoch=1_794_000_000,
    token="01ARZ3NDEKTSV4RRFFQ69G5F01",
)


def cancelled(*reasons: dict[str, Any]) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
            "CancellationReasons": list(reasons),
        },
        "TransactWriteItems",
    )


def failed(item: dict[str, Any] | None = None) -> dict[str, Any]:
    reason: dict[str, Any] = {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}
    if item is not None:
        reason["Item"] = item
    return reason


def explain(error: ClientError, commit: Commit = TRANSFER, client: FakeClient | None = None) -> Exception:
    store = EventStore(client or FakeClient(), TABLES, REGION)
    return store._explain(error, store._plan(commit))


def idempotency_item() -> dict[str, Any]:
    store = EventStore(FakeClient(), TABLES, REGION)
    return store._plan(TRANSFER).items[0]["Put"]["Item"]


# -- the idempotency record ---------------------------------------------------------


def test_an_existing_idempotency_record_wins_over_every_other_failure():
    error = cancelled(
        failed(idempotency_item()), OK, OK, failed(account_item("alice", available=0)), failed()
    )

    explained = explain(error)

    assert isinstance(explained, KeyAlreadyUsed)
    assert explained.record == RECORD


def test_an_existing_idempotency_record_without_its_item_asks_for_a_read():
    explained = explain(cancelled(failed(), OK, OK, OK, OK))

    assert isinstance(explained, KeyAlreadyUsed)
    assert explained.record is None


# -- contention ---------------------------------------------------------------------


@pytest.mark.parametrize("code", ["TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"])
def test_a_conflict_on_an_account_is_contention_not_on_the_idempotency_record(code):
    explained = explain(cancelled(OK, OK, OK, {"Code": code}, OK))

    assert isinstance(explained, Contention)
    assert explained.on_idempotency_record is False


def test_a_conflict_on_the_idempotency_record_is_contention_on_it():
    explained = explain(cancelled({"Code": "TransactionConflict"}, OK, OK, OK, OK))

    assert isinstance(explained, Contention)
    assert explained.on_idempotency_record is True


@pytest.mark.parametrize(
    "code",
    [
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",  # account-level throughput limit: as retryable as the others
    ],
)
def test_throttling_of_the_whole_call_is_store_unavailable_at_once(code):
    """botocore retried the call already: one retry layer, so the ledger does not retry it again."""
    error = ClientError({"Error": {"Code": code, "Message": "slow down"}}, "TransactWriteItems")

    explained = explain(error)

    assert isinstance(explained, errors.StoreUnavailable)


def test_a_failed_condition_outranks_a_conflict_elsewhere():
    conflict = {"Code": "TransactionConflict"}

    explained = explain(cancelled(OK, OK, OK, failed(account_item("alice", available=0)), conflict))

    assert isinstance(explained, errors.InsufficientFunds)


# -- account guards, decoded from the ALL_OLD item ------------------------------------


@pytest.mark.parametrize(
    "changes, expected, extra",
    [
        ({"status": "frozen"}, errors.AccountNotOpen, {"account_id": "alice"}),
        ({"status": "closed", "currency": "USD"}, errors.AccountNotOpen, {"account_id": "alice"}),
        ({"currency": "USD"}, errors.CurrencyMismatch, {"account_id": "alice", "account_currency": "USD"}),
        ({"home_region": "eu-west-1"}, errors.WrongRegion, {"account_id": "alice", "home_region": "eu-west-1"}),
        ({"available": 99}, errors.InsufficientFunds, {"account_id": "alice"}),
    ],
    ids=["frozen", "closed beats currency", "currency", "home region", "too little available"],
)
def test_a_failed_account_guard_is_explained_from_the_item_it_failed_on(changes, expected, extra):
    client = FakeClient()

    explained = explain(cancelled(OK, OK, OK, failed(account_item("alice", **changes)), OK), client=client)

    assert type(explained) is expected
    assert explained.extra == extra
    assert client.reads == []  # ALL_OLD made a second read unnecessary


def test_a_guard_on_a_missing_account_is_account_not_found_for_that_account():
    client = FakeClient(accounts={"alice": account_item("alice")})

    explained = explain(cancelled(OK, OK, OK, OK, failed()), client=client)

    assert type(explained) is errors.AccountNotFound
    assert explained.extra == {"account_id": "bob"}
    assert client.reads == ["bob"]


def test_a_guard_failure_without_its_item_falls_back_to_a_consistent_read():
    client = FakeClient(accounts={"bob": account_item("bob", currency="GBP")})

    explained = explain(cancelled(OK, OK, OK, OK, failed()), client=client)

    assert type(explained) is errors.CurrencyMismatch
    assert explained.extra["account_currency"] == "GBP"


def test_an_existing_event_is_a_duplicate_event():
    explained = explain(cancelled(OK, OK, failed(), OK, OK))

    assert type(explained) is errors.DuplicateEvent
    assert explained.extra == {"entity_id": "bob", "event_id": "01ARZ3NDEKTSV4RRFFQ69G5F02"}


def test_an_existing_account_refuses_opening_it_again():
    opening = Commit(events=(), idempotency=RECORD, new_account=account("carol", available=0), now_epoch=1)

    explained = explain(cancelled(OK, failed()), commit=opening)

    assert type(explained) is errors.AccountAlreadyExists


def test_an_unexplained_refusal_is_passed_on_unchanged():
    validation = ClientError({"Error": {"Code": "ValidationException", "Message": "bad"}}, "TransactWriteItems")
    odd_cancel = cancelled(OK, {"Code": "ValidationError"}, OK, OK, OK)

    assert explain(validation) is validation
    assert explain(odd_cancel) is odd_cancel


# -- what commit sends ----------------------------------------------------------------


def test_commit_raises_the_explained_error_from_the_client_error():
    refusal = cancelled(OK, OK, OK, failed(account_item("alice", available=10)), OK)
    store = EventStore(FakeClient(refusal=refusal), TABLES, REGION)

    with pytest.raises(errors.InsufficientFunds) as raised:
        store.commit(TRANSFER)

    assert raised.value.__cause__ is refusal


def test_every_item_of_a_commit_is_written_under_a_condition_in_one_transaction():
    client = FakeClient()

    EventStore(client, TABLES, REGION).commit(TRANSFER)

    (request,) = client.transactions
    assert request["ClientRequestToken"] == TRANSFER.token
    items = request["TransactItems"]
    assert [next(iter(item)) for item in items] == ["Put", "Put", "Put", "Update", "Update"]
    assert all(next(iter(item.values())).get("ConditionExpression") for item in items)
    assert all(
        next(iter(item.values()))["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"
        for item in (items[0], items[3], items[4])
    )


def test_only_a_debit_guard_checks_the_available_balance():
    client = FakeClient()

    EventStore(client, TABLES, REGION).commit(TRANSFER)

    debit_guard, credit_guard = (item["Update"] for item in client.transactions[0]["TransactItems"][3:])
    assert "available >= :needed" in debit_guard["ConditionExpression"]
    assert debit_guard["ExpressionAttributeValues"][":needed"] == {"N": "100"}
    assert debit_guard["ExpressionAttributeValues"][":delta"] == {"N": "-100"}
    assert "available" not in credit_guard["ConditionExpression"]
    assert credit_guard["ExpressionAttributeValues"][":delta"] == {"N": "100"}


def test_an_account_holding_a_newer_event_asks_for_fresh_ids_above_it():
    newer = "01ARZ3NDEKTSV4RRFFQ69G5FZZ"

    explained = explain(cancelled(OK, OK, OK, failed(account_item("alice", available=1000, last_event_id=newer)), OK))

    assert isinstance(explained, OutOfOrder)
    assert (explained.account_id, explained.newest) == ("alice", newer)


def test_too_little_money_outranks_a_newer_event_since_fresh_ids_would_not_help():
    newer = "01ARZ3NDEKTSV4RRFFQ69G5FZZ"

    explained = explain(cancelled(OK, OK, OK, failed(account_item("alice", available=99, last_event_id=newer)), OK))

    assert isinstance(explained, errors.InsufficientFunds)


def test_every_guard_orders_the_account_s_history_by_its_event_id():
    store = EventStore(FakeClient(), TABLES, REGION)
    debit_guard = store._plan(TRANSFER).items[3]["Update"]

    assert "last_event_id < :event" in debit_guard["ConditionExpression"]
    assert "SET last_event_id = :event" in debit_guard["UpdateExpression"]
    assert debit_guard["ExpressionAttributeValues"][":event"] == {"S": TRANSFER.events[0].event_id}
