"""The balances table: region-local, never global, one definition for bootstrap and deploy.

It holds two kinds of item under one string key `pk`:
- `balance#<account>`: the account's view (balance, credits, debits, event count, as-of).
- `replication#watermark`: up to when this region holds every other region's writes.
- `seen#<account>#<window>`: the ids of that account's events already applied, for
  the events whose ULID falls in one ~1 s window (the first 8 characters of the id).
  This is the dedupe record, keyed by the event's own identity; the window packs the
  markers of a busy account's burst into a few small items, so a batch applies a
  burst with one item write per window instead of one per event. It expires after
  `MARKER_TTL_SECONDS`, far beyond any redelivery (stream retention is 24 h).

Why not global: a replicated `ADD` would be clobbered by last-writer-wins, so each
region folds its own replica's stream into its own table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MARKER_TTL_SECONDS = 7 * 24 * 3600
# This region holds every other region's writes up to this instant (written by the replicator).
WATERMARK_KEY = "replication#watermark"
TTL_ATTRIBUTE = "expires_at"
WINDOW_CHARS = 8


@dataclass(frozen=True)
class ProjectionTables:
    balances: str

    @classmethod
    def for_stage(cls, stage: str) -> ProjectionTables:
        return cls(balances=f"{stage}-ledger-balances")


def balance_key(account_id: str) -> str:
    return f"balance#{account_id}"


def seen_key(account_id: str, event_id: str) -> str:
    return f"seen#{account_id}#{event_id[:WINDOW_CHARS]}"


def table_definitions(tables: ProjectionTables) -> list[dict[str, Any]]:
    return [
        {
            "TableName": tables.balances,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        }
    ]


def time_to_live(tables: ProjectionTables) -> dict[str, str]:
    return {tables.balances: TTL_ATTRIBUTE}
