"""The session-wide guard's rule: which DynamoDB calls could change or remove an event."""

from __future__ import annotations

import pytest

from event_log_guard import EventLogGuard, violations_of

EVENTS = "prod-ledger-events"
GUARDED_PUT = {"TableName": EVENTS, "Item": {}, "ConditionExpression": "attribute_not_exists(event_id)"}


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("UpdateItem", {"TableName": EVENTS, "Key": {}}),
        ("DeleteItem", {"TableName": EVENTS, "Key": {}}),
        ("DeleteTable", {"TableName": EVENTS}),
        ("PutItem", {"TableName": EVENTS, "Item": {}}),
        ("PutItem", {"TableName": EVENTS, "Item": {}, "ConditionExpression": "attribute_exists(event_id)"}),
        ("TransactWriteItems", {"TransactItems": [{"Put": GUARDED_PUT}, {"Update": {"TableName": EVENTS, "Key": {}}}]}),
        ("TransactWriteItems", {"TransactItems": [{"Delete": {"TableName": EVENTS, "Key": {}}}]}),
        ("TransactWriteItems", {"TransactItems": [{"Put": {"TableName": EVENTS, "Item": {}}}]}),
        ("BatchWriteItem", {"RequestItems": {EVENTS: [{"PutRequest": {"Item": {}}}]}}),
        ("BatchWriteItem", {"RequestItems": {EVENTS: [{"DeleteRequest": {"Key": {}}}]}}),
        ("ExecuteStatement", {"Statement": f'UPDATE "{EVENTS}" SET amount=? WHERE entity_id=? AND event_id=?'}),
        ("BatchExecuteStatement", {"Statements": [{"Statement": f'DELETE FROM "{EVENTS}" WHERE entity_id=?'}]}),
        ("ExecuteTransaction", {"TransactStatements": [{"Statement": f"update {EVENTS} set amount=1 where entity_id='a'"}]}),
    ],
)
def test_every_way_of_changing_or_removing_an_event_is_a_violation(operation, params):
    assert violations_of(operation, params)


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("PutItem", GUARDED_PUT),
        ("TransactWriteItems", {"TransactItems": [{"Put": GUARDED_PUT}, {"Update": {"TableName": "prod-ledger-accounts"}}]}),
        ("UpdateItem", {"TableName": "prod-ledger-balances", "Key": {}}),
        ("DeleteItem", {"TableName": "prod-ledger-idempotency", "Key": {}}),
        ("BatchWriteItem", {"RequestItems": {"prod-ledger-balances": [{"PutRequest": {"Item": {}}}]}}),
        ("Query", {"TableName": EVENTS}),
        ("BatchExecuteStatement", {"Statements": [{"Statement": 'UPDATE "prod-ledger-balances" SET "balance"=? WHERE "pk"=?'}]}),
        ("ExecuteStatement", {"Statement": f"INSERT INTO \"{EVENTS}\" VALUE {{'entity_id': ?}}"}),
        ("ExecuteStatement", {"Statement": f'SELECT * FROM "{EVENTS}"'}),
    ],
)
def test_appends_and_writes_to_other_tables_are_allowed(operation, params):
    assert violations_of(operation, params) == []


def test_what_a_worker_saw_reaches_the_controller_whole(tmp_path):
    worker, controller = EventLogGuard(tmp_path), EventLogGuard(tmp_path)
    worker.violations.append("UpdateItem on prod-ledger-events (from ledger/store.py:1)")
    worker.appends = 2
    worker.calls["PutItem"] = 2
    worker.accesses[("api", "dynamodb:PutItem", "table/prod-ledger-events")] = 2
    controller.accesses[("api", "dynamodb:PutItem", "table/prod-ledger-events")] = 1

    controller.merge(worker.dumps())

    assert controller.violations == worker.violations
    assert (controller.appends, dict(controller.calls)) == (2, {"PutItem": 2})
    assert controller.accesses == {("api", "dynamodb:PutItem", "table/prod-ledger-events"): 3}
