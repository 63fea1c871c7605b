"""The event store's contract, run against every backend: moto in-process and DynamoDB Local.

Whatever the backend, a commit lands whole or not at all, and each refusal comes
back as the same domain error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from moto import mock_aws

from ledger import errors
from ledger.accounts import Account
from ledger.config import Settings, dynamodb_client
from ledger.events import AccountOpened, Credited, Debited
from ledger.ids import format_rfc3339, new_ulid, ulid_time
from ledger.store import BalanceGuard, Commit, EventStore, IdempotencyRecord, KeyAlreadyUsed, OutOfOrder
from runtime.tables import ensure_tables

REGION = "us-east-1"


@pytest.fixture(params=["moto", "dynamodb-local"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Settings]]:
    """A client and fresh tables (a stage of their own) on one backend."""
    settings = Settings(stage=f"c{uuid.uuid4().hex[:10]}", region=REGION)
    if request.param == "moto":
        os.environ.setdefault("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")
        with mock_aws():
            client = dynamodb_client(replace(settings, endpoint_url=None))
            ensure_tables(client, settings)
            yield client, settings
    else:
        local = request.getfixturevalue("dynamodb_local")
        settings = replace(settings, endpoint_url=local.endpoint_url)
        client = dynamodb_client(settings)
        ensure_tables(client, settings)
        yield client, settings


@pytest.fixture
def store(backend: tuple[Any, Settings]) -> EventStore:
    client, settings = backend
    return EventStore(client, settings.tables, REGION)


def _scan(backend: tuple[Any, Settings]) -> dict[str, list]:
    client, settings = backend
    tables = settings.tables
    return {
        name: sorted(map(str, client.scan(TableName=name, ConsistentRead=True)["Items"]))
        for name in (tables.events, tables.accounts, tables.idempotency)
    }


def _account(account_id: str, *, overdraft: bool = False, region: str = REGION, status: str = "open") -> Account:
    event_id = new_ulid()
    return Account(
        account_id=account_id,
        currency="EUR",
        allow_overdraft=overdraft,
        status=status,  # type: ignore[arg-type]
        home_region=region,
        opened_at=format_rfc3339(ulid_time(event_id)),
        opened_event_id=event_id,
    )


def _opened(account: Account) -> AccountOpened:
    return AccountOpened(
        entity_id=account.account_id,
        event_id=account.opened_event_id,
        transaction_id=account.opened_event_id,
        transaction_type="open",
        currency=account.currency,
        allow_overdraft=account.allow_overdraft,
        recorded_at=account.opened_at,
        region=REGION,
        idempotency_key="open",
    )


def _movement(kind: type, account_id: str, amount: int, transaction_id: str | None = None, currency: str = "EUR"):
    event_id = new_ulid()
    return kind(
        entity_id=account_id,
        event_id=event_id,
        transaction_id=transaction_id or event_id,
        transaction_type="credit" if kind is Credited else "debit",
        amount=amount,
        currency=currency,
        recorded_at=format_rfc3339(ulid_time(event_id)),
        region=REGION,
        idempotency_key="k",
    )


def _record(record_id: str, expires_at: int = 2**40) -> IdempotencyRecord:
    return IdempotencyRecord(record_id, "hash", "transaction", (("alice", "01ARZ3NDEKTSV4RRFFQ69G5FAV"),), "/x", "2026-01-01T00:00:00.000Z", expires_at)


def _open(store: EventStore, account: Account) -> None:
    store.commit(Commit(events=(_opened(account),), new_account=account))


def _move(store: EventStore, event, record: IdempotencyRecord | None = None) -> None:
    store.commit(Commit(events=(event,), guards=(BalanceGuard(event.entity_id, event.currency, event.signed_amount, event.event_id),), idempotency=record, now_epoch=1))


def test_committed_events_read_back_in_ulid_order_both_ways(store: EventStore) -> None:
    account = _account("alice")
    _open(store, account)
    credits = [_movement(Credited, "alice", amount) for amount in (5, 7, 11)]
    for event in credits:
        _move(store, event)

    ascending, more = store.account_events("alice", "0" * 26, "7" + "Z" * 25)
    descending, _ = store.account_events("alice", "0" * 26, "7" + "Z" * 25, ascending=False)

    assert [e.event_id for e in ascending] == [account.opened_event_id] + [e.event_id for e in credits]
    assert descending == list(reversed(ascending))
    assert more is False
    assert ascending[1:] == credits


def test_a_page_says_whether_more_events_remain_and_resumes_after_the_last(store: EventStore) -> None:
    _open(store, _account("alice"))
    for _ in range(4):
        _move(store, _movement(Credited, "alice", 1))

    first, more = store.account_events("alice", "0" * 26, "7" + "Z" * 25, limit=3)
    rest, more_after = store.account_events("alice", "0" * 26, "7" + "Z" * 25, limit=3, after=first[-1].event_id)

    assert (len(first), more) == (3, True)
    assert (len(rest), more_after) == (2, False)


def test_a_duplicate_event_id_is_refused_and_nothing_of_the_commit_lands(store, backend) -> None:
    _open(store, _account("alice"))
    credit = _movement(Credited, "alice", 10)
    _move(store, credit)
    before = _scan(backend)

    with pytest.raises(errors.DuplicateEvent):
        _move(store, credit, record=_record("scope#new-key"))

    assert _scan(backend) == before


def test_an_existing_idempotency_record_is_handed_back_without_a_second_write(store, backend) -> None:
    _open(store, _account("alice"))
    _move(store, _movement(Credited, "alice", 10), record=_record("scope#key"))
    before = _scan(backend)

    with pytest.raises(KeyAlreadyUsed) as refused:
        _move(store, _movement(Credited, "alice", 10), record=_record("scope#key"))

    assert refused.value.record == _record("scope#key")
    assert _scan(backend) == before


def test_an_expired_idempotency_record_no_longer_binds_its_key(store: EventStore) -> None:
    _open(store, _account("alice"))
    _move(store, _movement(Credited, "alice", 10), record=_record("scope#key", expires_at=0))

    _move(store, _movement(Credited, "alice", 20), record=_record("scope#key"))

    assert store.get_idempotency_record("scope#key") == _record("scope#key")


def test_opening_an_account_twice_is_refused(store: EventStore) -> None:
    _open(store, _account("alice"))
    with pytest.raises(errors.AccountAlreadyExists):
        _open(store, _account("alice"))


@pytest.mark.parametrize(
    ("account", "event", "error"),
    [
        (None, _movement(Credited, "alice", 1), errors.AccountNotFound),
        (_account("alice"), _movement(Credited, "alice", 1, currency="USD"), errors.CurrencyMismatch),
        (_account("alice"), _movement(Debited, "alice", 1), errors.InsufficientFunds),
        (_account("alice", region="eu-west-1"), _movement(Credited, "alice", 1), errors.WrongRegion),
        (_account("alice", status="frozen"), _movement(Credited, "alice", 1), errors.AccountNotOpen),
    ],
    ids=["unknown account", "other currency", "overdraft", "other home region", "frozen"],
)
def test_a_failed_account_guard_is_named_and_writes_nothing(store, backend, account, event, error) -> None:
    if account is not None:
        _open(store, account)
    before = _scan(backend)

    with pytest.raises(error):
        _move(store, event, record=_record("scope#guarded"))

    assert _scan(backend) == before


def test_a_debit_may_take_an_overdraft_account_below_zero(store: EventStore) -> None:
    _open(store, _account("bob", overdraft=True))
    _move(store, _movement(Debited, "bob", 500))
    assert store.get_account("bob").available == -500


def test_a_no_overdraft_account_may_be_debited_down_to_exactly_zero(store: EventStore) -> None:
    _open(store, _account("alice"))
    _move(store, _movement(Credited, "alice", 30))
    _move(store, _movement(Debited, "alice", 30))
    with pytest.raises(errors.InsufficientFunds):
        _move(store, _movement(Debited, "alice", 1))
    assert store.get_account("alice").available == 0


def test_a_transfer_lands_whole_or_not_at_all(store, backend) -> None:
    _open(store, _account("alice"))
    _open(store, _account("bob", overdraft=True))
    transaction_id = new_ulid()
    debit = _movement(Debited, "alice", 50, transaction_id)
    credit = _movement(Credited, "bob", 50, transaction_id)
    guards = tuple(BalanceGuard(e.entity_id, "EUR", e.signed_amount, e.event_id) for e in (debit, credit))
    before = _scan(backend)

    with pytest.raises(errors.InsufficientFunds):
        store.commit(Commit(events=(debit, credit), guards=guards))
    assert _scan(backend) == before

    _move(store, _movement(Credited, "alice", 50))
    # The credit committed after the refused draft was minted: a draft's ids must be newer
    # than the account's last event, so the retry is drafted afresh.
    with pytest.raises(OutOfOrder):
        store.commit(Commit(events=(debit, credit), guards=guards))
    debit, credit = (_movement(kind, account, 50, transaction_id) for kind, account in ((Debited, "alice"), (Credited, "bob")))
    guards = tuple(BalanceGuard(e.entity_id, "EUR", e.signed_amount, e.event_id) for e in (debit, credit))
    store.commit(Commit(events=(debit, credit), guards=guards))
    assert store.transaction_events(transaction_id) == [debit, credit]
    assert (store.get_account("alice").available, store.get_account("bob").available) == (0, 50)
