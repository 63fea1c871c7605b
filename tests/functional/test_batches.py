"""POST /batches: up to 100 operations under one Idempotency-Key, atomic (all or none) or independent.

A hot account's operations in an atomic batch commit with one guarded update of
its item; the guard holds for every prefix of them, so a no-overdraft account never
goes below zero at any of its events.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from api_client import token
from ledger.fold import Totals


def credit(account: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {"type": "credit", "account_id": account, "amount": amount, "currency": "EUR", **extra}


def debit(account: str, amount: int) -> dict[str, Any]:
    return {"type": "debit", "account_id": account, "amount": amount, "currency": "EUR"}


def transfer(source: str, target: str, amount: int) -> dict[str, Any]:
    return {"type": "transfer", "from_account": source, "to_account": target, "amount": amount, "currency": "EUR"}


@pytest.fixture
def accounts(open_account):
    open_account("hot")  # no overdraft
    open_account("bob")
    open_account("spender", allow_overdraft=True)


def balance(ledger, account: str) -> int:
    """The fold of the account's log: what every balance must equal."""
    return Totals.of(ledger.full_history(account)).balance


def transactions(dynamodb) -> list[dict[str, Any]]:
    """Every TransactWriteItems the app sends from now on."""
    seen: list[dict[str, Any]] = []
    dynamodb.meta.events.register("before-parameter-build.dynamodb.TransactWriteItems", lambda params, **_: seen.append(params))
    return seen


# -- atomic -------------------------------------------------------------------------------------------


def test_an_atomic_batch_records_every_operation_in_one_transaction_and_answers_each(api, accounts, ledger, dynamodb):
    sent = transactions(dynamodb)
    operations = [credit("hot", 100), debit("spender", 30), transfer("hot", "bob", 40), credit("hot", 5)]

    response = api.post("/batches", {"mode": "atomic", "operations": operations}, key="atomic-1")

    assert response.status == 201, response.json
    results = response.json["results"]
    assert [(r["status"], r["type"]) for r in results] == [(201, "credit"), (201, "debit"), (201, "transfer"), (201, "credit")]
    assert len(sent) == 1  # one round trip for the whole batch
    for result in results:  # each operation is a transaction of its own, readable as one
        read = api.get(f"/transactions/{result['transaction_id']}")
        assert read.status == 200 and [e["event_id"] for e in read.json["events"]] == [e["event_id"] for e in result["events"]]
    assert (balance(ledger, "hot"), balance(ledger, "bob"), balance(ledger, "spender")) == (65, 40, -30)


def test_a_hot_account_s_operations_share_one_guarded_update_and_keep_their_order(api, accounts, ledger, dynamodb, settings):
    sent = transactions(dynamodb)

    response = api.post("/batches", {"mode": "atomic", "operations": [credit("hot", n + 1) for n in range(25)]}, key="hot-25")

    assert response.status == 201
    (request,) = sent
    updates = [item["Update"] for item in request["TransactItems"] if "Update" in item]
    assert [u["Key"]["account_id"]["S"] for u in updates] == ["hot"]
    assert updates[0]["ExpressionAttributeValues"][":delta"] == {"N": str(sum(range(1, 26)))}
    assert len(request["TransactItems"]) == 1 + 25 + 1  # the key's record, 25 events, one guard
    history = [e.event_id for e in ledger.full_history("hot")][1:]
    assert history == [r["events"][0]["event_id"] for r in response.json["results"]]  # id order is the order asked
    assert ledger.get_account("hot").last_event_id == history[-1]
    assert balance(ledger, "hot") == sum(range(1, 26))


@pytest.mark.parametrize(
    "operations, index",
    [
        ([credit("bob", 1), debit("hot", 1)], 1),
        ([debit("hot", 100), credit("hot", 100)], 0),  # the sum is zero, but the first event would take it below zero
        ([credit("hot", 50), debit("hot", 60), credit("hot", 100)], 1),
        ([transfer("hot", "bob", 1)], 0),
    ],
    ids=["a lone debit", "a debit before its covering credit", "a prefix below zero", "a transfer out"],
)
def test_an_atomic_batch_that_would_take_an_account_below_zero_at_any_event_records_nothing(
    api, accounts, table_snapshot, operations, index
):
    before = table_snapshot()

    response = api.post("/batches", {"mode": "atomic", "operations": operations}, key="overdraw")

    assert (response.status, response.code) == (422, "insufficient_funds")
    assert index in response.json["operations"]
    assert table_snapshot() == before


