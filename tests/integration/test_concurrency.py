"""Concurrent writers against DynamoDB Local: the guards hold under real transactions.

Twenty threads race on one Idempotency-Key, or on one no-overdraft account; the
engine serialises them on the contended item and the ledger must record exactly
what a sequential run would allow.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from composition.root import Root
from ledger import errors
from ledger.commands import MovementRequest, OpenAccountRequest, ReversalRequest, TransferRequest
from ledger.config import Settings, dynamodb_client
from ledger.service import Caller, Ledger, Outcome
from runtime.tables import ensure_tables

THREADS = 20


@pytest.fixture
def ledger(dynamodb_local) -> Ledger:
    settings = Settings(stage=f"x{uuid.uuid4().hex[:10]}", endpoint_url=dynamodb_local.endpoint_url)
    client = dynamodb_client(settings)
    ensure_tables(client, settings)
    return Root(settings, client=client).ledger


def _race(action: Callable[[int], object]) -> list[object]:
    """Run `action(i)` on THREADS threads released at the same instant; collect results or errors."""
    start = threading.Barrier(THREADS)

    def run(index: int) -> object:
        start.wait()
        try:
            return action(index)
        except errors.LedgerError as refused:
            return refused

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(run, range(THREADS)))


def _history(ledger: Ledger, account_id: str) -> list:
    return ledger.history(account_id, limit=1000).events


def test_twenty_concurrent_posts_with_one_key_record_exactly_one_event(ledger: Ledger) -> None:
    ledger.open_account(Caller("tests", "open"), OpenAccountRequest(account_id="alice", currency="EUR"))
    credit = MovementRequest(amount=100, currency="EUR")

    results = _race(lambda _: ledger.credit(Caller("tests", "same-key"), "alice", credit))

    outcomes = [r for r in results if isinstance(r, Outcome)]
    in_flight = [r for r in results if isinstance(r, errors.IdempotencyInFlight)]
    assert len(outcomes) + len(in_flight) == THREADS, results
    assert sum(not o.replayed for o in outcomes) == 1
    assert {o.body for o in outcomes} == {outcomes[0].body}
    credits = [e for e in _history(ledger, "alice") if e.type == "account.credited"]
    assert len(credits) == 1
    assert json.loads(outcomes[0].body)["transaction_id"] == credits[0].transaction_id


def test_twenty_concurrent_debits_never_take_a_no_overdraft_account_below_zero(ledger: Ledger) -> None:
    ledger.open_account(Caller("tests", "open"), OpenAccountRequest(account_id="alice", currency="EUR"))
    ledger.credit(Caller("tests", "fund"), "alice", MovementRequest(amount=700, currency="EUR"))
    debit = MovementRequest(amount=100, currency="EUR")

    results = _race(lambda i: ledger.debit(Caller("tests", f"debit-{i}"), "alice", debit))

    recorded = [r for r in results if isinstance(r, Outcome)]
    refused = [r for r in results if isinstance(r, errors.LedgerError)]
    assert len(recorded) <= 7
    assert all(isinstance(r, (errors.InsufficientFunds, errors.StoreUnavailable)) for r in refused), refused
    events = _history(ledger, "alice")
    balance = sum(e.signed_amount for e in events)
    assert balance >= 0
    assert balance == 700 - 100 * len(recorded)
    assert ledger.get_account("alice").available == balance


def test_twenty_concurrent_reversals_of_one_transfer_record_exactly_one(ledger: Ledger) -> None:
    for account in ("alice", "bob"):
        ledger.open_account(Caller("tests", f"open-{account}"), OpenAccountRequest(account_id=account, currency="EUR"))
    ledger.credit(Caller("tests", "fund"), "alice", MovementRequest(amount=1000, currency="EUR"))
    transfer = ledger.transfer(
        Caller("tests", "pay"), TransferRequest(from_account="alice", to_account="bob", amount=300, currency="EUR")
    )
    original = json.loads(transfer.body)["transaction_id"]

    results = _race(lambda i: ledger.reverse(Caller("tests", f"reverse-{i}"), original, ReversalRequest()))

    recorded = [r for r in results if isinstance(r, Outcome)]
    refused = [r for r in results if isinstance(r, errors.LedgerError)]
    assert len(recorded) == 1, results
    assert {type(r) for r in refused} <= {errors.AlreadyReversed, errors.StoreUnavailable}, refused
    reversal = json.loads(recorded[0].body)["transaction_id"]
    assert ledger.reversed_by(original) == reversal
    for account, balance in (("alice", 1000), ("bob", 0)):
        events = _history(ledger, account)
        assert sum(e.signed_amount for e in events) == balance
        assert [e.transaction_id for e in events if e.reverses] == [reversal]
