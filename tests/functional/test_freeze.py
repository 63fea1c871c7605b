"""Operators freeze and unfreeze accounts: an event in the log, and no movement while frozen."""

from __future__ import annotations

import pytest

from api_client import token


@pytest.fixture
def accounts(api, open_account):
    open_account("alice", allow_overdraft=True)
    open_account("bob")
    assert api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}).status == 201
    assert api.post("/accounts/bob/credits", {"amount": 10, "currency": "EUR"}).status == 201


def test_a_frozen_account_takes_no_movement_until_unfrozen(api, accounts, table_snapshot):
    frozen = api.post("/accounts/alice/freeze", {"description": "fraud review"}, key="freeze-1")
    assert frozen.status == 201, frozen.json
    assert frozen.headers["location"] == "/accounts/alice"
    [event] = frozen.json["events"]
    assert (event["type"], event["status"], event["caller"], frozen.json["type"]) == ("account.status_changed", "frozen", "test-operator", "freeze")
    assert api.get("/accounts/alice").json["status"] == "frozen"

    before = table_snapshot()
    refused = [
        api.post("/accounts/alice/credits", {"amount": 1, "currency": "EUR"}),
        api.post("/accounts/alice/debits", {"amount": 1, "currency": "EUR"}),
        api.post("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 1, "currency": "EUR"}),
        api.post("/transfers", {"from_account": "bob", "to_account": "alice", "amount": 1, "currency": "EUR"}),
        api.post("/accounts/alice/freeze", {}),
    ]
    assert [(r.status, r.code) for r in refused] == [(409, "account_not_open")] * 5
    assert table_snapshot() == before

    again = api.post("/accounts/alice/freeze", {"description": "fraud review"}, key="freeze-1")
    assert again.headers.get("idempotent-replayed") == "true" and again.body == frozen.body

    assert api.post("/accounts/alice/unfreeze", {}).status == 201
    assert api.get("/accounts/alice").json["status"] == "open"
    assert api.post("/accounts/alice/debits", {"amount": 1, "currency": "EUR"}).status == 201
    strong = api.get("/accounts/alice/balance?consistency=strong").json
    assert (strong["balance"], strong["event_count"]) == (99, 5)  # opened, credited, frozen, unfrozen, debited
    history = [e["type"] for e in api.get("/accounts/alice/events").json["events"]]
    assert history == ["account.opened", "account.credited", "account.status_changed", "account.status_changed", "account.debited"]


def test_unfreezing_an_open_account_is_refused(api, accounts):
    response = api.post("/accounts/alice/unfreeze")
    assert (response.status, response.code) == (409, "account_not_frozen")


def test_only_an_operator_of_the_account_freezes_it(api, accounts):
    writer = api.as_(token("app", ("writer", "reader", "auditor"), ("*",)))
    other_tenant = api.as_(token("ops", ("operator",), ("acme:*",)))
    assert (writer.post("/accounts/alice/freeze").status, writer.post("/accounts/alice/freeze").code) == (403, "forbidden")
    assert other_tenant.post("/accounts/alice/freeze").code == "account_not_found"
    assert api.post("/accounts/nobody/freeze").code == "account_not_found"


def test_the_projector_counts_a_status_change_as_an_event_of_no_amount(stage, moto_dynamodb):
    import boto3

    from composition.root import Root
    from ledger.commands import MovementRequest, OpenAccountRequest, StatusChangeRequest
    from ledger.service import Caller
    from stream_support import REGION, stream_records

    root = Root(stage.settings, client=moto_dynamodb)
    root.ledger.open_account(Caller("ops", "o"), OpenAccountRequest(account_id="cy", currency="EUR"))
    root.ledger.credit(Caller("app", "c"), "cy", MovementRequest(amount=7, currency="EUR"))
    root.ledger.freeze(Caller("ops", "f"), "cy", StatusChangeRequest(description="review"))
    records = stream_records(moto_dynamodb, boto3.client("dynamodbstreams", region_name=REGION), stage.settings)
    assert root.stream_handler({"Records": records}, None) == {"batchItemFailures": []}

    view = root.balances.balance("cy", "eventual", None)
    fold = root.balances.balance("cy", "strong", None)
    assert (view.balance, view.event_count) == (fold.balance, fold.event_count) == (7, 3)