def test_a_credit_before_a_debit_of_the_same_account_covers_it(api, accounts, ledger):
    response = api.post("/batches", {"mode": "atomic", "operations": [credit("hot", 100), debit("hot", 100)]}, key="covered")

    assert response.status == 201
    assert balance(ledger, "hot") == 0 and ledger.get_account("hot").available == 0


@pytest.mark.parametrize(
    "operation, status, code",
    [
        (credit("nobody", 1), 404, "account_not_found"),
        (credit("bob", 1, currency="USD"), 422, "currency_mismatch"),
        (transfer("bob", "bob", 1), 422, "same_account"),
    ],
    ids=["missing account", "currency", "same account"],
)
def test_one_refused_operation_refuses_the_whole_atomic_batch(api, accounts, table_snapshot, operation, status, code):
    before = table_snapshot()

    response = api.post("/batches", {"mode": "atomic", "operations": [credit("hot", 1), operation]}, key="one-bad")

    assert (response.status, response.code) == (status, code)
    assert response.headers["content-type"] == "application/problem+json"
    assert table_snapshot() == before


def test_an_atomic_batch_larger_than_one_transaction_is_refused_and_says_the_limit(api, accounts, table_snapshot):
    before = table_snapshot()
    operations = [transfer("spender", "bob", 1) for _ in range(49)]  # 98 events + 2 accounts + the record: 101 items

    response = api.post("/batches", {"mode": "atomic", "operations": operations}, key="too-many")

    assert (response.status, response.code) == (422, "batch_too_large")
    assert (response.json["items"], response.json["limit"]) == (101, 100)
    assert table_snapshot() == before
    fits = api.post("/batches", {"mode": "atomic", "operations": operations[:48]}, key="fits")  # 96 + 2 + 1
    assert fits.status == 201


def test_an_atomic_batch_retried_replays_the_same_bytes_and_records_nothing(api, accounts, table_snapshot):
    body = {"mode": "atomic", "operations": [credit("hot", 10, metadata={"ref": "r1"}), transfer("hot", "bob", 3)]}
    first = api.post("/batches", body, key="again")
    after = table_snapshot()

    replay = api.post("/batches", body, key="again")
    other = api.post("/batches", {**body, "operations": body["operations"][:1]}, key="again")

    assert (replay.status, replay.body, replay.headers["idempotent-replayed"]) == (201, first.body, "true")
    assert (other.status, other.code) == (422, "idempotency_key_reused")
    assert table_snapshot() == after


# -- independent ----------------------------------------------------------------------------------------


def test_an_independent_batch_answers_each_operation_on_its_own(api, accounts, ledger):
    operations = [credit("hot", 10), debit("hot", 50), transfer("hot", "bob", 4), credit("nobody", 1)]

    response = api.post("/batches", {"mode": "independent", "operations": operations}, key="each")

    assert response.status == 200
    statuses = [(r["status"], r.get("problem", {}).get("code")) for r in response.json["results"]]
    assert statuses == [(201, None), (422, "insufficient_funds"), (201, None), (404, "account_not_found")]
    assert (balance(ledger, "hot"), balance(ledger, "bob")) == (6, 4)


def test_an_independent_batch_retried_replays_what_it_recorded_and_records_nothing_twice(api, accounts, ledger):
    body = {"mode": "independent", "operations": [credit("bob", 7), debit("hot", 5), credit("hot", 5)]}
    first = api.post("/batches", body, key="each-again")

    again = api.post("/batches", body, key="each-again")

    assert [r["status"] for r in first.json["results"]] == [201, 422, 201]
    results = again.json["results"]
    # Recorded operations replay; the refused one was not recorded and is tried again (now covered by the credit).
    assert [r.get("replayed") for r in results] == [True, None, True]
    assert results[0]["transaction_id"] == first.json["results"][0]["transaction_id"]
    assert results[1]["status"] == 201
    assert (balance(ledger, "bob"), balance(ledger, "hot")) == (7, 0)


