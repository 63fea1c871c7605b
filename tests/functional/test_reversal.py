"""`POST /transactions/{id}/reversal`: a correction is new events; the original is never touched.

Concurrent reversals race in tests/integration/test_concurrency.py, on DynamoDB Local:
moto does not isolate concurrent transactions.
"""

from __future__ import annotations

import pytest


def strong_balance(api, account: str) -> int:
    return api.get(f"/accounts/{account}/balance", {"consistency": "strong"}).json["balance"]


@pytest.fixture
def funded(api, open_account):
    """alice (no overdraft) holds 1000, bob (overdraft allowed) 0."""
    open_account("alice")
    open_account("bob", allow_overdraft=True)
    assert api.post("/accounts/alice/credits", {"amount": 1000, "currency": "EUR"}).status == 201


def record(api, path: str, body: dict) -> dict:
    response = api.post(path, body)
    assert response.status == 201, response.json
    return response.json


@pytest.mark.parametrize(
    ("path", "body", "moved"),
    [
        ("/accounts/alice/credits", {"amount": 250, "currency": "EUR"}, {"alice": 250}),
        ("/accounts/alice/debits", {"amount": 250, "currency": "EUR"}, {"alice": -250}),
        ("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 250, "currency": "EUR"}, {"alice": -250, "bob": 250}),
    ],
)
def test_a_reversal_negates_every_leg_and_links_both_ways(api, funded, table_snapshot, path, body, moved):
    original = record(api, path, body)
    before = {a: strong_balance(api, a) for a in ("alice", "bob")}
    original_items = table_snapshot()

    reversal = api.post(f"/transactions/{original['transaction_id']}/reversal", {"description": "entered twice"})

    assert reversal.status == 201, reversal.json
    assert reversal.json["type"] == "reversal" and reversal.json["reverses"] == original["transaction_id"]
    legs = reversal.json["events"]
    assert len(legs) == len(original["events"])
    for leg, source in zip(legs, original["events"]):
        assert leg["entity_id"] == source["entity_id"] and leg["amount"] == source["amount"]
        assert leg["type"] != source["type"] and leg["reverses"] == original["transaction_id"]
        assert leg["transaction_id"] == reversal.json["transaction_id"] and leg["description"] == "entered twice"
    after = {a: strong_balance(api, a) for a in ("alice", "bob")}
    assert {a: after[a] - before[a] for a in after} == {a: -moved.get(a, 0) for a in after}
    # The original events are exactly as they were; the reversal only added.
    events_table = next(t for t in original_items if t.endswith("-ledger-events"))
    assert set(original_items[events_table]) <= set(table_snapshot()[events_table])
    shown = api.get(f"/transactions/{original['transaction_id']}").json
    assert shown["reversed_by"] == reversal.json["transaction_id"]
    assert shown["events"] == original["events"]
    assert api.get(f"/transactions/{reversal.json['transaction_id']}").json["reverses"] == original["transaction_id"]


def test_a_retry_replays_and_a_second_reversal_is_refused_changing_nothing(api, funded, table_snapshot):
    original = record(api, "/accounts/alice/debits", {"amount": 100, "currency": "EUR"})
    path = f"/transactions/{original['transaction_id']}/reversal"
    first = api.post(path, None, key="fix-1")
    snapshot = table_snapshot()

    again = api.post(path, None, key="fix-1")
    other = api.post(path, {}, key="fix-2")

    assert again.status == 201 and again.body == first.body and again.headers["idempotent-replayed"] == "true"
    assert (other.status, other.code) == (409, "already_reversed")
    assert other.json["reversed_by"] == first.json["transaction_id"]
    assert table_snapshot() == snapshot
    assert api.post(path, {"description": "other"}, key="fix-1").code == "idempotency_key_reused"


def test_reversing_a_credit_already_spent_is_refused_by_the_overdraft_rule(api, funded, table_snapshot):
    credit = record(api, "/accounts/alice/credits", {"amount": 500, "currency": "EUR"})
    record(api, "/accounts/alice/debits", {"amount": 1400, "currency": "EUR"})  # alice now holds 100
    snapshot = table_snapshot()

    response = api.post(f"/transactions/{credit['transaction_id']}/reversal", {})

    assert (response.status, response.code) == (422, "insufficient_funds")
    assert table_snapshot() == snapshot
    assert strong_balance(api, "alice") == 100


def test_what_cannot_be_reversed_is_refused_and_changes_nothing(api, funded, table_snapshot):
    opening = api.get("/accounts/alice/events", {"limit": 1}).json["events"][0]
    debit = record(api, "/accounts/alice/debits", {"amount": 1, "currency": "EUR"})
    reversal = api.post(f"/transactions/{debit['transaction_id']}/reversal", {}).json
    snapshot = table_snapshot()
    cases = [
        (f"/transactions/{opening['transaction_id']}/reversal", {}, 422, "not_reversible"),
        (f"/transactions/{reversal['transaction_id']}/reversal", {}, 422, "not_reversible"),
        ("/transactions/01ARZ3NDEKTSV4RRFFQ69G5FAV/reversal", {}, 404, "transaction_not_found"),
        ("/transactions/not-a-ulid/reversal", {}, 400, "invalid_identifier"),
        (f"/transactions/{debit['transaction_id']}/reversal", {"amount": 5}, 422, "validation_error"),
        (f"/transactions/{debit['transaction_id']}/reversal", {"description": ""}, 422, "validation_error"),
        (f"/transactions/{debit['transaction_id']}/reversal", [], 400, "malformed_request"),
    ]
    for path, body, status, code in cases:
        response = api.post(path, body)
        assert (response.status, response.code) == (status, code), (path, body, response.json)
    assert api.post(f"/transactions/{debit['transaction_id']}/reversal", {}, key=None).code == "idempotency_key_missing"
    assert table_snapshot() == snapshot
