"""Reversals without IO: negating legs, what cannot be reversed, half-indexed transfers, the once-only marker.

The fakes are plain classes with the few methods the ledger and the store call; no mocks.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ledger import errors
from ledger.commands import ReversalRequest
from ledger.events import AccountOpened, Credited, Debited, Event
from ledger.fold import Totals
from ledger.reversals import check_reversible, legs_complete, reversal_legs
from ledger.schema import IDEMPOTENCY_TTL_ATTRIBUTE, LedgerTables
from ledger.service import Caller, Ledger, RetryPolicy
from ledger.store import (
    BalanceGuard,
    Commit,
    EventStore,
    IdempotencyRecord,
    KeyAlreadyUsed,
    ReversalMarker,
    serialize,
)

REGION = "us-east-1"
TABLES = LedgerTables.for_stage("unit")
ORIGINAL = "01ARZ3NDEKTSV4RRFFQ69G5F00"
REVERSAL = "01ARZ3NDEKTSV4RRFFQ69G5R00"


def leg(cls, account_id: str, event_id: str, kind: str = "transfer", **extra: Any) -> Any:
    fields: dict[str, Any] = {
        "entity_id": account_id,
        "event_id": event_id,
        "transaction_id": ORIGINAL,
        "transaction_type": kind,
        "currency": "EUR",
        "recorded_at": "2026-11-22T10:00:00.000Z",
        "region": REGION,
        "idempotency_key": "original-key",
        "description": "rent",
        "metadata": {"ref": "r-1"},
    }
    if cls is not AccountOpened:
        fields["amount"] = 250
    return cls(**{**fields, **extra})


TRANSFER = [
    leg(Debited, "alice", "01ARZ3NDEKTSV4RRFFQ69G5F01", counterparty="bob"),
    leg(Credited, "bob", "01ARZ3NDEKTSV4RRFFQ69G5F02", counterparty="alice"),
]
CREDIT = [leg(Credited, "alice", "01ARZ3NDEKTSV4RRFFQ69G5F01", kind="credit")]
DEBIT = [leg(Debited, "alice", "01ARZ3NDEKTSV4RRFFQ69G5F01", kind="debit")]
OPENING = [leg(AccountOpened, "alice", ORIGINAL, kind="open", allow_overdraft=False)]


def counting_ids() -> Any:
    numbers = itertools.count(1)
    return lambda _account: f"01ARZ3NDEKTSV4RRFFQ69G5R{next(numbers):02d}"


def negate(legs: list[Event], description: str | None = None, metadata: dict[str, str] | None = None) -> tuple:
    return reversal_legs(
        ORIGINAL,
        legs,
        reversal_id=REVERSAL,
        new_event_id=counting_ids(),
        region="eu-west-1",
        idempotency_key="undo",
        caller="ops",
        description=description,
        metadata=metadata or {},
    )


# -- the negating legs ------------------------------------------------------------------


@pytest.mark.parametrize("legs", [CREDIT, DEBIT, TRANSFER], ids=["credit", "debit", "transfer"])
def test_each_leg_gets_one_leg_of_the_same_amount_on_the_same_account_in_the_other_direction(legs):
    reversed_legs = negate(legs)

    assert [(r.entity_id, r.amount, r.currency) for r in reversed_legs] == [
        (o.entity_id, o.amount, o.currency) for o in legs
    ]
    assert [r.signed_amount for r in reversed_legs] == [-o.signed_amount for o in legs]
    for account in {o.entity_id for o in legs}:
        mine = [e for e in [*legs, *reversed_legs] if e.entity_id == account]
        assert Totals.of(mine).balance == 0


def test_a_transfer_reversal_debits_the_payee_and_credits_the_payer_keeping_the_counterparties():
    reversed_legs = negate(TRANSFER)

    assert [(type(e), e.entity_id, e.counterparty) for e in reversed_legs] == [
        (Credited, "alice", "bob"),
        (Debited, "bob", "alice"),
    ]


def test_reversal_legs_share_the_new_transaction_id_and_name_the_original():
    reversed_legs = negate(TRANSFER, description="entered twice", metadata={"ticket": "T-1"})

    for event in reversed_legs:
        assert event.transaction_id == REVERSAL
        assert event.transaction_type == "reversal"
        assert event.reverses == ORIGINAL
        assert event.region == "eu-west-1" and event.idempotency_key == "undo"
        assert event.description == "entered twice" and event.metadata == {"ticket": "T-1"}
    assert [e.event_id for e in reversed_legs] == ["01ARZ3NDEKTSV4RRFFQ69G5R01", "01ARZ3NDEKTSV4RRFFQ69G5R02"]
    assert reversed_legs[0].recorded_at.endswith("Z")


def test_without_a_description_a_reversal_says_what_it_reverses_and_does_not_copy_the_originals_metadata():
    (event,) = negate(CREDIT)

    assert event.description == f"reversal of {ORIGINAL}"
    assert event.metadata == {}


# -- what cannot be reversed ------------------------------------------------------------


def test_an_account_opening_is_not_reversible():
    with pytest.raises(errors.NotReversible) as refused:
        check_reversible(ORIGINAL, OPENING)

    assert refused.value.extra == {"transaction_id": ORIGINAL}


def test_a_reversal_is_not_reversible_and_the_refusal_names_what_it_reversed():
    with pytest.raises(errors.NotReversible) as refused:
        check_reversible(REVERSAL, list(negate(CREDIT)))

    assert refused.value.extra == {"transaction_id": REVERSAL, "reverses": ORIGINAL}


@pytest.mark.parametrize("legs", [CREDIT, DEBIT, TRANSFER], ids=["credit", "debit", "transfer"])
def test_movements_are_reversible(legs):
    check_reversible(ORIGINAL, legs)


# -- half-indexed transactions ------------------------------------------------------------


@pytest.mark.parametrize(
    "legs, complete",
    [
        (CREDIT, True),
        (DEBIT, True),
        (TRANSFER, True),
        (TRANSFER[:1], False),
        (TRANSFER[1:], False),
        ([TRANSFER[0], TRANSFER[0]], False),
    ],
    ids=["credit", "debit", "transfer", "transfer debit only", "transfer credit only", "two debits"],
)
def test_a_transfer_is_complete_only_with_its_debit_and_its_credit(legs, complete):
    assert legs_complete(legs) is complete


class IndexStore:
    """The ledger's view of the transaction index: it shows `visible[i]` on the i-th read, then the last."""

    def __init__(self, *visible: list[Event]) -> None:
        self.visible = list(visible)
        self.reads = 0
        self.commits: list[Commit] = []

    def transaction_events(self, transaction_id: str) -> list[Event]:
        shown = self.visible[min(self.reads, len(self.visible) - 1)]
        self.reads += 1
        return shown

    def commit(self, commit: Commit) -> None:
        self.commits.append(commit)


