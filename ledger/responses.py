"""What a write answers, rendered from the events it recorded.

A write's answer is a function of its events alone, so the idempotency record
need not hold a copy of it: it names the events (their keys), and a
replay reads them back and renders the same bytes. The first answer is rendered
here too, from the events as drafted, so both are one function of one input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from .accounts import Account
from .events import AccountOpened, Event

View = Literal["account", "transaction", "batch"]


def render(view: View, events: Sequence[Event]) -> str:
    """The answer of a write that recorded `events` (in the order they were drafted)."""
    if view == "account":
        return _json(account_opened(events[0]).public())
    if view == "batch":
        return _json({"mode": "atomic", "results": [{"status": 201, **transaction} for transaction in _transactions(events)]})
    return _json(_transactions(events)[0])


def _transactions(events: Sequence[Event]) -> list[dict[str, object]]:
    """The events grouped by transaction, in order: each as the answer of its own write."""
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.transaction_id, []).append(event)
    answers = []
    for legs in grouped.values():
        first = legs[0]
        data: dict[str, object] = {"transaction_id": first.transaction_id, "type": first.transaction_type}
        if first.reverses:
            data["reverses"] = first.reverses
        data["events"] = [event_json(event) for event in legs]
        answers.append(data)
    return answers


def account_opened(event: Event) -> Account:
    """The account as its opening made it: opened at its home, where the opening was recorded."""
    if not isinstance(event, AccountOpened):
        raise ValueError(f"an account's answer is rendered from its opening, not from {event.type}")
    return Account(
        account_id=event.entity_id,
        currency=event.currency,
        allow_overdraft=event.allow_overdraft,
        metadata=event.metadata,
        home_region=event.region,
        opened_at=event.recorded_at,
        opened_event_id=event.event_id,
        last_event_id=event.event_id,
    )


def event_json(event: Event) -> dict:
    return event.model_dump(mode="json", exclude_none=True)


def _json(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