def test_an_independent_batch_key_reused_for_another_batch_is_refused_before_anything_is_written(api, accounts, table_snapshot):
    api.post("/batches", {"mode": "independent", "operations": [credit("bob", 7)]}, key="each-once")
    before = table_snapshot()

    response = api.post("/batches", {"mode": "independent", "operations": [credit("hot", 1), credit("bob", 8)]}, key="each-once")

    assert (response.status, response.code) == (422, "idempotency_key_reused")
    assert table_snapshot() == before


def test_an_independent_operation_s_key_is_not_a_single_write_s(api, accounts, ledger):
    """`k#0` sent alone and operation 0 of batch `k` are two keys."""
    alone = api.post("/accounts/bob/credits", {"amount": 1, "currency": "EUR"}, key="k#0")
    batch = api.post("/batches", {"mode": "independent", "operations": [credit("bob", 2)]}, key="k")

    assert (alone.status, batch.json["results"][0]["status"]) == (201, 201)
    assert balance(ledger, "bob") == 3


# -- what is refused before anything is tried -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"mode": "atomic", "operations": []},
        {"mode": "atomic", "operations": [credit("hot", 1)] * 101},
        {"mode": "sometimes", "operations": [credit("hot", 1)]},
        {"mode": "atomic", "operations": [{"type": "refund", "account_id": "hot", "amount": 1, "currency": "EUR"}]},
        {"mode": "atomic", "operations": [{**credit("hot", 1), "from_account": "bob"}]},
        {"mode": "atomic", "operations": [credit("hot", 0)]},
        {"mode": "atomic", "operations": [credit("hot", 1)], "extra": True},
    ],
    ids=["empty", "101 operations", "unknown mode", "unknown type", "unknown field", "zero amount", "unknown member"],
)
def test_a_malformed_batch_is_refused_with_422_and_writes_nothing(api, accounts, table_snapshot, body):
    before = table_snapshot()

    response = api.post("/batches", body, key="malformed")

    assert (response.status, response.code) == (422, "validation_error")
    assert table_snapshot() == before


@pytest.mark.parametrize("mode", ["atomic", "independent"])
def test_a_batch_touching_an_account_outside_the_token_is_refused_whole_as_missing(api, accounts, table_snapshot, mode):
    open_as = api.as_(token("acme-writer", ("writer",), ("hot", "bob")))
    api.post("/accounts", {"account_id": "globex:vault", "currency": "EUR"})
    before = table_snapshot()

    response = open_as.post("/batches", {"mode": mode, "operations": [credit("hot", 1), transfer("globex:vault", "bob", 1)]}, key="reach")

    assert (response.status, response.code) == (404, "account_not_found")
    assert table_snapshot() == before


def test_a_reader_may_not_send_a_batch(api, accounts):
    response = api.as_(token("auditor", ("reader", "auditor"))).post("/batches", {"mode": "atomic", "operations": [credit("hot", 1)]})

    assert (response.status, response.code) == (403, "forbidden")


def test_the_answer_of_an_atomic_batch_is_its_events(api, accounts, ledger):
    response = api.post("/batches", {"mode": "atomic", "operations": [credit("hot", 3), transfer("hot", "bob", 2)]}, key="shape")

    recorded = {e["event_id"]: e for r in response.json["results"] for e in r["events"]}
    stored = {e.event_id: json.loads(e.model_dump_json(exclude_none=True)) for a in ("hot", "bob") for e in ledger.full_history(a)}
    assert all(stored[event_id] == event for event_id, event in recorded.items())


def test_a_batch_s_operations_under_one_key_are_not_duplicates_to_reconcile(api, accounts, root):
    """Reconcile names a key recorded as two transactions; a batch's operations are one write each."""
    from failover.reconcile import find

    operations = [credit("hot", 10), credit("hot", 10), transfer("hot", "bob", 1)]
    assert api.post("/batches", {"mode": "atomic", "operations": operations}, key="many").status == 201
    assert api.post("/batches", {"mode": "independent", "operations": operations}, key="each-many").status == 200

    assert find(root) == []


def test_a_batch_without_a_mode_is_atomic(api, accounts, table_snapshot):
    before = table_snapshot()

    refused = api.post("/batches", {"operations": [credit("bob", 1), debit("hot", 1)]}, key="no-mode")

    assert (refused.status, refused.code) == (422, "insufficient_funds")
    assert table_snapshot() == before
    recorded = api.post("/batches", {"operations": [credit("bob", 1)]}, key="no-mode-2")
    assert (recorded.status, recorded.json["mode"]) == (201, "atomic")
