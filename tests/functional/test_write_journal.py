"""The write journal of the embedded DynamoDB: what it records, and that replaying it restores exactly what was lost.

DynamoDB Local losing acknowledged writes is simulated here by emptying the tables
after the writes (the integration test kills the real Java process). The replay
must bring back every lost write, change nothing that is still there, and keep in
the journal only what it had to apply again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from composition.root import Root
from api.app import create_app
from api_client import Api
from ledger.config import Settings, dynamodb_client
from ledger.schema import table_definitions
from runtime.journal import WriteJournal


@pytest.fixture
def journaled(settings: Settings, dynamodb: Any, tmp_path: Path):
    """The app over moto through a client whose acknowledged writes go to a journal."""
    journal = WriteJournal(tmp_path / "write-journal.jsonl")
    client = journal.attach(dynamodb_client(settings))
    with Client(create_app(Root(settings, client=client))) as http:
        yield Api(http), journal


def write_some(api: Api) -> list[dict]:
    answers = [
        api.post("/accounts", {"account_id": "alice", "currency": "EUR"}, key="open-alice"),
        api.post("/accounts", {"account_id": "bob", "currency": "EUR", "allow_overdraft": True}, key="open-bob"),
        api.post("/accounts/alice/credits", {"amount": 500, "currency": "EUR", "metadata": {"note": "é"}}, key="c1"),
        api.post("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 200, "currency": "EUR"}, key="t1"),
    ]
    assert [a.status for a in answers] == [201] * 4
    return [a.json for a in answers]


def lose_everything(settings: Settings, dynamodb: Any) -> None:
    """What a crash of DynamoDB Local in the wrong millisecond does, at its worst."""
    for definition in table_definitions(settings.tables):
        dynamodb.delete_table(TableName=definition["TableName"])
        dynamodb.create_table(**definition)


def test_every_acknowledged_write_is_journaled_once_in_order(journaled):
    api, journal = journaled

    write_some(api)
    api.post("/accounts/alice/debits", {"amount": 10**6, "currency": "EUR"}, key="refused")  # refused: not acknowledged

    assert [operation for operation, _ in journal.entries()] == ["TransactWriteItems"] * 4


def test_replaying_after_a_loss_restores_exactly_what_was_acknowledged(journaled, settings, dynamodb, table_snapshot):
    api, journal = journaled
    write_some(api)
    before = table_snapshot()
    lose_everything(settings, dynamodb)

    report = journal.replay(dynamodb)

    assert (report.reapplied, report.present, report.failed) == (4, 0, [])
    assert table_snapshot() == before
    assert len(journal.entries()) == 4  # applied again, so acknowledged again: kept until proven on disk


def test_replaying_over_intact_data_changes_nothing_and_empties_the_journal(journaled, dynamodb, table_snapshot):
    api, journal = journaled
    write_some(api)
    before = table_snapshot()

    report = journal.replay(dynamodb)

    assert (report.reapplied, report.present) == (0, 4)
    assert table_snapshot() == before
    assert journal.entries() == []


def test_a_loss_of_the_newest_writes_only_brings_back_those(journaled, settings, dynamodb, table_snapshot):
    api, journal = journaled
    first, second, credit, transfer = write_some(api)
    full = table_snapshot()
    events = settings.tables.events
    for event in transfer["events"]:  # the transfer's legs are lost; its record too, and the guards' ADDs
        dynamodb.delete_item(TableName=events, Key={"entity_id": {"S": event["entity_id"]}, "event_id": {"S": event["event_id"]}})
    dynamodb.delete_item(TableName=settings.tables.idempotency, Key={"idempotency_id": {"S": "key#test-operator#t1"}})
    accounts_before_transfer = {"alice": (500, credit["events"][0]["event_id"]), "bob": (0, second["opened_event_id"])}
    for account, (available, last_event_id) in accounts_before_transfer.items():
        dynamodb.update_item(
            TableName=settings.tables.accounts,
            Key={"account_id": {"S": account}},
            UpdateExpression="SET available = :a, last_event_id = :e",
            ExpressionAttributeValues={":a": {"N": str(available)}, ":e": {"S": last_event_id}},
        )

    report = journal.replay(dynamodb)

    assert (report.reapplied, report.present) == (1, 3)
    assert table_snapshot() == full


def test_a_torn_last_line_is_not_a_write(journaled):
    api, journal = journaled
    write_some(api)
    with open(journal.path, "a") as out:
        out.write('{"op":"TransactWriteItems","params":{"Transac')

    assert len(journal.entries()) == 4


def test_a_write_the_journal_cannot_hold_is_not_acknowledged(journaled, tmp_path):
    api, journal = journaled
    journal.path = tmp_path / "no-such-dir" / "x" / "journal.jsonl"
    (tmp_path / "no-such-dir").write_text("a file where a directory should be")

    response = api.post("/accounts", {"account_id": "carol", "currency": "EUR"}, key="open-carol")

    assert (response.status, response.code) == (503, "store_unavailable")  # a retry with the key replays it

