"""Writes through the HTTP surface: accounts, credits, debits, transfers and their guards."""

from __future__ import annotations

import pytest

from composition.root import Root
from dataclasses import replace

from ledger.config import Settings
from ledger.events import parse_event
from ledger.fold import Totals
from api_client import api_over


def history(api, account_id: str) -> list[dict]:
    response = api.get(f"/accounts/{account_id}/events", {"limit": 1000})
    assert response.status == 200, response.json
    return response.json["events"]


def balance(api, account_id: str) -> int:
    return Totals.of(parse_event(event) for event in history(api, account_id)).balance


def credit(api, account_id: str, amount: int, currency: str = "EUR"):
    return api.post(f"/accounts/{account_id}/credits", {"amount": amount, "currency": currency})


def debit(api, account_id: str, amount: int, currency: str = "EUR"):
    return api.post(f"/accounts/{account_id}/debits", {"amount": amount, "currency": currency})


def transfer(api, source: str, target: str, amount: int, currency: str = "EUR"):
    return api.post(
        "/transfers", {"from_account": source, "to_account": target, "amount": amount, "currency": currency}
    )


# -- opening accounts -------------------------------------------------------------


def test_opening_an_account_answers_201_with_its_location_and_public_view(api):
    response = api.post("/accounts", {"account_id": "alice", "currency": "EUR", "metadata": {"owner": "Alice"}})

    assert response.status == 201
    assert response.headers["location"] == "/accounts/alice"
    assert response.headers["content-type"] == "application/json"
    assert "idempotent-replayed" not in response.headers
    body = response.json
    assert body["account_id"] == "alice"
    assert body["currency"] == "EUR"
    assert body["allow_overdraft"] is False
    assert body["status"] == "open"
    assert body["home_region"] == "us-east-1"
    assert body["metadata"] == {"owner": "Alice"}
    assert "available" not in body  # the write-path guard is not part of the public view


def test_a_post_without_content_type_is_read_as_json(api):
    """Chalice takes a missing Content-Type as JSON; the README says so."""
    response = api.post("/accounts", {"account_id": "alice", "currency": "EUR"}, content_type=None)

    assert response.status == 201, response.json
    assert api.get("/accounts/alice").json["currency"] == "EUR"


def test_an_opened_account_reads_back_as_it_was_answered(api):
    opened = api.post("/accounts", {"account_id": "alice", "currency": "GBP", "allow_overdraft": True})

    fetched = api.get("/accounts/alice")

    assert fetched.status == 200
    assert fetched.json == opened.json


def test_opening_an_account_records_an_account_opened_event_in_its_history(api, open_account):
    account = open_account("alice", allow_overdraft=True)

    events = history(api, "alice")

    assert len(events) == 1
    (opened,) = events
    assert opened["type"] == "account.opened"
    assert opened["entity_id"] == "alice"
    assert opened["event_id"] == account["opened_event_id"]
    assert opened["recorded_at"] == account["opened_at"]
    assert opened["currency"] == "EUR"
    assert opened["allow_overdraft"] is True
    assert balance(api, "alice") == 0


def test_reading_an_unknown_account_is_404(api):
    response = api.get("/accounts/nobody")

    assert response.status == 404
    assert response.code == "account_not_found"


def test_opening_an_existing_account_id_again_is_409_and_writes_nothing(api, open_account, table_snapshot):
    open_account("alice")
    before = table_snapshot()

    same = api.post("/accounts", {"account_id": "alice", "currency": "EUR"})
    other_currency = api.post("/accounts", {"account_id": "alice", "currency": "USD", "allow_overdraft": True})

    assert (same.status, same.code) == (409, "account_exists")
    assert (other_currency.status, other_currency.code) == (409, "account_exists")
    assert same.headers["content-type"] == "application/problem+json"
    assert table_snapshot() == before
    assert api.get("/accounts/alice").json["currency"] == "EUR"


# -- credits and debits -----------------------------------------------------------


