"""No product code path updates or deletes an event.

`tests/conftest.py` watches every DynamoDB call the product makes during the whole
test session and fails the session on any update or delete of an event. These tests
show the watch is real: it sees the appends of every write path, and it catches a
forbidden call made from product code.
"""

from __future__ import annotations

from typing import Any

from event_log_guard import EventLogGuard


def test_every_write_path_only_appends_guarded_events(api, open_account, event_log_guard: EventLogGuard):
    appends, violations = event_log_guard.appends, len(event_log_guard.violations)
    open_account("alice")
    open_account("bob")
    assert api.post("/accounts/alice/credits", {"amount": 500, "currency": "EUR"}).status == 201
    assert api.post("/accounts/alice/debits", {"amount": 100, "currency": "EUR"}).status == 201
    assert api.post("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 50, "currency": "EUR"}).status == 201
    refused = api.post("/accounts/bob/debits", {"amount": 10_000, "currency": "EUR"})
    assert refused.code == "insufficient_funds"

    # two openings, a credit, a debit, two transfer legs, and the refused debit's append (cancelled)
    assert event_log_guard.appends - appends == 7
    assert event_log_guard.violations[violations:] == []


def test_the_watch_catches_an_update_made_from_product_code(settings, dynamodb: Any, ledger, event_log_guard: EventLogGuard):
    ledger_event = {"entity_id": {"S": "alice"}, "event_id": {"S": "01JD0000000000000000000001"}}
    before = len(event_log_guard.violations)
    # Code compiled under a product file name stands in for a product module making the call.
    product_file = str(event_log_guard.root / "ledger" / "rogue_module.py")
    code = compile(
        "client.update_item(TableName=table, Key=key, UpdateExpression='SET amount = :a',"
        " ExpressionAttributeValues={':a': {'N': '1'}})",
        product_file,
        "exec",
    )
    exec(code, {"client": dynamodb, "table": settings.tables.events, "key": ledger_event})  # noqa: S102
    caught = event_log_guard.violations[before:]
    del event_log_guard.violations[before:]  # planted on purpose: must not fail the session
    assert caught == [f"UpdateItem on {settings.tables.events} (from ledger/rogue_module.py:1)"]