def ledger_over(store: IndexStore, sleeps: list[float]) -> Ledger:
    return Ledger(store, REGION, sleep=sleeps.append)  # type: ignore[arg-type]


def test_a_transfer_seen_half_indexed_is_read_again_until_both_legs_are_in():
    store = IndexStore(TRANSFER[:1], TRANSFER[:1], TRANSFER)
    sleeps: list[float] = []

    outcome = ledger_over(store, sleeps).reverse(Caller("tests", "undo"), ORIGINAL, ReversalRequest())

    assert store.reads == 3 and len(sleeps) == 2
    (commit,) = store.commits
    assert [(type(e), e.entity_id) for e in commit.events] == [(Credited, "alice"), (Debited, "bob")]
    assert json.loads(outcome.body)["reverses"] == ORIGINAL


def test_a_transfer_that_stays_half_indexed_is_refused_as_retryable_and_nothing_is_committed():
    store = IndexStore(TRANSFER[1:])

    with pytest.raises(errors.StoreUnavailable):
        ledger_over(store, []).reverse(Caller("tests", "undo"), ORIGINAL, ReversalRequest())

    assert store.reads == RetryPolicy().attempts
    assert store.commits == []


def test_the_reversal_commit_carries_the_marker_and_a_guard_per_leg():
    store = IndexStore(TRANSFER)

    ledger_over(store, []).reverse(Caller("tests", "undo"), ORIGINAL, ReversalRequest())

    (commit,) = store.commits
    reversal_id = commit.events[0].transaction_id
    assert commit.reversal == ReversalMarker(ORIGINAL, reversal_id, commit.events[0].recorded_at)
    assert [(g.account_id, g.delta, g.event_id) for g in commit.guards] == [
        (e.entity_id, e.signed_amount, e.event_id) for e in commit.events
    ]
    assert [g.delta for g in commit.guards] == [250, -250]
    # The credit leg may be recorded as event-only if its account lives in another home; the debit may not.
    assert [g.remote_ok for g in commit.guards] == [True, False]
    assert commit.idempotency is not None and commit.idempotency.idempotency_id == "key#tests#undo"