def test_a_credit_is_recorded_as_one_credited_event_of_its_transaction(api, open_account):
    open_account("alice")

    response = api.post(
        "/accounts/alice/credits",
        {"amount": 1250, "currency": "EUR", "description": "salary", "metadata": {"ref": "2026-11"}},
    )

    assert response.status == 201
    body = response.json
    assert body["type"] == "credit"
    assert response.headers["location"] == f"/transactions/{body['transaction_id']}"
    (event,) = body["events"]
    assert event["type"] == "account.credited"
    assert event["entity_id"] == "alice"
    assert event["amount"] == 1250
    assert event["currency"] == "EUR"
    assert event["transaction_id"] == body["transaction_id"]
    assert event["description"] == "salary"
    assert event["metadata"] == {"ref": "2026-11"}
    assert history(api, "alice")[-1] == event
    assert balance(api, "alice") == 1250


def test_a_debit_is_recorded_with_a_positive_amount_and_lowers_the_balance(api, open_account):
    open_account("alice")
    credit(api, "alice", 500)

    response = debit(api, "alice", 200)

    assert response.status == 201
    (event,) = response.json["events"]
    assert event["type"] == "account.debited"
    assert event["amount"] == 200
    assert response.json["type"] == "debit"
    assert balance(api, "alice") == 300


def test_a_recorded_movement_can_be_read_back_as_its_transaction(api, open_account):
    open_account("alice")
    written = credit(api, "alice", 42)

    response = api.get(written.headers["location"])

    assert response.status == 200
    assert response.json == {"transaction_id": written.json["transaction_id"], "type": "credit", "events": written.json["events"]}


# -- transfers --------------------------------------------------------------------


def test_a_transfer_records_two_legs_that_share_a_transaction_and_sum_to_zero(api, open_account):
    open_account("alice")
    open_account("bob")
    credit(api, "alice", 1000)

    response = transfer(api, "alice", "bob", 300)

    assert response.status == 201
    body = response.json
    assert body["type"] == "transfer"
    legs = [parse_event(event) for event in body["events"]]
    assert len(legs) == 2
    assert {leg.transaction_id for leg in legs} == {body["transaction_id"]}
    assert {leg.entity_id: leg.signed_amount for leg in legs} == {"alice": -300, "bob": 300}
    assert sum(leg.signed_amount for leg in legs) == 0
    assert {leg.entity_id: leg.counterparty for leg in legs} == {"alice": "bob", "bob": "alice"}
    assert all(leg.transaction_type == "transfer" for leg in legs)


def test_get_transaction_returns_both_legs_of_a_transfer(api, open_account):
    open_account("alice")
    open_account("bob")
    credit(api, "alice", 1000)
    written = transfer(api, "alice", "bob", 300)
    transaction_id = written.json["transaction_id"]

    response = api.get(f"/transactions/{transaction_id}")

    assert response.status == 200
    assert response.json["transaction_id"] == transaction_id
    by_id = lambda events: sorted(events, key=lambda event: event["event_id"])  # noqa: E731
    assert by_id(response.json["events"]) == by_id(written.json["events"])


def test_each_leg_of_a_transfer_appears_in_its_own_accounts_history(api, open_account):
    open_account("alice")
    open_account("bob")
    credit(api, "alice", 1000)

    written = transfer(api, "alice", "bob", 300)

    alice_leg, bob_leg = written.json["events"]
    assert history(api, "alice")[-1] == alice_leg
    assert history(api, "bob")[-1] == bob_leg
    assert (balance(api, "alice"), balance(api, "bob")) == (700, 300)


def test_balances_are_the_fold_of_every_movement(api, open_account):
    open_account("alice")
    open_account("bob")

    for response in (credit(api, "alice", 1000), debit(api, "alice", 250), transfer(api, "alice", "bob", 300)):
        assert response.status == 201, response.json

    assert (balance(api, "alice"), balance(api, "bob")) == (450, 300)


# -- overdraft --------------------------------------------------------------------


def test_a_no_overdraft_account_refuses_a_debit_beyond_its_balance_and_writes_nothing(
    api, open_account, table_snapshot
):
    open_account("alice")
    credit(api, "alice", 100)
    before = table_snapshot()

    response = debit(api, "alice", 101)

    assert response.status == 422
    assert response.code == "insufficient_funds"
    assert response.json["account_id"] == "alice"
    assert table_snapshot() == before


