"""`ledger audit close` then `ledger audit verify`: tampering with the log is detected and named."""

from __future__ import annotations

import pytest

from ledger.store import event_item
from past_events import EPOCH, append, at, past_event
from runtime.cli import main


@pytest.fixture
def closed(settings, ledger, dynamodb, monkeypatch):
    """alice and bob with three days of history each, every day closed."""
    monkeypatch.delenv("LEDGER_ENDPOINT_URL", raising=False)  # the CLI's client must be moto's
    history = {
        name: [past_event(name, EPOCH)] + [past_event(name, at(3600 * 7 * n + offset), 10 * n + 1) for n in range(1, 10)]
        for offset, name in ((11, "alice"), (13, "bob"))
    }
    for events in history.values():
        append(ledger, events)
    assert audit(settings, "close") == 0
    return history


def audit(settings, *args: str) -> int:
    return main(["audit", *args, "--aws", "--stage", settings.stage, "--region", settings.region])


def tamper(dynamodb, settings, event, **changes):
    """What no product code does: rewrite an event in place (tests only)."""
    dynamodb.put_item(TableName=settings.tables.events, Item=event_item(event.model_copy(update=changes)))


def test_an_untouched_log_matches_every_checkpoint(settings, closed, capsys):
    assert audit(settings, "verify") == 0
    assert "every checkpoint matches the log" in capsys.readouterr().out


def test_an_edited_event_is_named(settings, closed, dynamodb, capsys):
    victim = closed["alice"][4]
    tamper(dynamodb, settings, victim, amount=victim.amount + 1)

    assert audit(settings, "verify") == 1
    out = capsys.readouterr().out
    assert f"TAMPERED alice {victim.recorded_at[:10]}: edited event {victim.event_id}" in out
    assert "bob" not in out and "1 account(s) no longer match" in out


def test_a_removed_event_is_named(settings, closed, dynamodb, capsys):
    victim = closed["bob"][6]
    dynamodb.delete_item(
        TableName=settings.tables.events, Key={"entity_id": {"S": "bob"}, "event_id": {"S": victim.event_id}}
    )

    assert audit(settings, "verify", "--account", "bob") == 1
    assert f"removed event {victim.event_id}" in capsys.readouterr().out


def test_an_event_slipped_into_a_closed_day_is_named(settings, closed, ledger, capsys):
    slipped = past_event("alice", at(3600 * 7 * 2 + 1800), 999_999)  # back-dated into a closed day
    append(ledger, [slipped])

    assert audit(settings, "verify") == 1
    out = capsys.readouterr().out
    assert f"inserted event {slipped.event_id}" in out
    assert "later checkpoint(s) no longer match" in out
