"""Idempotency-Key: a retry replays the original answer and writes nothing; misuse is refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ledger.service import Ledger
from api_client import api_over

# Every write route, with a body that succeeds once `alice` (EUR, overdraft) and `bob` exist.
WRITES = {
    "open account": ("/accounts", {"account_id": "carol", "currency": "EUR"}),
    "credit": ("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}),
    "debit": ("/accounts/alice/debits", {"amount": 100, "currency": "EUR"}),
    "transfer": ("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 100, "currency": "EUR"}),
}


@pytest.fixture
def accounts(open_account):
    open_account("alice", allow_overdraft=True)
    open_account("bob")


# -- the header itself --------------------------------------------------------------


@pytest.mark.parametrize("route", WRITES, ids=str)
def test_a_write_without_an_idempotency_key_is_refused_with_400_and_writes_nothing(
    api, accounts, table_snapshot, route
):
    path, body = WRITES[route]
    before = table_snapshot()

    response = api.post(path, body, key=None)

    assert (response.status, response.code) == (400, "idempotency_key_missing")
    assert response.headers["content-type"] == "application/problem+json"
    assert table_snapshot() == before


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "abc\x01def", "tab\there", "line\nbreak", "del\x7f", "clé-unicode"],
    ids=["empty", "256 chars", "control char", "tab", "newline", "DEL", "non-ASCII"],
)
@pytest.mark.parametrize("route", WRITES, ids=str)
def test_an_invalid_idempotency_key_is_refused_with_400_and_writes_nothing(
    api, accounts, table_snapshot, route, key
):
    path, body = WRITES[route]
    before = table_snapshot()

    response = api.post(path, body, key=key)

    assert (response.status, response.code) == (400, "idempotency_key_invalid")
    assert table_snapshot() == before


def test_a_key_of_255_printable_ascii_characters_is_accepted(api, accounts):
    response = api.post("/accounts/alice/credits", {"amount": 1, "currency": "EUR"}, key="k" * 254 + "~")

    assert response.status == 201


# -- replay -------------------------------------------------------------------------


@pytest.mark.parametrize("route", WRITES, ids=str)
def test_a_retry_with_the_same_key_replays_the_original_response_and_writes_nothing(
    api, accounts, table_snapshot, route
):
    path, body = WRITES[route]
    first = api.post(path, body, key="retry-me")
    after_first = table_snapshot()

    second = api.post(path, body, key="retry-me")

    assert first.status == 201
    assert "idempotent-replayed" not in first.headers
    assert second.status == first.status
    assert second.body == first.body
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["content-type"] == "application/json"
    assert second.headers["idempotent-replayed"] == "true"
    assert table_snapshot() == after_first


def test_every_retry_replays_the_same_bytes(api, accounts, table_snapshot):
    path, body = WRITES["transfer"]
    first = api.post(path, body, key="again-and-again")
    after_first = table_snapshot()

    retries = [api.post(path, body, key="again-and-again") for _ in range(3)]

    assert {retry.body for retry in retries} == {first.body}
    assert table_snapshot() == after_first


def test_a_replay_does_not_check_the_balance_again(api, open_account):
    open_account("dave")
    api.post("/accounts/dave/credits", {"amount": 100, "currency": "EUR"})
    first = api.post("/accounts/dave/debits", {"amount": 100, "currency": "EUR"}, key="spend-all")

    # A new debit of 100 would now be refused: the account holds 0.
    replay = api.post("/accounts/dave/debits", {"amount": 100, "currency": "EUR"}, key="spend-all")

    assert first.status == 201
    assert (replay.status, replay.body) == (201, first.body)
    assert replay.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    "original, same_meaning",
    [
        ('{"amount": 100, "currency": "EUR"}', '{"currency": "EUR", "amount": 100}'),
        ('{"amount":100,"currency":"EUR"}', '{\n  "amount" : 100 ,\n  "currency" : "EUR"\n}'),
        (
            '{"amount": 100, "currency": "EUR", "metadata": {"a": "1", "b": "2"}}',
            '{"metadata": {"b": "2", "a": "1"}, "currency": "EUR", "amount": 100}',
        ),
        ('{"amount": 100, "currency": "EUR"}', '{"amount": 100, "currency": "EUR", "metadata": {}}'),
        ('{"amount": 100, "currency": "EUR"}', '{"amount": 100, "currency": "EUR", "description": null}'),
    ],
    ids=["key order", "whitespace", "metadata key order", "explicit empty metadata", "explicit null description"],
)
def test_the_same_request_spelled_differently_replays(api, accounts, table_snapshot, original, same_meaning):
    first = api.post("/accounts/alice/credits", raw=original, key="spelling")
    after_first = table_snapshot()

    second = api.post("/accounts/alice/credits", raw=same_meaning, key="spelling")

    assert first.status == 201
    assert (second.status, second.body) == (201, first.body)
    assert second.headers["idempotent-replayed"] == "true"
    assert table_snapshot() == after_first


# -- reuse for something else --------------------------------------------------------


@pytest.mark.parametrize(
    "different",
    [
        {"amount": 101, "currency": "EUR"},
        {"amount": 100, "currency": "EUR", "description": "now with a note"},
        {"amount": 100, "currency": "EUR", "metadata": {"ref": "x"}},
    ],
    ids=["amount", "description", "metadata"],
)
def test_the_same_key_with_a_different_body_is_refused_with_422_and_writes_nothing(
    api, accounts, table_snapshot, different
):
    api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}, key="used-once")
    before = table_snapshot()

    response = api.post("/accounts/alice/credits", different, key="used-once")

    assert (response.status, response.code) == (422, "idempotency_key_reused")
    assert response.headers["content-type"] == "application/problem+json"
    assert table_snapshot() == before


@pytest.mark.parametrize(
    "path, body",
    [
        ("/accounts/alice/debits", {"amount": 100, "currency": "EUR"}),
        ("/accounts/bob/credits", {"amount": 100, "currency": "EUR"}),
        ("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 100, "currency": "EUR"}),
        ("/accounts", {"account_id": "carol", "currency": "EUR"}),
    ],
    ids=["debit of the same account", "credit of another account", "transfer", "open account"],
)
def test_the_same_key_on_another_route_or_account_is_refused_with_422(api, accounts, table_snapshot, path, body):
    api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}, key="credit-alice")
    before = table_snapshot()

    response = api.post(path, body, key="credit-alice")

    assert (response.status, response.code) == (422, "idempotency_key_reused")
    assert table_snapshot() == before


def test_a_key_refused_for_another_request_still_replays_its_original(api, accounts):
    first = api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}, key="k")
    api.post("/accounts/alice/credits", {"amount": 999, "currency": "EUR"}, key="k")

    replay = api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}, key="k")

    assert (replay.status, replay.body) == (201, first.body)


# -- refusals do not bind the key ------------------------------------------------------


def test_a_refused_request_stores_nothing_so_a_retry_after_a_credit_succeeds(api, open_account, table_snapshot):
    open_account("dave")
    before = table_snapshot()

    refused = api.post("/accounts/dave/debits", {"amount": 100, "currency": "EUR"}, key="pay-rent")
    assert (refused.status, refused.code) == (422, "insufficient_funds")
    assert table_snapshot() == before

    api.post("/accounts/dave/credits", {"amount": 100, "currency": "EUR"})
    retried = api.post("/accounts/dave/debits", {"amount": 100, "currency": "EUR"}, key="pay-rent")

    assert retried.status == 201
    assert "idempotent-replayed" not in retried.headers
    assert retried.json["events"][0]["idempotency_key"] == "pay-rent"


def test_an_account_exists_refusal_leaves_the_key_free_for_another_request(api, open_account):
    open_account("alice")
    refused = api.post("/accounts", {"account_id": "alice", "currency": "EUR"}, key="open-it")

    response = api.post("/accounts", {"account_id": "erin", "currency": "EUR"}, key="open-it")

    assert refused.code == "account_exists"
    assert response.status == 201
    assert "idempotent-replayed" not in response.headers


def test_the_same_body_with_a_new_key_is_a_new_movement(api, accounts):
    first = api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}, key="one")
    second = api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}, key="two")

    assert (first.status, second.status) == (201, 201)
    assert first.json["transaction_id"] != second.json["transaction_id"]
    assert "idempotent-replayed" not in second.headers


# -- expiry -------------------------------------------------------------------------


class SteppingClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_a_key_past_its_expiry_no_longer_binds_and_records_afresh(accounts, root):
    clock = SteppingClock(datetime.now(timezone.utc))
    root.ledger = Ledger(root.event_store, root.settings.region, idempotency_ttl=timedelta(hours=24), clock=clock, sleep=lambda _: None)
    api = api_over(root)
    body = {"amount": 100, "currency": "EUR"}
    first = api.post("/accounts/alice/credits", body, key="daily")

    clock.now += timedelta(hours=23)
    within = api.post("/accounts/alice/credits", body, key="daily")
    clock.now += timedelta(hours=2)
    after = api.post("/accounts/alice/credits", body, key="daily")

    assert within.headers.get("idempotent-replayed") == "true"
    assert after.status == 201
    assert "idempotent-replayed" not in after.headers
    assert after.json["transaction_id"] != first.json["transaction_id"]


# -- what the record holds -------------------------------------------------------------------


def _record_item(dynamodb, settings, key: str) -> dict:
    (item,) = [
        i for i in dynamodb.scan(TableName=settings.tables.idempotency)["Items"] if i["idempotency_id"]["S"].endswith(f"#{key}")
    ]
    return item


def test_the_record_names_the_events_and_copies_neither_the_answer_nor_the_metadata(api, accounts, dynamodb, settings):
    metadata = {f"{n:02d}" + "k" * 62: "v" * 256 for n in range(16)}
    body = {"from_account": "alice", "to_account": "bob", "amount": 5, "currency": "EUR", "description": "d" * 256, "metadata": metadata}
    first = api.post("/transfers", body, key="lean")

    item = _record_item(dynamodb, settings, "lean")

    legs = first.json["events"]
    assert item["events"] == {"L": [{"S": f"{leg['entity_id']} {leg['event_id']}"} for leg in legs]}
    assert "body" not in item and "v" * 256 not in str(item)
    replay = api.post("/transfers", body, key="lean")
    assert (replay.status, replay.body) == (201, first.body)  # rendered again from the events, byte for byte


def test_a_record_written_with_its_answer_in_it_still_replays_that_answer(api, accounts, dynamodb, settings):
    first = api.post("/accounts/alice/credits", {"amount": 7, "currency": "EUR"}, key="older")
    item = _record_item(dynamodb, settings, "older")
    older = {k: v for k, v in item.items() if k not in ("events", "view")}
    dynamodb.put_item(TableName=settings.tables.idempotency, Item={**older, "body": {"S": first.body.decode()}})

    replay = api.post("/accounts/alice/credits", {"amount": 7, "currency": "EUR"}, key="older")

    assert (replay.status, replay.body, replay.headers["idempotent-replayed"]) == (201, first.body, "true")


def test_a_record_whose_events_are_not_here_yet_is_a_retryable_503_and_records_nothing(api, accounts, dynamodb, settings, table_snapshot):
    """A replica may receive a write's record before its events: the retry must wait, never record twice."""
    api.post("/accounts/alice/credits", {"amount": 7, "currency": "EUR"}, key="early")
    item = _record_item(dynamodb, settings, "early")
    elsewhere = {**item, "events": {"L": [{"S": "alice 7ZZZZZZZZZZZZZZZZZZZZZZZZZ"}]}}  # as if its event were still on its way
    dynamodb.put_item(TableName=settings.tables.idempotency, Item=elsewhere)
    before = table_snapshot()

    retry = api.post("/accounts/alice/credits", {"amount": 7, "currency": "EUR"}, key="early")

    assert (retry.status, retry.code) == (503, "store_unavailable")
    assert retry.headers.get("retry-after")
    assert table_snapshot() == before