# -- the once-only marker in the store ------------------------------------------------------


class FakeClient:
    """Records what is sent; answers a transaction with a scripted refusal."""

    def __init__(self, refusal: ClientError | None = None) -> None:
        self.refusal = refusal
        self.transactions: list[dict[str, Any]] = []

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        self.transactions.append(request)
        if self.refusal is not None:
            raise self.refusal
        return {}


RECORD = IdempotencyRecord(
    idempotency_id="key#tests#undo",
    request_hash="f" * 64,
    view="transaction",
    event_keys=(),
    resource="/transactions/x",
    recorded_at="2026-11-22T10:00:00.000Z",
    expires_at=1_795_000_000,
)
MARKER = ReversalMarker(ORIGINAL, REVERSAL, "2026-11-22T10:00:00.000Z")
# Items: [idempotency record, marker, credit alice, debit bob, alice guard, bob guard].
REVERSAL_EVENTS = negate(TRANSFER)
REVERSAL_COMMIT = Commit(
    events=REVERSAL_EVENTS,
    idempotency=RECORD,
    guards=tuple(BalanceGuard(e.entity_id, "EUR", e.signed_amount, e.event_id) for e in REVERSAL_EVENTS),
    reversal=MARKER,
    now_epoch=1_794_000_000,
    token="01ARZ3NDEKTSV4RRFFQ69G5R01",
)
OK = {"Code": "None"}


def cancelled(*reasons: dict[str, Any]) -> ClientError:
    return ClientError(
        {"Error": {"Code": "TransactionCanceledException", "Message": "cancelled"}, "CancellationReasons": list(reasons)},
        "TransactWriteItems",
    )


def failed(item: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"Code": "ConditionalCheckFailed", **({"Item": item} if item is not None else {})}


def test_the_marker_is_a_put_if_absent_without_expiry_in_the_same_transaction_before_the_guards():
    client = FakeClient()

    EventStore(client, TABLES, REGION).commit(REVERSAL_COMMIT)

    (request,) = client.transactions
    items = [next(iter(item.values())) for item in request["TransactItems"]]
    marker = items[1]
    assert marker["TableName"] == TABLES.idempotency
    assert marker["Item"]["idempotency_id"] == {"S": f"reversal#{ORIGINAL}"}
    assert marker["Item"]["reversal_transaction_id"] == {"S": REVERSAL}
    assert IDEMPOTENCY_TTL_ATTRIBUTE not in marker["Item"]
    assert marker["ConditionExpression"] == "attribute_not_exists(#key)"
    assert marker["ReturnValuesOnConditionCheckFailure"] == "ALL_OLD"
    assert [item["TableName"] for item in items] == [TABLES.idempotency] * 2 + [TABLES.events] * 2 + [TABLES.accounts] * 2


def test_an_existing_marker_is_already_reversed_naming_the_reversal_and_outranks_the_overdraft_guard():
    existing = serialize({"idempotency_id": f"reversal#{ORIGINAL}", "reversal_transaction_id": "01ARZ3NDEKTSV4RRFFQ69G5ZZZ"})
    store = EventStore(FakeClient(), TABLES, REGION)

    explained = store._explain(cancelled(OK, failed(existing), OK, OK, OK, failed()), store._plan(REVERSAL_COMMIT))

    assert type(explained) is errors.AlreadyReversed
    assert explained.extra == {"transaction_id": ORIGINAL, "reversed_by": "01ARZ3NDEKTSV4RRFFQ69G5ZZZ"}


def test_a_used_idempotency_key_outranks_an_existing_marker_so_a_retry_replays():
    store = EventStore(FakeClient(), TABLES, REGION)
    record_item = store._plan(REVERSAL_COMMIT).items[0]["Put"]["Item"]

    explained = store._explain(cancelled(failed(record_item), failed(), OK, OK, OK, OK), store._plan(REVERSAL_COMMIT))

    assert isinstance(explained, KeyAlreadyUsed)
    assert explained.record == RECORD