def test_a_no_overdraft_account_may_be_debited_down_to_exactly_zero(api, open_account):
    open_account("alice")
    credit(api, "alice", 100)

    assert debit(api, "alice", 60).status == 201
    assert debit(api, "alice", 40).status == 201
    refused = debit(api, "alice", 1)

    assert refused.code == "insufficient_funds"
    assert balance(api, "alice") == 0


def test_a_no_overdraft_account_refuses_a_transfer_beyond_its_balance_and_neither_leg_lands(
    api, open_account, table_snapshot
):
    open_account("alice")
    open_account("bob")
    credit(api, "alice", 100)
    before = table_snapshot()

    response = transfer(api, "alice", "bob", 150)

    assert (response.status, response.code) == (422, "insufficient_funds")
    assert table_snapshot() == before
    assert (balance(api, "alice"), balance(api, "bob")) == (100, 0)


def test_an_overdraft_account_may_be_debited_below_zero(api, open_account):
    open_account("alice", allow_overdraft=True)

    response = debit(api, "alice", 500)

    assert response.status == 201
    assert balance(api, "alice") == -500


def test_an_overdraft_account_may_transfer_more_than_it_holds(api, open_account):
    open_account("alice", allow_overdraft=True)
    open_account("bob")

    response = transfer(api, "alice", "bob", 700)

    assert response.status == 201
    assert (balance(api, "alice"), balance(api, "bob")) == (-700, 700)


def test_money_received_by_transfer_can_be_spent_by_a_no_overdraft_account(api, open_account):
    open_account("alice", allow_overdraft=True)
    open_account("bob")
    transfer(api, "alice", "bob", 700)

    assert debit(api, "bob", 700).status == 201
    assert debit(api, "bob", 1).code == "insufficient_funds"


# -- currency and unknown accounts ------------------------------------------------


def test_a_movement_in_another_currency_than_the_accounts_is_refused(api, open_account, table_snapshot):
    open_account("alice", currency="EUR")
    before = table_snapshot()

    response = credit(api, "alice", 100, currency="USD")

    assert (response.status, response.code) == (422, "currency_mismatch")
    assert response.json["account_currency"] == "EUR"
    assert table_snapshot() == before


def test_a_transfer_between_accounts_of_different_currencies_is_refused(api, open_account, table_snapshot):
    open_account("alice", currency="EUR", allow_overdraft=True)
    open_account("bob", currency="USD")
    before = table_snapshot()

    response = transfer(api, "alice", "bob", 100, currency="EUR")

    assert (response.status, response.code) == (422, "currency_mismatch")
    assert response.json["account_id"] == "bob"
    assert table_snapshot() == before


def test_a_movement_on_an_unknown_account_is_404_and_writes_nothing(api, open_account, table_snapshot):
    open_account("alice", allow_overdraft=True)
    before = table_snapshot()

    responses = [
        credit(api, "ghost", 1),
        debit(api, "ghost", 1),
        transfer(api, "ghost", "alice", 1),
        transfer(api, "alice", "ghost", 1),
    ]

    assert [(r.status, r.code, r.json["account_id"]) for r in responses] == [(404, "account_not_found", "ghost")] * 4
    assert table_snapshot() == before


def test_an_accounts_opening_is_a_transaction_of_its_own(api, open_account):
    account = open_account("alice")

    response = api.get(f"/transactions/{account['opened_event_id']}")

    assert response.status == 200
    (event,) = response.json["events"]
    assert (event["type"], event["entity_id"]) == ("account.opened", "alice")


# -- home region ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        ("/accounts/alice/credits", {"amount": 5, "currency": "EUR"}),
        ("/accounts/alice/debits", {"amount": 5, "currency": "EUR"}),
        ("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 5, "currency": "EUR"}),
    ],
    ids=["credit", "debit", "transfer"],
)
def test_a_write_taken_outside_the_accounts_home_region_is_421_and_writes_nothing(
    api, open_account, settings, dynamodb, table_snapshot, path, body
):
    open_account("alice", allow_overdraft=True)
    open_account("bob")
    before = table_snapshot()
    elsewhere = api_over(Root(replace(settings, region="eu-west-1"), client=dynamodb))

    response = elsewhere.post(path, body)

    assert (response.status, response.code) == (421, "wrong_region")
    assert response.json["home_region"] == "us-east-1"
    assert table_snapshot() == before
