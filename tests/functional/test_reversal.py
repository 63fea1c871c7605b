"""`POST /transactions/{id}/reversal`: a correction is new events; the original is never touched.

Concurrent reversals race here over moto with transactions taken one at a time (moto
does not isolate them; DynamoDB does), and in tests/integration/test_concurrency.py
on DynamoDB Local.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from composition.root import Root
from ledger import errors
from ledger.commands import MovementRequest, ReversalRequest
from dataclasses import replace

from ledger.config import Settings
from ledger.service import Caller, Outcome
from stream_support import project_everything
from api_client import api_over


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


# -- nothing else changes ---------------------------------------------------------------


def _without_last_event(items: list[str]) -> list[dict]:
    return [{k: v for k, v in json.loads(item).items() if k != "last_event_id"} for item in items]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/accounts/alice/credits", {"amount": 250, "currency": "EUR"}),
        ("/accounts/alice/debits", {"amount": 250, "currency": "EUR"}),
        ("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 250, "currency": "EUR"}),
    ],
    ids=["credit", "debit", "transfer"],
)
def test_after_a_reversal_balances_and_accounts_are_as_before_the_original_and_the_log_only_grew(
    api, funded, settings, table_snapshot, path, body
):
    tables = settings.tables
    balances_before = {a: strong_balance(api, a) for a in ("alice", "bob")}
    before_original = table_snapshot()
    original = record(api, path, body)
    before_reversal = table_snapshot()

    reversal = api.post(f"/transactions/{original['transaction_id']}/reversal", None, key="undo-it")

    after = table_snapshot()
    assert reversal.status == 201, reversal.json
    assert {a: strong_balance(api, a) for a in ("alice", "bob")} == balances_before
    # `available` went out and back: the account items are exactly as before the original,
    # but for the newest event id each holds (history order is commit order).
    assert _without_last_event(after[tables.accounts]) == _without_last_event(before_original[tables.accounts])
    newest = {item["account_id"]["S"]: item["last_event_id"]["S"] for item in map(json.loads, after[tables.accounts])}
    for event in reversal.json["events"]:
        assert newest[event["entity_id"]] == event["event_id"]
    # Every event and record there was is there byte for byte; the reversal only added.
    for table in (tables.events, tables.idempotency):
        assert set(before_reversal[table]) <= set(after[table])
    added_events = [json.loads(item) for item in set(after[tables.events]) - set(before_reversal[tables.events])]
    assert sorted(e["event_id"]["S"] for e in added_events) == [e["event_id"] for e in reversal.json["events"]]
    assert {e["reverses"]["S"] for e in added_events} == {original["transaction_id"]}
    added_records = {
        item["idempotency_id"]["S"]: item
        for item in (json.loads(i) for i in set(after[tables.idempotency]) - set(before_reversal[tables.idempotency]))
    }
    marker_id = f"reversal#{original['transaction_id']}"
    assert set(added_records) == {"key#test-operator#undo-it", marker_id}
    assert added_records[marker_id]["reversal_transaction_id"] == {"S": reversal.json["transaction_id"]}
    assert "expires_at" not in added_records[marker_id]  # once-only for good, not for a day


def test_a_reversal_response_names_both_transactions_and_negates_each_leg(api, funded):
    original = record(api, "/transfers", {"from_account": "alice", "to_account": "bob", "amount": 250, "currency": "EUR"})

    reversal = api.post(
        f"/transactions/{original['transaction_id']}/reversal",
        {"description": "entered twice", "metadata": {"ticket": "T-1"}},
        key="undo-rent",
    )

    assert reversal.status == 201
    assert reversal.headers["location"] == f"/transactions/{reversal.json['transaction_id']}"
    assert list(reversal.json) == ["transaction_id", "type", "reverses", "events"]
    assert [(e["type"], e["entity_id"], e["counterparty"]) for e in reversal.json["events"]] == [
        ("account.credited", "alice", "bob"),
        ("account.debited", "bob", "alice"),
    ]
    for event in reversal.json["events"]:
        assert event["transaction_type"] == "reversal" and event["idempotency_key"] == "undo-rent"
        assert event["metadata"] == {"ticket": "T-1"} and event["amount"] == 250 and event["currency"] == "EUR"


# -- idempotency ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "same_meaning",
    [None, "{}", '{"metadata": {}}', '{"description": null}'],
    ids=["no body", "empty object", "empty metadata", "null description"],
)
def test_an_empty_body_and_its_spelled_out_defaults_replay_the_same_reversal(api, funded, table_snapshot, same_meaning):
    original = record(api, "/accounts/alice/credits", {"amount": 5, "currency": "EUR"})
    path = f"/transactions/{original['transaction_id']}/reversal"
    first = api.post(path, None, key="undo")
    snapshot = table_snapshot()

    again = api.post(path, raw=same_meaning, key="undo") if same_meaning else api.post(path, None, key="undo")

    assert (again.status, again.body) == (201, first.body)
    assert again.headers["idempotent-replayed"] == "true"
    assert table_snapshot() == snapshot


def test_a_key_used_for_another_write_or_another_reversal_is_refused_and_changes_nothing(api, funded, table_snapshot):
    one = record(api, "/accounts/alice/credits", {"amount": 5, "currency": "EUR"})
    two = record(api, "/accounts/alice/credits", {"amount": 6, "currency": "EUR"})
    api.post("/accounts/alice/credits", {"amount": 7, "currency": "EUR"}, key="credit-key")
    assert api.post(f"/transactions/{one['transaction_id']}/reversal", None, key="undo-one").status == 201
    snapshot = table_snapshot()

    reused_for_credit = api.post(f"/transactions/{two['transaction_id']}/reversal", None, key="credit-key")
    reused_for_reversal = api.post(f"/transactions/{two['transaction_id']}/reversal", None, key="undo-one")

    assert (reused_for_credit.status, reused_for_credit.code) == (422, "idempotency_key_reused")
    assert (reused_for_reversal.status, reused_for_reversal.code) == (422, "idempotency_key_reused")
    assert table_snapshot() == snapshot
    assert "reversed_by" not in api.get(f"/transactions/{two['transaction_id']}").json


def test_a_refused_reversal_stores_nothing_so_its_key_works_once_the_funds_are_back(api, funded, table_snapshot):
    credit = record(api, "/accounts/alice/credits", {"amount": 500, "currency": "EUR"})
    record(api, "/accounts/alice/debits", {"amount": 1400, "currency": "EUR"})  # alice holds 100
    refused = api.post(f"/transactions/{credit['transaction_id']}/reversal", None, key="claw-back")
    assert refused.code == "insufficient_funds"

    record(api, "/accounts/alice/credits", {"amount": 400, "currency": "EUR"})
    retried = api.post(f"/transactions/{credit['transaction_id']}/reversal", None, key="claw-back")

    assert retried.status == 201 and "idempotent-replayed" not in retried.headers
    assert strong_balance(api, "alice") == 0


# -- guards -----------------------------------------------------------------------------------


def test_reversing_a_transfer_whose_payee_spent_it_is_refused_for_the_payee(api, open_account, table_snapshot):
    open_account("alice", allow_overdraft=True)
    open_account("carol")
    transfer = record(api, "/transfers", {"from_account": "alice", "to_account": "carol", "amount": 300, "currency": "EUR"})
    record(api, "/accounts/carol/debits", {"amount": 250, "currency": "EUR"})
    snapshot = table_snapshot()

    response = api.post(f"/transactions/{transfer['transaction_id']}/reversal", None)

    assert (response.status, response.code) == (422, "insufficient_funds")
    assert response.json["account_id"] == "carol"
    assert table_snapshot() == snapshot
    assert "reversed_by" not in api.get(f"/transactions/{transfer['transaction_id']}").json


def test_a_reversal_taken_outside_the_accounts_home_region_is_421_and_changes_nothing(
    api, funded, settings, dynamodb, table_snapshot
):
    original = record(api, "/accounts/alice/debits", {"amount": 5, "currency": "EUR"})
    snapshot = table_snapshot()
    elsewhere = api_over(Root(replace(settings, region="eu-west-1"), client=dynamodb))

    response = elsewhere.post(f"/transactions/{original['transaction_id']}/reversal", None)

    assert (response.status, response.code) == (421, "wrong_region")
    assert response.json["home_region"] == "us-east-1"
    assert table_snapshot() == snapshot


@pytest.mark.parametrize(
    ("headers", "raw", "status", "code"),
    [
        ({}, "{", 400, "malformed_request"),
        ({}, "null", 400, "malformed_request"),
        ({}, '{"description": "a", "description": "b"}', 400, "malformed_request"),
        ({}, '{"description": 5}', 422, "validation_error"),
        ({}, '{"metadata": {"k": 1}}', 422, "validation_error"),
        ({}, '{"reverses": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}', 422, "validation_error"),
        ({}, '{"description": "' + "x" * 17000 + '"}', 413, "payload_too_large"),
        ({"Content-Type": "text/plain"}, "{}", 415, "unsupported_media_type"),
    ],
    ids=[
        "not json", "null", "duplicate key", "description not a string",
        "metadata value", "unknown field", "too large", "text/plain",
    ],
)
def test_a_bad_reversal_body_is_refused_and_changes_nothing(api, funded, table_snapshot, headers, raw, status, code):
    original = record(api, "/accounts/alice/credits", {"amount": 5, "currency": "EUR"})
    snapshot = table_snapshot()

    response = api.post(
        f"/transactions/{original['transaction_id']}/reversal",
        raw=raw,
        content_type=headers.get("Content-Type", "application/json"),
    )

    assert (response.status, response.code) == (status, code), response.json
    assert response.headers["content-type"] == "application/problem+json"
    assert table_snapshot() == snapshot


@pytest.mark.parametrize(
    "transaction_id",
    [
        "01arz3ndektsv4rrffq69g5fav", "01ARZ3NDEKTSV4RRFFQ69G5FA", "81ARZ3NDEKTSV4RRFFQ69G5FAV",
        "..", "01ARZ3NDEKTSV4RRFFQ69G5FAU%00", "a%2Fb",
    ],
    ids=["lower case", "25 chars", "past 2^48 ms", "dots", "nul", "slash"],
)
def test_a_malformed_transaction_id_is_400_and_changes_nothing(api, funded, table_snapshot, transaction_id):
    snapshot = table_snapshot()

    response = api.post(f"/transactions/{transaction_id}/reversal", None)

    assert (response.status, response.code) == (400, "invalid_identifier"), response.json
    assert table_snapshot() == snapshot


# -- concurrency ----------------------------------------------------------------------------


def test_a_caller_whose_scope_and_key_spell_a_reversal_marker_cannot_block_the_reversal(api, funded, ledger):
    """Caller records and once-only markers share a table; their ids must never meet."""
    original = record(api, "/accounts/alice/debits", {"amount": 100, "currency": "EUR"})
    lookalike = Caller("reversal", original["transaction_id"])  # a principal named "reversal"
    assert ledger.credit(lookalike, "bob", MovementRequest(amount=5, currency="EUR")).replayed is False

    reversal = api.post(f"/transactions/{original['transaction_id']}/reversal", None)

    assert reversal.status == 201, reversal.json
    assert strong_balance(api, "alice") == 1000


class TransactionsInTurn:
    """moto's client with DynamoDB's isolation, and a starting gate.

    moto checks a transaction's conditions and applies its items without a lock (and
    rolls back by restoring a copy of the whole table), so concurrent transactions on
    it interleave in ways DynamoDB never allows. Here transactions run one at a time,
    as DynamoDB serialises conflicting ones. The gate holds every transaction until
    `racers` of them have been built: each racer has read the original and found it
    not yet reversed, so only the commit can decide.
    """

    def __init__(self, client: Any, racers: int) -> None:
        self._client = client
        self._racers = racers
        self._arrived = 0
        self._count = threading.Lock()
        self._all_arrived = threading.Event()
        self._one_at_a_time = threading.Lock()

    def transact_write_items(self, **request: Any) -> Any:
        with self._count:
            self._arrived += 1
            if self._arrived >= self._racers:
                self._all_arrived.set()
        assert self._all_arrived.wait(timeout=30), "not every racer reached its commit"
        with self._one_at_a_time:
            return self._client.transact_write_items(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


RACERS = 8


def test_concurrent_reversals_with_different_keys_record_exactly_one(api, funded, settings, dynamodb, table_snapshot):
    # bob may overdraw, so no balance guard stands in the way: only the once-only record can.
    original = record(api, "/transfers", {"from_account": "alice", "to_account": "bob", "amount": 300, "currency": "EUR"})
    racing = Root(settings, client=TransactionsInTurn(dynamodb, RACERS)).ledger
    before = table_snapshot()

    def reverse(index: int) -> object:
        try:
            return racing.reverse(Caller("anonymous", f"racer-{index}"), original["transaction_id"], ReversalRequest())
        except errors.LedgerError as refused:
            return refused

    with ThreadPoolExecutor(RACERS) as pool:
        results = list(pool.map(reverse, range(RACERS)))

    recorded = [r for r in results if isinstance(r, Outcome)]
    refused = [r for r in results if isinstance(r, errors.LedgerError)]
    assert len(recorded) == 1, results
    winner = json.loads(recorded[0].body)["transaction_id"]
    assert [type(r) for r in refused] == [errors.AlreadyReversed] * (RACERS - 1)
    assert {r.extra["reversed_by"] for r in refused} == {winner}
    assert api.get(f"/transactions/{original['transaction_id']}").json["reversed_by"] == winner
    assert (strong_balance(api, "alice"), strong_balance(api, "bob")) == (1000, 0)
    after = table_snapshot()
    events = settings.tables.events
    assert len(after[events]) == len(before[events]) + 2  # the winner's two legs, nothing else
    assert len(after[settings.tables.idempotency]) == len(before[settings.tables.idempotency]) + 2  # its record + marker


# -- the projector ---------------------------------------------------------------------------


def test_the_projector_folds_reversal_legs_like_any_credit_or_debit(projected_api, stage, moto_dynamodb):
    api = projected_api
    assert api.post("/accounts", {"account_id": "alice", "currency": "EUR"}).status == 201
    assert api.post("/accounts", {"account_id": "bob", "currency": "EUR"}).status == 201
    record(api, "/accounts/alice/credits", {"amount": 1000, "currency": "EUR"})
    transfer = record(api, "/transfers", {"from_account": "alice", "to_account": "bob", "amount": 300, "currency": "EUR"})
    reversal = api.post(f"/transactions/{transfer['transaction_id']}/reversal", None)
    assert reversal.status == 201

    project_everything(stage, moto_dynamodb)
    project_everything(stage, moto_dynamodb)  # a redelivery of the whole stream counts nothing twice

    figures = {
        a: {k: api.get(f"/accounts/{a}/balance").json[k] for k in ("balance", "credits", "debits", "event_count")}
        for a in ("alice", "bob")
    }
    assert figures == {
        "alice": {"balance": 1000, "credits": 1300, "debits": 300, "event_count": 4},
        "bob": {"balance": 0, "credits": 300, "debits": 300, "event_count": 3},
    }
    for account in ("alice", "bob"):
        assert figures[account]["balance"] == strong_balance(api, account)
